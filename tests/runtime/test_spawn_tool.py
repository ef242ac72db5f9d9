"""The ``spawn_agent`` tool against a scripted engine (no store, no model): what a child is
given, what the parent's stream shows, the watchdog's and the heartbeat's edges on a clock the
test moves, and what a failing cancel or resume leaves. ``test_subagents.py`` runs the same
paths through a real engine; here each edge is one line of the script."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

from culm.domain.events import (
    Cancelled,
    Complete,
    Error,
    InputReceived,
    InputRequested,
    RunEvent,
    RunEventBase,
    SubAgentEvent,
    SubAgentHeartbeat,
    Token,
    event_to_dict,
)
from culm.domain.models import Run, RunTrigger, Session, SessionKind, Usage
from culm.errors import ToolFailure, UserError
from culm.runtime import subagents
from culm.runtime.subagents import (
    CHILD_PROMPT,
    PARENT_CANCELLED,
    ChildOutcome,
    SpawnAgentTool,
    SubAgentLimits,
    SubAgents,
)
from culm.tools.base import ToolContext

# No store: nothing here depends on the backend.
pytestmark = [pytest.mark.timeout(30), pytest.mark.backends("sqlite")]

TS = datetime(2026, 12, 5, tzinfo=UTC)


class _Clock:
    """The module's ``time``: a monotonic clock the test sets (the event loop keeps its own)."""

    def __init__(self) -> None:
        self.now = 100.0
        self.readings = 0
        self._then: float | None = None

    def monotonic(self) -> float:
        self.readings += 1
        now = self.now
        if self._then is not None:
            self.now, self._then = self._then, None
        return now

    def then(self, now: float) -> None:
        """Read as it is once more, then ``now``: the follower takes an event at the one time
        and looks at its watch at the other, with no wait between."""
        self._then = now


class _Engine:
    """The engine as the tool sees it: one parent run and session (the run's ancestors in
    ``parents``), one child whose events the test feeds (``feed``); creates, starts,
    subscriptions, cancels and resumes recorded, ``failing`` ones raising."""

    def __init__(self, **parent: Any) -> None:
        self.parent = Session(session_id="s-parent", model="scripted:parent", workspace="/w")
        self.parent = self.parent.model_copy(update=parent)
        self.created: list[dict[str, Any]] = []
        self.started: list[dict[str, Any]] = []
        self.cancels: list[tuple[str, dict[str, Any]]] = []
        self.resumed: list[str] = []
        self.subscribed: list[str] = []
        self.failing: set[str] = set()
        self.parents: dict[str, str] = {}  # run id -> its parent's
        self.starting = asyncio.Event()
        self.may_start = asyncio.Event()
        self.may_start.set()
        self._events: asyncio.Queue[RunEvent] = asyncio.Queue()
        self._seq = 0

    async def get_session(self, session_id: str) -> Session:
        return {self.parent.session_id: self.parent}[session_id]

    async def get_run(self, run_id: str) -> Run:
        parent_run_id = self.parents.get(run_id)
        return Run(
            run_id=run_id, session_id=self.parent.session_id, model="m", parent_run_id=parent_run_id
        )

    async def create_session(self, **fields: Any) -> Session:
        if "create_session" in self.failing:
            raise UserError("model: unknown provider")
        self.created.append(fields)
        return Session(session_id="s-child", model=fields["model"], workspace="/w")

    async def start_run(self, session_id: str, message: str, **fields: Any) -> Run:
        self.starting.set()
        await self.may_start.wait()
        if "start_run" in self.failing:
            raise RuntimeError("the store is gone")
        self.started.append({"session_id": session_id, "message": message, **fields})
        return Run(run_id="r-child", session_id=session_id, model="m")

    async def subscribe(self, run_id: str, *, after: int = 0) -> AsyncIterator[RunEvent]:
        self.subscribed.append(run_id)
        while True:
            yield await self._events.get()

    async def resume_child(self, run_id: str) -> None:
        if "resume_child" in self.failing:
            raise ConnectionError("the database is gone")
        self.resumed.append(run_id)

    async def cancel(
        self, run_id: str, *, reason: str = "", wait: bool = False, timeout: float | None = None
    ) -> Run:
        self.cancels.append((run_id, {"reason": reason, "wait": wait}))
        if "cancel" in self.failing:
            raise ConnectionError("the database is gone")
        return await self.get_run(run_id)

    def feed(self, event: RunEventBase) -> None:
        self._seq += 1
        self._events.put_nowait(
            event.stamped(seq=self._seq, run_id="r-child", session_id="s-child", ts=TS)
        )


class _Call:
    """One ``spawn_agent`` call of the parent run, its emitted events and uncounted time."""

    def __init__(
        self,
        engine: _Engine,
        limits: SubAgentLimits | None = None,
        *,
        capacity: SubAgents | None = None,
        run_id: str = "r-parent",
    ) -> None:
        self.emitted: list[RunEventBase] = []
        self.not_counted: list[float] = []
        capacity = capacity or SubAgents(limits or SubAgentLimits())
        self.tool = SpawnAgentTool(engine, capacity)  # type: ignore[arg-type]
        self.ctx = ToolContext(
            workspace=Path("/w"),
            tool_call_id="call-1",
            emit_output=lambda _: None,
            timeout=60,
            run_id=run_id,
            session_id="s-parent",
            emit_event=self.emitted.append,
            not_counted=self.not_counted.append,
        )

    def start(self, **arguments: Any) -> asyncio.Task[str]:
        return asyncio.create_task(self.tool.run({"task": "do it", **arguments}, self.ctx))

    def types(self) -> list[str]:
        return [event.type for event in self.emitted]

    async def until(self, count: int) -> None:
        """Until ``count`` events are emitted (the follower has taken what was fed)."""
        async with asyncio.timeout(10):
            while len(self.emitted) < count:
                await asyncio.sleep(0)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Iterator[_Clock]:
    clock = _Clock()
    monkeypatch.setattr(subagents, "time", clock)
    yield clock


def _complete(answer: str = "the answer") -> Complete:
    return Complete(usage=Usage(), final_message=answer)


def _logged(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "culm.runtime.subagents"]


async def test_a_child_gets_its_parent_s_setup_and_its_answer_is_the_result() -> None:
    engine = _Engine(
        tools=("read_file", "spawn_agent"),
        metadata={"mcp_servers": {"files": {"command": "files-server"}}},
        require_approval=("write_*",),
        input_timeout=5.0,
        input_timeout_action="approve",
    )
    call = _Call(engine)
    span = SpanContext(trace_id=1, span_id=2, is_remote=False, trace_flags=TraceFlags(1))
    with trace.use_span(NonRecordingSpan(span)):
        running = call.start(title="reader", tools=["read_file"])
    await call.until(1)
    engine.feed(Token(content="reading"))
    engine.feed(_complete())
    assert await running == "the answer"
    assert engine.created == [
        {
            "model": "scripted:parent",
            "system_prompt": CHILD_PROMPT,
            "tools": ["read_file"],
            "workspace": "/w",
            "metadata": {"title": "reader"},
            "kind": SessionKind.CHILD,
            "parent_session_id": "s-parent",
            "mcp_servers": {"files": {"command": "files-server"}},
            "require_approval": ("write_*",),
            "input_timeout": 5.0,
            "input_timeout_action": "approve",
        }
    ]
    assert engine.started == [
        {
            "session_id": "s-child",
            "message": "do it",
            "trigger": RunTrigger.SPAWN,
            "parent_run_id": "r-parent",
            "traceparent": f"00-{1:032x}-{2:016x}-01",
        }
    ]
    assert engine.subscribed == ["r-child"]
    assert call.types() == ["sub_agent_started", "sub_agent_event", "sub_agent_event"] + [
        "sub_agent_completed"
    ]
    started, completed = call.emitted[0], call.emitted[-1]
    assert started.model_dump(include={"child_session_id", "child_run_id", "title"}) == {
        "child_session_id": "s-child",
        "child_run_id": "r-child",
        "title": "reader",
    }
    assert completed.model_dump(include={"child_run_id", "status", "error"}) == {
        "child_run_id": "r-child",
        "status": "completed",
        "error": None,
    }


async def test_a_child_that_cannot_start_is_a_tool_failure_naming_why() -> None:
    engine = _Engine()
    engine.failing.add("create_session")
    with pytest.raises(ToolFailure) as failure:
        await _Call(engine).start(model="nowhere:x")
    assert str(failure.value) == "could not start the sub-agent: model: unknown provider"


def test_a_child_s_failure_text_says_how_it_ended() -> None:
    text = subagents._failure_text
    assert text(ChildOutcome("cancelled")) == "the sub-agent was cancelled (no reason given)"
    assert text(ChildOutcome("cancelled", "by hand")) == "the sub-agent was cancelled (by hand)"
    assert text(ChildOutcome("timeout", "no event for 9 s")) == (
        "the sub-agent timed out: no event for 9 s"
    )
    assert text(ChildOutcome("error", "boom")) == "the sub-agent failed: boom"


async def test_a_parent_cancelled_while_its_child_starts_cancels_the_child_and_waits() -> None:
    engine = _Engine()
    engine.may_start.clear()
    running = _Call(engine).start()
    await engine.starting.wait()
    running.cancel()
    await asyncio.sleep(0)
    assert engine.cancels == [], "the child is not started yet"
    engine.may_start.set()
    with pytest.raises(asyncio.CancelledError):
        await running
    assert engine.cancels == [("r-child", {"reason": PARENT_CANCELLED, "wait": True})]


async def test_a_parent_cancelled_while_its_child_fails_to_start_cancels_nothing() -> None:
    engine = _Engine()
    engine.may_start.clear()
    engine.failing.add("start_run")
    running = _Call(engine).start()
    await engine.starting.wait()
    running.cancel()
    engine.may_start.set()
    with pytest.raises(asyncio.CancelledError):
        await running
    assert engine.cancels == []


async def test_a_cancel_of_a_child_that_fails_is_logged_and_the_parent_s_cancel_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    engine = _Engine()
    engine.failing.add("cancel")
    call = _Call(engine)
    running = call.start()
    await call.until(1)
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running
    assert engine.cancels == [("r-child", {"reason": PARENT_CANCELLED, "wait": True})]
    assert _logged(caplog) == ["cancelling a sub-agent failed run_id=r-child"]
    assert call.emitted[-1].model_dump(include={"status", "error"}) == {
        "status": "cancelled",
        "error": PARENT_CANCELLED,
    }


async def test_an_answered_child_is_resumed_here_and_a_failed_resume_is_only_logged(
    clock: _Clock, caplog: pytest.LogCaptureFixture
) -> None:
    engine = _Engine()
    call = _Call(engine)
    running = call.start()
    await call.until(1)
    request: dict[str, Any] = {"request_id": "q", "tool_call_id": "c", "tool_name": "write"}
    engine.feed(InputRequested(kind="approval", **request))
    engine.feed(InputReceived(kind="approval", approve=True, **request))
    await call.until(3)
    assert engine.resumed == ["r-child"]
    engine.failing.add("resume_child")
    engine.feed(InputRequested(kind="approval", **request))
    engine.feed(InputReceived(kind="approval", approve=True, **request))
    engine.feed(_complete())
    assert await running == "the answer"
    assert _logged(caplog) == ["resuming a sub-agent here failed run_id=r-child"]


async def test_the_time_a_child_waits_for_a_person_is_not_the_call_s(clock: _Clock) -> None:
    engine = _Engine()
    call = _Call(engine)
    running = call.start()
    await call.until(1)
    request: dict[str, Any] = {"request_id": "q", "tool_call_id": "c", "tool_name": "write"}
    for now, event, emitted in (
        (101.0, InputRequested(kind="approval", **request), 2),
        (104.0, InputReceived(kind="approval", approve=True, **request), 3),
        (104.5, Token(content="resumed"), 4),  # waited from 101 to 104.5
    ):
        clock.now = now
        engine.feed(event)
        await call.until(emitted)
    assert call.not_counted == [3.5]
    engine.feed(_complete())
    await running


async def test_a_child_beats_every_heartbeat_from_its_start_busy_or_not(clock: _Clock) -> None:
    engine = _Engine()
    call = _Call(engine, SubAgentLimits(heartbeat=5.0))
    running = call.start()
    await call.until(1)  # started at 100 s: beats due at 105, then 5 s after each
    beats = []
    for now in (104.999, 105.0, 109.999, 110.0):
        clock.now = now
        engine.feed(Token(content=f"{now}"))
        await call.until(len(call.emitted) + 1)
        await asyncio.sleep(0)
        beats.append(call.types().count("sub_agent_heartbeat"))
    assert beats == [0, 1, 1, 2]
    engine.feed(_complete())
    await running


async def _quiet(clock: _Clock, now: float, **waiting: float) -> tuple[_Engine, str | None]:
    """The watchdog's look at a child started at 100 s whose last event was at 150 s (60 s of
    run time, 30 s of quiet allowed), at ``now``: the cancels it sent and its reason."""
    engine = _Engine()
    limits = SubAgentLimits(idle_timeout=30.0, max_duration=60.0)
    follower = subagents._Follower(engine, limits, _Call(engine).ctx, await engine.get_run("c"))  # type: ignore[arg-type]
    for name, value in waiting.items():
        setattr(follower, name, value)
    clock.now = now
    await follower._on_quiet(100.0, 150.0)
    return engine, follower._timed_out


@pytest.mark.parametrize(
    ("now", "waiting", "reason"),
    [
        (159.999, {}, None),
        (160.0, {}, "ran longer than 60 s"),
        (169.999, {"_waited": 10.0}, None),  # 10 s of waiting for a person do not count
        (170.0, {"_waited": 10.0}, "ran longer than 60 s"),
        (170.0, {"_waiting_since": 165.0}, None),  # waiting now: never timed out
    ],
)
async def test_the_watchdog_ends_a_child_at_its_run_time_not_before(
    clock: _Clock, now: float, waiting: dict[str, float], reason: str | None
) -> None:
    engine, timed_out = await _quiet(clock, now, **waiting)
    assert timed_out == reason
    wanted = [] if reason is None else [("c", {"reason": f"timeout: {reason}", "wait": False})]
    assert engine.cancels == wanted


async def test_the_watchdog_ends_a_quiet_child_at_its_idle_time_not_before(
    clock: _Clock,
) -> None:
    engine = _Engine()
    limits = SubAgentLimits(idle_timeout=30.0, max_duration=600.0)
    follower = subagents._Follower(engine, limits, _Call(engine).ctx, await engine.get_run("c"))  # type: ignore[arg-type]
    for now, timed_out in ((179.999, None), (180.0, "no event for 30 s")):
        clock.now = now
        await follower._on_quiet(100.0, 150.0)
        assert follower._timed_out == timed_out, f"at {now} s"
    assert engine.cancels == [("c", {"reason": "timeout: no event for 30 s", "wait": False})]


async def test_every_wait_for_a_person_moves_the_run_time_limit_back(clock: _Clock) -> None:
    engine = _Engine()
    limits = SubAgentLimits(idle_timeout=600.0, max_duration=60.0)
    follower = subagents._Follower(engine, limits, _Call(engine).ctx, await engine.get_run("c"))  # type: ignore[arg-type]
    for kind, now in (
        ("input_requested", 101.0),
        ("token", 104.0),  # waited 3 s
        ("input_requested", 110.0),
        ("input_received", 111.0),
        ("token", 112.0),  # and 2 s more
    ):
        follower._track_waiting(kind, now)
    for now, timed_out in ((164.999, None), (165.0, "ran longer than 60 s")):
        clock.now = now
        await follower._on_quiet(100.0, 160.0)
        assert follower._timed_out == timed_out, f"at {now} s"


@pytest.mark.parametrize(
    ("arguments", "error"),
    [
        ({}, "task: a non-empty string is required"),
        ({"task": 3}, "task: a non-empty string is required"),
        ({"task": " \n"}, "task: a non-empty string is required"),
        ({"task": "t", "title": 3}, "title: must be a string"),
        ({"task": "t", "model": ["x"]}, "model: must be a string like provider:model"),
        ({"task": "t", "tools": "read_file"}, "tools: must be a list of tool names"),
        ({"task": "t", "tools": ["read_file", 3]}, "tools: must be a list of tool names"),
    ],
)
async def test_a_spawn_s_arguments_are_checked_before_anything_starts(
    arguments: dict[str, Any], error: str
) -> None:
    engine = _Engine(tools=("read_file",))
    call = _Call(engine)
    with pytest.raises(ToolFailure) as failure:
        await call.tool.run(arguments, call.ctx)
    assert str(failure.value) == error
    assert (engine.created, call.emitted) == ([], [])


@pytest.mark.parametrize("outside", [{"emit_event": None}, {"run_id": ""}])
async def test_spawn_agent_refuses_a_call_outside_a_run(outside: dict[str, Any]) -> None:
    engine = _Engine()
    call = _Call(engine)
    ctx = dataclasses.replace(call.ctx, **outside)
    with pytest.raises(ToolFailure) as failure:
        await call.tool.run({"task": "t"}, ctx)
    assert str(failure.value) == "spawn_agent works only inside a run"
    assert engine.created == []


async def test_a_child_without_a_title_gets_the_model_asked_for() -> None:
    engine = _Engine()
    call = _Call(engine)
    running = call.start(model="scripted:other")
    await call.until(1)
    engine.feed(_complete())
    await running
    [created] = engine.created
    assert (created["model"], created["metadata"]) == ("scripted:other", {})
    assert call.emitted[0].model_dump(include={"title"}) == {"title": None}


def _ancestry(ancestors: int) -> dict[str, str]:
    """The parent run's line up: r-parent's parent is r-1, whose parent is r-2, and so on."""
    runs = ["r-parent"] + [f"r-{i}" for i in range(1, ancestors + 1)]
    return dict(zip(runs, runs[1:], strict=False))


@pytest.mark.parametrize(
    ("ancestors", "child_tools"),
    [
        (0, ["read_file", "spawn_agent"]),  # the child may spawn one more level
        (1, ["read_file"]),  # the child is at the last level
    ],
)
async def test_a_child_may_spawn_unless_it_is_at_the_depth_limit(
    ancestors: int, child_tools: list[str]
) -> None:
    engine = _Engine(tools=("read_file", "spawn_agent"))
    engine.parents = _ancestry(ancestors)
    call = _Call(engine, SubAgentLimits(max_depth=2))
    running = call.start()
    await call.until(1)
    engine.feed(_complete())
    assert await running == "the answer"
    assert engine.created[0]["tools"] == child_tools


@pytest.mark.parametrize("ancestors", [2, 3, 7])
async def test_a_run_at_the_depth_limit_may_not_spawn(ancestors: int) -> None:
    engine = _Engine(tools=("read_file", "spawn_agent"))
    engine.parents = _ancestry(ancestors)
    call = _Call(engine, SubAgentLimits(max_depth=2))
    with pytest.raises(ToolFailure) as failure:
        await call.start()
    assert str(failure.value) == (
        "nesting depth limit reached: sub-agents may nest 2 deep, and this run is already a "
        "sub-agent at that depth; do the task yourself"
    )
    assert engine.created == []


def test_a_child_s_tools_outside_its_parent_s_are_named_with_what_it_may_have() -> None:
    parent = Session(
        session_id="s", model="m", workspace="/w", tools=("read_file", "mcp__files__*")
    )
    with pytest.raises(ToolFailure) as failure:
        subagents._child_tools(parent, ["bash", "mcp__files__read", "write"], may_spawn=True)
    assert str(failure.value) == (
        "tools: bash, write not available to a sub-agent here "
        "(a subset of: read_file, mcp__files__*)"
    )
    assert subagents._child_tools(parent, [], may_spawn=True) == []
    lone = parent.model_copy(update={"tools": ("spawn_agent",)})
    with pytest.raises(ToolFailure) as failure:
        subagents._child_tools(lone, ["spawn_agent"], may_spawn=False)
    assert str(failure.value) == (
        "tools: spawn_agent not available to a sub-agent here (a subset of: none)"
    )


async def _until_cancelled(engine: _Engine) -> None:
    async with asyncio.timeout(10):
        while not engine.cancels:
            await asyncio.sleep(0)


@pytest.mark.parametrize(
    ("quiet_until", "reason"),
    [
        (130.0, "no event for 30 s"),  # quiet for its idle time since its last event at 100 s
        (700.0, "ran longer than 600 s"),  # started at 100 s
    ],
)
async def test_the_follower_s_watchdog_cancels_a_child_and_the_call_times_out(
    clock: _Clock, quiet_until: float, reason: str
) -> None:
    engine = _Engine()
    call = _Call(engine, SubAgentLimits(idle_timeout=30.0, max_duration=600.0, heartbeat=1e6))
    running = call.start()
    await call.until(1)
    if quiet_until > 130.0:  # busy all along: an event a second before the run time is up
        clock.now = 699.0
        engine.feed(Token(content="busy"))
        await call.until(2)
    clock.then(quiet_until)
    engine.feed(Token(content="and then nothing"))
    await _until_cancelled(engine)
    assert engine.cancels == [("r-child", {"reason": f"timeout: {reason}", "wait": False})]
    engine.feed(Cancelled(reason=f"timeout: {reason}"))
    with pytest.raises(ToolFailure) as failure:
        await running
    assert str(failure.value) == f"the sub-agent timed out: {reason}"
    assert call.emitted[-1].model_dump(include={"status", "error"}) == {
        "status": "timeout",
        "error": reason,
    }


@pytest.mark.parametrize(
    ("end", "status", "error", "failure"),
    [
        (Cancelled(reason="by hand"), "cancelled", "by hand", "was cancelled (by hand)"),
        (Error(message="boom", code="provider"), "error", "boom", "failed: boom"),
    ],
)
async def test_a_child_that_does_not_complete_fails_the_call_saying_how(
    end: RunEventBase, status: str, error: str, failure: str
) -> None:
    engine = _Engine()
    call = _Call(engine)
    running = call.start()
    await call.until(1)
    engine.feed(end)
    with pytest.raises(ToolFailure) as raised:
        await running
    assert str(raised.value) == f"the sub-agent {failure}"
    assert call.emitted[-1].model_dump(include={"status", "error"}) == {
        "status": status,
        "error": error,
    }
    assert engine.cancels == []


async def test_the_time_a_grandchild_waits_for_a_person_is_not_the_call_s(clock: _Clock) -> None:
    """The child's own sub-agent waits: its requests reach the child's stream wrapped, and the
    child's heartbeats for it meanwhile say nothing of the wait."""
    engine = _Engine()
    call = _Call(engine)
    running = call.start()
    await call.until(1)
    request: dict[str, Any] = {"request_id": "q", "tool_call_id": "c", "tool_name": "write"}
    grandchild = {"child_session_id": "s-grandchild", "child_run_id": "r-grandchild"}

    def wrapped(event: RunEventBase) -> SubAgentEvent:
        stamped = event.stamped(seq=1, run_id="r-grandchild", session_id="s-grandchild", ts=TS)
        return SubAgentEvent(event=event_to_dict(stamped), **grandchild)

    for now, event, emitted in (
        (101.0, wrapped(InputRequested(kind="approval", **request)), 2),
        (102.0, SubAgentHeartbeat(**grandchild), 3),
        (103.0, wrapped(InputReceived(kind="approval", approve=True, **request)), 4),
        (104.5, SubAgentHeartbeat(**grandchild), 5),
        (105.0, wrapped(Token(content="resumed")), 6),  # waited from 101 to 105
    ):
        clock.now = now
        engine.feed(event)
        await call.until(emitted)
    assert call.not_counted == [4.0]
    engine.feed(_complete())
    await running


async def test_a_follower_sleeps_until_its_child_s_next_event_or_a_deadline(clock: _Clock) -> None:
    """No busy loop: while its child runs within its limits, waits for a person past them, or
    is being cancelled by the watchdog, the follower does not look at the clock at all."""
    engine = _Engine()
    call = _Call(engine, SubAgentLimits(idle_timeout=30.0, max_duration=60.0, heartbeat=1e6))
    running = call.start()
    await call.until(1)

    async def asleep() -> bool:
        readings = clock.readings
        for _ in range(50):
            await asyncio.sleep(0)
        return clock.readings == readings

    assert await asleep(), "running within its limits"
    request: dict[str, Any] = {"request_id": "q", "tool_call_id": "c", "tool_name": "write"}
    clock.then(1000.0)
    engine.feed(InputRequested(kind="approval", **request))
    await call.until(2)
    assert await asleep(), "waiting for a person, long past its limits"
    clock.now = 1000.0
    engine.feed(InputReceived(kind="approval", approve=True, **request))
    await call.until(3)
    clock.now = 1001.0  # 60 s of run time from 100 s, and the 900 s it waited for a person
    engine.feed(Token(content="resumed"))
    await call.until(4)
    assert await asleep(), "running again, past its limits but for the wait"
    clock.then(1031.0)
    engine.feed(Token(content="and then nothing"))
    await _until_cancelled(engine)
    assert engine.cancels == [("r-child", {"reason": "timeout: no event for 30 s", "wait": False})]
    assert await asleep(), "being cancelled by the watchdog"
    engine.feed(Cancelled(reason="timeout: no event for 30 s"))
    with pytest.raises(ToolFailure):
        await running


async def test_the_cap_per_run_holds_each_run_s_own_spawns_only() -> None:
    engine = _Engine()
    capacity = SubAgents(SubAgentLimits(per_run=1))
    calls = [_Call(engine, capacity=capacity, run_id=run_id) for run_id in ("r-a", "r-b")]
    running = [call.start() for call in calls]
    for call in calls:
        await call.until(1)  # each started its child, neither waiting for the other's slot
    assert len(engine.created) == 2
    for task in running:
        task.cancel()
    for task in running:
        with pytest.raises(asyncio.CancelledError):
            await task


def test_the_tool_s_own_timeout_is_a_minute_past_the_child_s_run_time() -> None:
    tool = SpawnAgentTool(_Engine(), SubAgents(SubAgentLimits(max_duration=600.0)))  # type: ignore[arg-type]
    assert tool.timeout == 660.0
