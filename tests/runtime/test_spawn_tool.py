"""The ``spawn_agent`` tool against a scripted engine (no store, no model): what a child is
given, what the parent's stream shows, the watchdog's and the heartbeat's edges on a clock the
test moves, and what a failing cancel or resume leaves. ``test_subagents.py`` runs the same
paths through a real engine; here each edge is one line of the script."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

from culm.domain.events import (
    Complete,
    InputReceived,
    InputRequested,
    RunEvent,
    RunEventBase,
    Token,
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

    def monotonic(self) -> float:
        return self.now


class _Engine:
    """The engine as the tool sees it: one parent run and session, one child whose events the
    test feeds (``feed``); creates, starts, cancels and resumes recorded, ``failing`` ones
    raising."""

    def __init__(self, **parent: Any) -> None:
        self.parent = Session(session_id="s-parent", model="scripted:parent", workspace="/w")
        self.parent = self.parent.model_copy(update=parent)
        self.created: list[dict[str, Any]] = []
        self.started: list[dict[str, Any]] = []
        self.cancels: list[tuple[str, dict[str, Any]]] = []
        self.resumed: list[str] = []
        self.failing: set[str] = set()
        self.starting = asyncio.Event()
        self.may_start = asyncio.Event()
        self.may_start.set()
        self._events: asyncio.Queue[RunEvent] = asyncio.Queue()
        self._seq = 0

    async def get_session(self, session_id: str) -> Session:
        return self.parent

    async def get_run(self, run_id: str) -> Run:
        return Run(run_id=run_id, session_id=self.parent.session_id, model="m")

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

    def __init__(self, engine: _Engine, limits: SubAgentLimits | None = None) -> None:
        self.emitted: list[RunEventBase] = []
        self.not_counted: list[float] = []
        self.tool = SpawnAgentTool(engine, SubAgents(limits or SubAgentLimits()))  # type: ignore[arg-type]
        self.ctx = ToolContext(
            workspace=Path("/w"),
            tool_call_id="call-1",
            emit_output=lambda _: None,
            timeout=60,
            run_id="r-parent",
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
