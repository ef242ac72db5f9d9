"""A run's path through the run manager alone (``_execute``, ``_run``, ``_finalize``, ``_end``),
without an engine: a real SQLite store and event writer, the scripted model, and the loop's
context built by hand. What each way of ending leaves in the store (events, messages, status,
usage), in the runner and in the log: an answer, a wait for a person and its resume, each kind
of failure, each kind of cancel, a lost lease, a hand-back, an end the store refuses and one
whose events were dropped at a stop. The engine tests (test_engine_runs, test_cancel_*,
tests/input) drive the same code through the API; these run in a fraction of a second each."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from culm.domain.events import Error, ExecutionStarted, RunEvent
from culm.domain.input import InputAnswer
from culm.domain.models import Message, Run, RunStatus, Session, Usage
from culm.domain.time import new_id
from culm.errors import ConfigError, StorageUnavailableError
from culm.input.ask import AskUserTool
from culm.loop import approval
from culm.loop.context import LoopContext, LoopLimits
from culm.providers.scripted import Script, ScriptedModel
from culm.runtime import manager
from culm.runtime.batcher import EventBatcher
from culm.runtime.manager import RunManager
from culm.runtime.registry import RunnerRegistry
from culm.runtime.runner import Runner
from culm.storage.base import SessionState
from culm.storage.schema import messages as messages_table
from culm.storage.sql import SqlStore
from culm.tools.base import Tool
from tests.storage.queue_support import raw_rows
from tests.support import PROMPTLY, SleepTool, settings, tool_turn

pytestmark = pytest.mark.backends("sqlite")

USAGE = {"prompt_tokens": 10, "completion_tokens": 2}


class Store(SqlStore):
    """The real store, recording the ``finish_run`` calls (a run's end written apart from its
    events), with switches: a session that is not found, event writes or ``finish_run`` that
    fail, a start held until ``start_gate`` is set, and a takeover (the run handed back, as
    another worker's recovery would take it) just before it parks, writes its end with its
    events, or appends messages."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.finishes: list[dict[str, Any]] = []
        self.lose_sessions = False
        self.events_fail = False
        self.take_over_at = ""  # "park", "end" or "messages": hand the run back just before
        self.finish_fails = False
        # Set: start_run waits for it (``starting`` is set once it does).
        self.start_gate: asyncio.Event | None = None
        self.starting = asyncio.Event()

    async def finish_run(self, run_id: str, **fields: Any) -> None:
        self.finishes.append({"run_id": run_id} | fields)
        if self.finish_fails:
            raise StorageUnavailableError("disk full")
        await super().finish_run(run_id, **fields)

    async def start_run(self, run_id: str, epoch: int, **fields: Any) -> Run | None:
        if self.start_gate is not None:
            self.starting.set()
            await self.start_gate.wait()
        return await super().start_run(run_id, epoch, **fields)

    async def park_run(self, run_id: str, **fields: Any) -> RunStatus:
        if self.take_over_at == "park":
            await self._take_over(run_id, fields["fence"])
        return await super().park_run(run_id, **fields)

    async def append_messages(
        self, session_id: str, messages: Sequence[Message], **fields: Any
    ) -> None:
        if self.take_over_at == "messages":
            run = await self.get_run(fields["run_id"])
            assert run is not None and run.owner is not None
            await self._take_over(run.run_id, (run.owner, run.epoch))
        await super().append_messages(session_id, messages, **fields)

    async def _take_over(self, run_id: str, fence: tuple[str, int]) -> None:
        """Hand the run back (another worker's doing, say) just before a write."""
        self.take_over_at = ""
        owner, epoch = fence
        await self.release_runs(owner, {run_id: epoch}, clean=True)

    async def get_session_state(self, session_id: str) -> SessionState | None:
        if self.lose_sessions:
            return None
        return await super().get_session_state(session_id)

    async def append_events(self, events: Sequence[RunEvent], **fields: Any) -> Any:
        if self.events_fail:
            raise StorageUnavailableError("disk full")
        if self.take_over_at == "end" and fields.get("endings"):
            for run_id in fields["endings"]:
                await self._take_over(run_id, fields["fences"][run_id])
        return await super().append_events(events, **fields)


@dataclass
class Harness:
    store: Store
    batcher: EventBatcher
    runs: RunManager
    home: Path
    model: Any = None
    tools: list[Tool] = field(default_factory=list)
    # Each context built: its run, its session state, and the roles of the messages it had.
    contexts: list[tuple[Run, SessionState, list[str]]] = field(default_factory=list)
    fail_context: BaseException | None = None

    async def context(
        self,
        run: Run,
        loaded: SessionState,
        emit: Callable[[Any], Any],
        append: Callable[[Sequence[Message]], Any],
    ) -> LoopContext:
        self.contexts.append((run, loaded, [message.role for message in loaded.messages]))
        if self.fail_context is not None:
            raise self.fail_context
        fence = (self.runs.owner, run.epoch)

        async def resolve(messages: Sequence[Message], ids: Sequence[str]) -> None:
            await self.store.resolve_input(
                run.run_id, fence=fence, messages=messages, request_ids=ids
            )

        return LoopContext(
            session=loaded.session,
            model=self.model,
            tools={tool.name: tool for tool in self.tools},
            workspace=self.home,
            limits=LoopLimits(),
            emit=emit,
            append_messages=append,
            run_id=run.run_id,
            resolve_input=resolve,
        )

    def script(self, *turns: list[dict[str, Any]]) -> None:
        self.model = ScriptedModel("scripted:t", Script(turns=list(turns)))

    async def reserve(self, text: str = "hi", **session_fields: Any) -> Run:
        """A run reserved owned by this manager (not started), on a new session."""
        session = Session(
            session_id=new_id(), model="scripted:t", workspace=str(self.home), **session_fields
        )
        run = Run(run_id=new_id(), session_id=session.session_id, model="scripted:t", input=text)
        reservation = await self.store.reserve_run(
            run, queue=False, owner=self.runs.owner, lease_seconds=300, session=session
        )
        return reservation.run

    async def launch(self, run: Run) -> Runner:
        return self.runs.launch(run)

    async def ended(self, runner: Runner) -> tuple[Run, list[RunEvent]]:
        async with asyncio.timeout(PROMPTLY):
            await runner.done.wait()
        stored = await self.store.get_run(runner.run_id)
        assert stored is not None
        return stored, await self.store.read_events(runner.run_id)

    async def session_rows(self, session_id: str) -> list[tuple[str | None, str]]:
        query = (
            sa.select(messages_table.c.run_id, messages_table.c.role)
            .where(messages_table.c.session_id == session_id)
            .order_by(messages_table.c.idx)
        )
        return [(row.run_id, row.role) for row in await raw_rows(self.store, query)]


@contextlib.asynccontextmanager
async def harness(home: Path, **overrides: Any) -> AsyncIterator[Harness]:
    store = Store(f"sqlite+aiosqlite:///{home / 'culm.db'}")
    registry = RunnerRegistry()
    holder: list[RunManager] = []
    batcher = EventBatcher(
        store,
        publish=registry.publish,
        linger=0.005,
        max_batch=100,
        retry_window=3600,
        on_rejected=lambda attempts: holder[0].rejected(attempts),
    )
    async with contextlib.AsyncExitStack() as stack:
        await store.start()
        stack.push_async_callback(store.aclose)
        batcher.start()
        stack.push_async_callback(batcher.aclose)
        box: list[Harness] = []

        async def context(*args: Any) -> LoopContext:
            return await box[0].context(*args)

        runs = RunManager(
            store=store,
            registry=registry,
            batcher=batcher,
            settings=settings(home, **overrides),
            context_factory=context,
        )
        holder.append(runs)
        box.append(Harness(store, batcher, runs, home))
        await runs.start(stack)
        yield box[0]


async def _settled(h: Harness, runner: Runner) -> None:
    """Once the run's task is done and its done-callback ran, every finalizing it started."""
    assert runner.task is not None
    async with asyncio.timeout(PROMPTLY):
        await asyncio.wait([runner.task])
        await asyncio.sleep(0)  # the task's done-callbacks
        while h.runs._finishing:
            await asyncio.gather(*h.runs._finishing, return_exceptions=True)


def _types(events: list[RunEvent]) -> list[str]:
    return [event.type for event in events]


def _payload(event: RunEvent) -> Any:
    """The event as emitted, without what the runner stamped on it."""
    return event.model_dump(exclude={"seq", "run_id", "session_id", "ts"})


# Answers


async def test_an_answer_ends_the_run_with_its_message_status_and_usage_in_one_write(
    tmp_path: Path,
) -> None:
    async with harness(tmp_path) as h:
        h.script([{"text": "hello"}, {"usage": USAGE}])
        run = await h.reserve("hi")
        before = time.monotonic()
        runner = await h.launch(run)
        stored, events = await h.ended(runner)
        rows = await h.session_rows(run.session_id)
        session = await h.store.get_session_state(run.session_id)
    usage = Usage(prompt_tokens=10, completion_tokens=2, total_tokens=12)
    assert stored.status is RunStatus.COMPLETED and stored.error is None
    assert stored.usage == usage
    assert events[0].type == "execution_started"
    assert _payload(events[0]) == _payload(
        ExecutionStarted(started_at=stored.started_at, attempt=1).stamped(
            seq=1, run_id=run.run_id, session_id=run.session_id, ts=stored.started_at
        )
    )
    assert events[-1].type == "complete"
    assert (events[-1].final_message, events[-1].usage) == ("hello", usage)  # type: ignore[union-attr]
    assert rows == [(run.run_id, "user"), (run.run_id, "assistant")]
    assert session is not None and session.messages[-1].content == "hello"  # type: ignore[union-attr]
    assert h.store.finishes == []  # its status went with its terminal event
    # The runner: ended, out of the registry, with what it did.
    assert (runner.status, runner.end_stored, runner.usage) == (RunStatus.COMPLETED, True, usage)
    assert runner.started_at == stored.started_at
    assert runner.completed_at is not None and runner.completed_at >= stored.started_at
    assert runner.finalizing and runner.finalizing_since is not None
    assert before <= runner.finalizing_since <= time.monotonic()
    assert h.runs._registry.get(run.run_id) is None


async def test_a_tool_round_stores_its_messages_under_the_run_and_the_model_sees_history(
    tmp_path: Path,
) -> None:
    async with harness(tmp_path) as h:
        h.tools = [SleepTool()]
        h.script(tool_turn("sleep", {"seconds": 0}), [{"echo": True}])
        first = await h.reserve("first")
        _, events = await h.ended(await h.launch(first))
        rows = await h.session_rows(first.session_id)
        # A second run on the session: the loop gets the session's messages so far.
        second = Run(
            run_id=new_id(), session_id=first.session_id, model="scripted:t", input="second"
        )
        reservation = await h.store.reserve_run(
            second, queue=False, owner=h.runs.owner, lease_seconds=300
        )
        h.script([{"echo": True}])
        stored, _ = await h.ended(await h.launch(reservation.run))
    assert _types(events)[-1] == "complete"
    assert events[-1].final_message == "You said: first"  # type: ignore[union-attr]
    assert rows == [(first.run_id, role) for role in ("user", "assistant", "tool", "assistant")]
    assert stored.status is RunStatus.COMPLETED
    run, loaded, roles = h.contexts[-1]
    assert run.run_id == second.run_id and loaded.session.session_id == first.session_id
    assert roles == [
        "user",
        "assistant",
        "tool",
        "assistant",
        "user",
    ]


# Failures


# The exceptions are made in the test, not in the parameters: pytest keeps the parameters for
# the whole session, and an exception raised keeps its traceback, so its frames (the run
# manager's, with their runner) would outlive the test (tests/runtime/test_memory.py counts
# every Runner in the process).
@pytest.mark.parametrize(
    ("kind", "text", "message", "code"),
    [
        (ConfigError, "CULM_X: no such thing", "CULM_X: no such thing", "invalid_request"),
        (RuntimeError, "boom", "internal error: RuntimeError: boom", "internal_error"),
        (StorageUnavailableError, "disk full", "disk full", "storage_unavailable"),
    ],
)
async def test_each_kind_of_failure_ends_the_run_in_error_with_its_code(
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    kind: type[Exception],
    text: str,
    message: str,
    code: str,
) -> None:
    caplog.set_level(logging.ERROR, logger="culm.runtime.manager")
    async with harness(tmp_path) as h:
        h.fail_context = kind(text)
        run = await h.reserve()
        runner = await h.launch(run)
        stored, events = await h.ended(runner)
    assert (stored.status, stored.error) == (RunStatus.ERROR, message)
    assert _types(events) == ["execution_started", "error"]
    assert _payload(events[-1]) == _payload(
        Error(message=message, code=code).stamped(
            seq=2, run_id=run.run_id, session_id=run.session_id, ts=stored.started_at
        )
    )
    assert runner.status is RunStatus.ERROR
    internal = [f"run failed with an internal error run_id={run.run_id}"]
    assert caplog.messages == (internal if code == "internal_error" else [])


async def test_a_run_failure_ends_the_run_with_the_failures_code(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        h.script([{"error": {"kind": "auth"}}])
        stored, events = await h.ended(await h.launch(await h.reserve()))
    assert stored.status is RunStatus.ERROR
    assert events[-1].type == "error" and events[-1].code == "model_auth_error"  # type: ignore[union-attr]
    assert events[-1].message == stored.error  # type: ignore[union-attr]


async def test_a_session_gone_ends_the_run_as_not_found(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        run = await h.reserve()
        h.store.lose_sessions = True
        stored, events = await h.ended(await h.launch(run))
    message = f"session {run.session_id!r} not found"
    assert (stored.status, stored.error) == (RunStatus.ERROR, message)
    assert (events[-1].message, events[-1].code) == (message, "invalid_request")  # type: ignore[union-attr]
    assert h.contexts == []


# Cancels


async def test_a_cancel_before_the_first_step_ends_the_run_without_starting_it(
    tmp_path: Path,
) -> None:
    async with harness(tmp_path) as h:
        run = await h.reserve()
        runner = await h.launch(run)
        runner.request_cancel("by a person")
        stored, events = await h.ended(runner)
    assert (stored.status, _types(events)) == (RunStatus.CANCELLED, ["cancelled"])
    assert events[-1].reason == "by a person"  # type: ignore[union-attr]
    assert h.contexts == [] and runner.status is RunStatus.CANCELLED


@pytest.mark.parametrize("cancel_here", [False, True])
async def test_a_run_the_store_ended_before_it_started_is_ended_by_nothing_here(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, cancel_here: bool
) -> None:
    # Cancelled through the store (another process's request) while it was being started;
    # also cancelled here meanwhile, or not: the store ended it, nothing more is written.
    caplog.set_level(logging.WARNING, logger="culm.runtime.manager")
    async with harness(tmp_path) as h:
        h.store.start_gate = asyncio.Event()
        run = await h.reserve()
        runner = await h.launch(run)
        async with asyncio.timeout(PROMPTLY):
            await h.store.starting.wait()
        if cancel_here:
            runner.request_cancel("by a person")
            await asyncio.sleep(0)  # the task sees its cancel, waits for the store's answer
        await h.store.request_cancel(run.run_id, "by a person")
        h.store.start_gate.set()
        stored, events = await h.ended(runner)
    assert (stored.status, _types(events)) == (RunStatus.CANCELLED, ["cancelled"])
    assert events[0].reason == "by a person"  # type: ignore[union-attr]
    assert (runner.end_stored, runner.ended_in_store) == (False, cancel_here)
    assert caplog.messages == [] and h.contexts == []
    assert h.runs._registry.get(run.run_id) is None


@pytest.mark.parametrize("reason", [None, "by a person"])
async def test_a_task_cancelled_before_its_first_step_is_still_ended(
    tmp_path: Path, reason: str | None
) -> None:
    # Its coroutine never runs: the task's done-callback ends the run.
    async with harness(tmp_path) as h:
        run = await h.reserve()
        runner = await h.launch(run)
        if reason is not None:
            runner.request_cancel(reason)
        assert runner.task is not None
        runner.task.cancel()
        stored, _ = await h.ended(runner)
        await _settled(h, runner)  # a second ending, if any, is done too
        events = await h.store.read_events(run.run_id)
    assert (stored.status, _types(events)) == (RunStatus.CANCELLED, ["cancelled"])
    assert events[-1].reason == (reason or "cancelled")  # type: ignore[union-attr]
    assert runner.status is RunStatus.CANCELLED and runner.end_stored


async def _in_the_tool(h: Harness) -> tuple[Run, Runner, SleepTool]:
    tool = SleepTool()
    h.tools = [tool]
    h.script(tool_turn("sleep"), [{"text": "never"}])
    run = await h.reserve()
    runner = await h.launch(run)
    async with asyncio.timeout(PROMPTLY):
        await tool.started.wait()
    return run, runner, tool


async def test_a_cancel_during_a_tool_call_ends_the_run_with_its_reason(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        run, runner, _ = await _in_the_tool(h)
        assert runner.status is RunStatus.RUNNING
        assert runner.request_cancel("by a person")
        stored, events = await h.ended(runner)
        task = runner.task
    assert (stored.status, events[-1].type) == (RunStatus.CANCELLED, "cancelled")
    assert events[-1].reason == "by a person"  # type: ignore[union-attr]
    assert task is not None and task.done() and not task.cancelled()  # ended as it should


@pytest.mark.parametrize("engine_cancel", [False, True])
async def test_a_cancel_from_outside_is_recorded_and_wins(
    tmp_path: Path, engine_cancel: bool
) -> None:
    # Not issued by the engine (or on top of the engine's own): recorded as a plain cancel,
    # and the task ends cancelled.
    async with harness(tmp_path) as h:
        _, runner, _ = await _in_the_tool(h)
        if engine_cancel:
            runner.request_cancel("by a person")
        assert runner.task is not None
        runner.task.cancel()
        stored, events = await h.ended(runner)
        task = runner.task
    assert (stored.status, events[-1].type) == (RunStatus.CANCELLED, "cancelled")
    assert events[-1].reason == "cancelled"  # type: ignore[union-attr]
    assert task.cancelled()


async def test_a_lost_lease_ends_the_run_here_writing_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="culm.runtime.manager")
    async with harness(tmp_path) as h:
        run, runner, _ = await _in_the_tool(h)
        await h.batcher.flush()
        h.runs.lease_lost([(run.run_id, run.epoch)])
        stored, events = await h.ended(runner)
    assert stored.status is RunStatus.RUNNING  # its lease runs out; a sweeper ends it
    assert _types(events)[-1] == "tool_start"
    assert caplog.messages == [
        f"lease lost: cancelling the run here run_id={run.run_id}",
        f"lease lost: the run ends here, writing nothing run_id={run.run_id}",
    ]


async def test_a_run_taken_over_meanwhile_stores_none_of_its_round(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Handed back in the store while its tool ran: the round's messages are refused (fenced),
    # the run ends here writing nothing.
    caplog.set_level(logging.WARNING, logger="culm.runtime.manager")
    async with harness(tmp_path) as h:
        tool = SleepTool()
        h.tools = [tool]
        h.script(tool_turn("sleep", {"seconds": 0.2}), [{"text": "never"}])
        run = await h.reserve()
        runner = await h.launch(run)
        async with asyncio.timeout(PROMPTLY):
            await tool.started.wait()
        await h.batcher.flush()
        await h.store.release_runs(h.runs.owner, {run.run_id: run.epoch}, clean=True)
        stored, events = await h.ended(runner)
        rows = await h.session_rows(run.session_id)
    assert (stored.status, stored.owner) == (RunStatus.PENDING, None)
    assert rows == [(run.run_id, "user")]
    assert "complete" not in _types(events)
    assert f"lease lost: the run ends here, writing nothing run_id={run.run_id}" in caplog.messages


async def test_a_run_handed_back_at_a_stop_is_claimed_again_as_a_new_attempt(
    tmp_path: Path,
) -> None:
    async with harness(tmp_path) as h:
        run, runner, _ = await _in_the_tool(h)
        runner.request_cancel(manager._RELEASE)
        released, events = await h.ended(runner)
        h.script([{"text": "again"}])
        (claimed,) = await h.store.claim_runs(h.runs.owner, limit=1, lease_seconds=300)
        stored, events_after = await h.ended(await h.launch(claimed))
    assert (released.status, released.owner, released.attempt) == (RunStatus.PENDING, None, 2)
    assert not any(event.type in ("cancelled", "complete", "error") for event in events)
    started = [event for event in events_after if event.type == "execution_started"]
    assert [event.attempt for event in started] == [1, 2]  # type: ignore[attr-defined]
    assert started[1].started_at == claimed.started_at  # type: ignore[attr-defined]
    assert stored.status is RunStatus.COMPLETED and stored.attempt == 2


async def test_the_dispatcher_is_told_when_a_run_frees_its_slot(tmp_path: Path) -> None:
    class Dispatcher:
        freed_count = 0

        def freed(self) -> None:
            self.freed_count += 1

    async with harness(tmp_path) as h:
        dispatcher = Dispatcher()
        h.runs.dispatcher = dispatcher  # type: ignore[assignment]
        h.script([{"text": "hello"}])
        await h.ended(await h.launch(await h.reserve()))
        h.runs.dispatcher = None
    assert dispatcher.freed_count == 1


# A run's end that the store refuses, or whose events were dropped


async def test_an_end_the_store_refuses_is_not_written_apart(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Taken over just as its end is written: its end (its last events, terminal event and
    # status) is refused, and nothing else is tried.
    caplog.set_level(logging.WARNING, logger="culm.runtime.manager")
    async with harness(tmp_path) as h:
        h.script([{"text": "late"}])
        h.store.take_over_at = "end"
        run = await h.reserve()
        runner = await h.launch(run)
        stored, events = await h.ended(runner)
        rows = await h.session_rows(run.session_id)
    assert (stored.status, rows) == (RunStatus.PENDING, [(run.run_id, "user")])
    assert "complete" not in _types(events) and h.store.finishes == []
    assert (runner.end_stored, runner.status) == (False, RunStatus.RUNNING)
    assert caplog.messages[-1] == (
        f"the store refused the run's end; writing nothing run_id={run.run_id}"
    )


async def test_an_end_whose_events_were_dropped_at_a_stop_is_written_apart(
    tmp_path: Path,
) -> None:
    async with harness(tmp_path) as h:
        h.script([{"text": "hello"}, {"usage": USAGE}])
        run = await h.reserve()
        runner = await h.launch(run)
        h.store.events_fail = True  # from the start: every event is dropped below
        await _dropped(h, runner)
        stored, events = await h.ended(runner)
        rows = await h.session_rows(run.session_id)
    usage = Usage(prompt_tokens=10, completion_tokens=2, total_tokens=12)
    assert events == []
    assert (stored.status, stored.error, stored.usage) == (RunStatus.COMPLETED, None, usage)
    assert rows == [(run.run_id, "user"), (run.run_id, "assistant")]
    assert h.store.finishes == [
        {
            "run_id": run.run_id,
            "fence": (h.runs.owner, run.epoch),
            "status": RunStatus.COMPLETED,
            "error": None,
            "usage": usage,
        }
    ]
    assert (runner.status, runner.end_stored) == (RunStatus.COMPLETED, True)


async def _dropped(h: Harness, runner: Runner) -> None:
    """Once ``runner`` ends while the store fails to take events, give up on the store as a
    stop does (its events are dropped); return when it has ended, the store taking events
    again."""
    async with asyncio.timeout(PROMPTLY):
        while not runner.finalizing or not h.batcher.failing:
            await asyncio.sleep(0.01)
    h.batcher.give_up()
    async with asyncio.timeout(PROMPTLY):
        await runner.done.wait()
    h.store.events_fail = False


# Waiting for a person, and resuming


async def _parked(h: Harness, **session_fields: Any) -> tuple[Run, Runner]:
    h.tools = [AskUserTool()]
    ask = {"tool_call": {"name": "ask_user", "arguments": {"question": "Colour?"}}}
    h.script([ask, {"usage": USAGE}], [{"echo": True}, {"usage": USAGE}])
    run = await h.reserve("pick", **session_fields)
    runner = await h.launch(run)
    return run, runner


async def test_a_run_that_asks_a_person_parks_and_sends_its_followers_to_the_store(
    tmp_path: Path,
) -> None:
    async with harness(tmp_path) as h:
        run, runner = await _parked(h, input_timeout=600)
        follower = runner.attach(0)
        stored, events = await h.ended(runner)
        (request,) = await h.store.list_input([run.run_id])
    assert stored.status is RunStatus.WAITING and stored.owner is None
    assert stored.usage == Usage(prompt_tokens=10, completion_tokens=2, total_tokens=12)
    assert _types(events)[-1] == "input_requested"
    assert runner.status is RunStatus.WAITING and not runner.end_stored
    assert follower is not None and follower.closed
    assert request.expires_at is not None and stored.started_at is not None
    waited = (request.expires_at - stored.started_at).total_seconds()
    assert 590 < waited < 610
    assert h.runs._registry.get(run.run_id) is None


async def test_a_resumed_run_goes_on_as_the_same_attempt_counting_what_it_spent(
    tmp_path: Path,
) -> None:
    async with harness(tmp_path) as h:
        run, runner = await _parked(h)
        await h.ended(runner)
        (request,) = await h.store.list_input([run.run_id])
        await h.store.answer_input(run.run_id, request.request_id, InputAnswer(answer="blue"))
        (claimed,) = await h.store.claim_runs(
            h.runs.owner, limit=1, lease_seconds=300, only=[run.run_id]
        )
        resumed = await h.launch(claimed)
        stored, events = await h.ended(resumed)
        session = await h.store.get_session_state(run.session_id)
    assert stored.status is RunStatus.COMPLETED
    assert _types(events).count("execution_started") == 1
    rounds = [event.round for event in events if event.type == "round_completed"]  # type: ignore[attr-defined]
    assert rounds == [1, 2]
    both = Usage(prompt_tokens=20, completion_tokens=4, total_tokens=24)
    assert stored.usage == both and events[-1].usage == both  # type: ignore[union-attr]
    assert session is not None
    tool_result = [message for message in session.messages if message.role == "tool"]
    assert [message.content for message in tool_result] == ["blue"]  # type: ignore[union-attr]


async def test_a_run_taken_over_as_it_parks_writes_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="culm.runtime.manager")
    async with harness(tmp_path) as h:
        h.store.take_over_at = "park"
        run, runner = await _parked(h)
        stored, events = await h.ended(runner)
        requests = await h.store.list_input([run.run_id], statuses=None)
    assert (stored.status, stored.owner, requests) == (RunStatus.PENDING, None, [])
    assert "input_requested" not in _types(events)
    assert caplog.messages == [
        f"lease lost while finishing a run; writing nothing run_id={run.run_id}"
    ]
    assert h.runs._registry.get(run.run_id) is None and runner.done.is_set()


async def test_a_resumed_run_recovered_since_its_answer_does_not_run_an_approved_call(
    tmp_path: Path,
) -> None:
    # Approved, then handed back before it resumed: the attempt that picks the answer up is a
    # new one (it says so), and it does not run the approved call (the lost one may have).
    async with harness(tmp_path) as h:
        tool = SleepTool()
        h.tools = [tool]
        h.script(tool_turn("sleep", {"seconds": 0}), [{"text": "done"}])
        run = await h.reserve("go", require_approval=("sleep",))
        await h.ended(await h.launch(run))
        (request,) = await h.store.list_input([run.run_id])
        await h.store.answer_input(run.run_id, request.request_id, InputAnswer(approve=True))
        (claimed,) = await h.store.claim_runs(
            h.runs.owner, limit=1, lease_seconds=300, only=[run.run_id]
        )
        await h.store.release_runs(h.runs.owner, {run.run_id: claimed.epoch}, clean=True)
        (again,) = await h.store.claim_runs(h.runs.owner, limit=1, lease_seconds=300)
        stored, events = await h.ended(await h.launch(again))
        session = await h.store.get_session_state(run.session_id)
    assert (again.attempt, stored.status) == (2, RunStatus.COMPLETED)
    started = [event.attempt for event in events if event.type == "execution_started"]  # type: ignore[attr-defined]
    assert started == [1, 2]
    assert not tool.started.is_set()
    assert session is not None
    results = [message.content for message in session.messages if message.role == "tool"]
    assert results == [f"error: {approval.RECOVERED_APPROVAL}"]


async def test_a_run_whose_end_fails_to_be_written_apart_is_left_to_a_sweeper(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="culm.runtime.manager")
    async with harness(tmp_path) as h:
        h.script([{"text": "hello"}])
        run = await h.reserve()
        runner = await h.launch(run)
        h.store.events_fail = h.store.finish_fails = True
        h.runs._give_up.set()  # a stop gave up on the store: finish_run is not retried
        await _dropped(h, runner)
        stored, _ = await h.ended(runner)
    assert stored.status is RunStatus.RUNNING and not runner.end_stored
    assert h.runs._registry.get(run.run_id) is None
    assert caplog.messages[-1] == (
        f"finishing a run failed; a sweeper will end it run_id={run.run_id}"
    )


async def test_a_run_taken_over_after_its_events_were_dropped_writes_nothing_apart(
    tmp_path: Path,
) -> None:
    async with harness(tmp_path) as h:
        h.script([{"text": "hello"}])
        run = await h.reserve()
        runner = await h.launch(run)
        h.store.events_fail = True
        h.store.take_over_at = "messages"
        await _dropped(h, runner)
        stored, _ = await h.ended(runner)
        rows = await h.session_rows(run.session_id)
    assert (stored.status, rows) == (RunStatus.PENDING, [(run.run_id, "user")])
    assert h.store.finishes == [] and not runner.end_stored
