"""The run manager's start of a run and its wait, without an engine: what ``start_run``
reserves by each policy and where the run then executes (claimed here before the call returns,
owned and launched at once, or left ready), a sub-agent only while its parent is this process's,
what a launched runner is given (its fence, lease, queue, early cancel notices, a stop under
way), a run cancelled while the store starts it, and how often ``wait`` reads the store for a run
that executes elsewhere (on the virtual clock). Runs execute against a real SQLite store, up to
the context factory, which blocks (or emits first): what they do after is the loop's business."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from culm.bus.base import BusState, EventBus, Topic
from culm.bus.local import LocalBus
from culm.domain.events import Complete, RunEventBase
from culm.domain.models import (
    Message,
    MultitaskPolicy,
    Run,
    RunStatus,
    Session,
    Usage,
)
from culm.domain.time import new_id, utc_now
from culm.errors import AlreadyRunningError, EngineClosedError, LeaseLostError, NotFoundError
from culm.runtime import manager
from culm.runtime.batcher import EventBatcher
from culm.runtime.dispatch import Dispatcher
from culm.runtime.manager import RunManager
from culm.runtime.registry import RunnerRegistry
from culm.runtime.runner import Runner
from culm.runtime.subscription import Subscription
from culm.storage.base import SessionState
from culm.storage.sql import SqlStore
from tests.clock import run_virtual
from tests.storage.queue_support import a_run, new_session, owned_run
from tests.support import settings

pytestmark = pytest.mark.backends("sqlite")


class Context:
    """The context factory: records each run that got this far, then blocks until the run is
    cancelled."""

    def __init__(self) -> None:
        self.reached: list[str] = []
        self.arrived = asyncio.Event()

    async def __call__(
        self,
        run: Run,
        _loaded: SessionState,
        _emit: Callable[[RunEventBase], object],
        _append: Callable[[Sequence[Message]], Awaitable[None]],
    ) -> Any:
        self.reached.append(run.run_id)
        self.arrived.set()
        await asyncio.Event().wait()

    async def reaching(self, count: int) -> None:
        """Return once ``count`` runs got this far."""
        async with asyncio.timeout(10):
            while len(self.reached) < count:
                self.arrived.clear()
                await self.arrived.wait()


class GatedStart(SqlStore):
    """The real store whose ``start_run`` waits for ``gate`` once ``gated`` (``entered`` is
    set on the way in)."""

    gated = False

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.entered = asyncio.Event()
        self.gate = asyncio.Event()

    async def start_run(self, run_id: str, epoch: int, **fields: Any) -> Run | None:
        if self.gated:
            self.entered.set()
            await self.gate.wait()
        return await super().start_run(run_id, epoch, **fields)


def _manager(
    home: Path, context: Context | None = None, *, own: bool = False, **overrides: Any
) -> RunManager:
    store = GatedStart(f"sqlite+aiosqlite:///{home / 'culm.db'}")
    registry = RunnerRegistry()
    runs: RunManager | None = None

    def rejected(attempts: Any) -> None:
        assert runs is not None
        runs.rejected(attempts)

    batcher = EventBatcher(
        store, publish=registry.publish, linger=0.005, max_batch=100, on_rejected=rejected
    )
    runs = RunManager(
        store=store,
        registry=registry,
        batcher=batcher,
        settings=settings(home, **overrides),
        context_factory=context or Context(),
        runs_own_runs=own,
    )
    return runs


def _store(runs: RunManager) -> GatedStart:
    assert isinstance(runs._store, GatedStart)
    return runs._store


@contextlib.asynccontextmanager
async def _running(runs: RunManager) -> AsyncIterator[GatedStart]:
    """The store and the batcher open and the manager started; stopped (its runs cancelled)
    on the way out."""
    store = _store(runs)
    await store.start()
    runs._batcher.start()
    try:
        async with asyncio.timeout(20), contextlib.AsyncExitStack() as stack:
            await runs.start(stack)
            yield store
    finally:
        await runs._batcher.aclose()
        await store.aclose()


def _dispatcher(runs: RunManager) -> Dispatcher:
    """A worker here, as the engine wires it (never started: only ``claim_now`` claims)."""
    return Dispatcher(
        runs._store,
        owner=runs.owner,
        concurrency=8,
        lease_seconds=60,
        poll_seconds=60,
        active=lambda: len(runs._registry),
        held=runs._registry.run_ids,
        launch=runs.launch,
        counters=runs.counters,
    )


async def _ended(runner: Runner) -> None:
    async with asyncio.timeout(10):
        await runner.done.wait()


async def _events(store: SqlStore, run_id: str) -> list[tuple[str, str | None]]:
    return [
        (event.type, getattr(event, "reason", None)) for event in await store.read_events(run_id)
    ]


async def _get(store: SqlStore, run_id: str) -> Run:
    run = await store.get_run(run_id)
    assert run is not None
    return run


# Before the start and after the stop


async def test_no_run_is_reserved_before_the_manager_starts_or_once_it_stopped(
    tmp_path: Path,
) -> None:
    runs = _manager(tmp_path)
    store = _store(runs)
    await store.start()
    try:
        session = await new_session(store)
        before, after = a_run(session.session_id), a_run(session.session_id)
        with pytest.raises(EngineClosedError) as early:
            await runs.start_run(before, MultitaskPolicy.ENQUEUE)
        async with contextlib.AsyncExitStack() as stack:
            await runs.start(stack)
            assert not runs.closing
        assert runs.closing  # the stack's exit stopped it
        with pytest.raises(EngineClosedError) as late:
            await runs.start_run(after, MultitaskPolicy.ENQUEUE)
        reserved = [await store.get_run(run.run_id) for run in (before, after)]
    finally:
        await store.aclose()
    assert str(early.value) == str(late.value) == "the engine is not running"
    assert reserved == [None, None]


async def test_a_run_claimed_after_the_stop_fails_to_launch_and_is_not_held(
    tmp_path: Path,
) -> None:
    runs = _manager(tmp_path)
    async with _running(runs) as store:
        run = await owned_run(store, runs.owner)
    # The task group is finished: the launch raises, and the run is neither held nor counted
    # here (its lease runs out). The coroutine that will never run is closed, not left for
    # Python to report as never awaited.
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        with pytest.raises(RuntimeError, match="is finished"):
            runs.launch(run)
        gc.collect()
    assert runs._registry.get(run.run_id) is None and len(runs._registry) == 0


# Reserving by policy: ready runs


async def test_enqueue_waits_its_turn_reject_refuses_and_interrupt_goes_first_and_cancels(
    tmp_path: Path,
) -> None:
    runs = _manager(tmp_path)  # no worker here: ready runs stay ready
    async with _running(runs) as store:
        session = await new_session(store)
        sid = session.session_id
        active = await runs.start_run(a_run(sid), MultitaskPolicy.REJECT)
        with pytest.raises(AlreadyRunningError):
            await runs.start_run(a_run(sid), MultitaskPolicy.REJECT)
        waiting = await runs.start_run(a_run(sid), MultitaskPolicy.ENQUEUE)
        assert waiting.queued and (await _get(store, active.run_id)).status is RunStatus.PENDING
        assert await _events(store, active.run_id) == []  # queuing cancels nothing
        interrupting = await runs.start_run(a_run(sid), MultitaskPolicy.INTERRUPT)
        ends = await _events(store, active.run_id)
        states = [await _get(store, run.run_id) for run in (active, waiting, interrupting)]
    assert (active.queued, active.owner, active.epoch) == (False, None, 0)
    assert ends == [("cancelled", "interrupted by a new run")]
    # The interrupting run went first in line: it holds the slot now, the other still waits.
    assert [(run.status, run.queued) for run in states] == [
        (RunStatus.CANCELLED, False),
        (RunStatus.PENDING, True),
        (RunStatus.PENDING, False),
    ]
    assert len(runs._registry) == 0


async def test_interrupt_on_a_free_session_cancels_nothing(tmp_path: Path) -> None:
    runs = _manager(tmp_path)
    async with _running(runs) as store:
        session = await new_session(store)
        run = await runs.start_run(a_run(session.session_id), MultitaskPolicy.INTERRUPT)
        stored = await _get(store, run.run_id)
    assert (run.queued, stored.status, stored.queued) == (False, RunStatus.PENDING, False)


@pytest.mark.parametrize("own", [False, True], ids=["ready", "owned"])
async def test_a_new_session_is_stored_with_its_first_run(tmp_path: Path, own: bool) -> None:
    runs = _manager(tmp_path, own=own)
    async with _running(runs) as store:
        session = Session(session_id=new_id(), model="scripted:demo", workspace="/w")
        run = await runs.start_run(
            a_run(session.session_id), MultitaskPolicy.REJECT, session=session
        )
        stored = await store.get_session(session.session_id)
        assert (await _get(store, run.run_id)).owner == (runs.owner if own else None)
    assert stored is not None and stored.session_id == session.session_id


async def test_a_worker_here_claims_and_launches_a_ready_run_before_start_run_returns(
    tmp_path: Path,
) -> None:
    context = Context()
    runs = _manager(tmp_path, context)
    async with _running(runs) as store:
        busy = await new_session(store)
        left = await runs.start_run(a_run(busy.session_id), MultitaskPolicy.REJECT)
        runs.dispatcher = _dispatcher(runs)
        # A run that queues starts nothing: no claim (which would take the ready run above).
        await runs.start_run(a_run(busy.session_id), MultitaskPolicy.ENQUEUE)
        assert len(runs._registry) == 0
        free = await new_session(store)
        claimed = await runs.start_run(a_run(free.session_id, input="go"), MultitaskPolicy.REJECT)
        runner = runs._registry.get(claimed.run_id)
        assert runner is not None and runner.epoch == 1
        assert (await _get(store, claimed.run_id)).owner == runs.owner
        assert left.run_id in runs._registry.run_ids()  # that claim took it too
        await context.reaching(2)
        messages = await store.get_messages(free.session_id)
    # Started by its claim (its input stored there), not again here.
    assert set(context.reached) == {claimed.run_id, left.run_id}
    assert [(m.role, m.content) for m in messages] == [("user", "go")]  # type: ignore[union-attr]


# Reserving owned: culm run's own runs, sub-agents


async def test_a_process_that_runs_its_own_runs_reserves_them_owned_and_starts_them_at_once(
    tmp_path: Path,
) -> None:
    context = Context()
    runs = _manager(tmp_path, context, own=True)
    async with _running(runs) as store:
        session = await new_session(store)
        run = await runs.start_run(
            a_run(session.session_id, input="hello"), MultitaskPolicy.ENQUEUE
        )
        assert not runs._finishing  # the task that reserved it is forgotten
        runner = runs._registry.get(run.run_id)
        assert runner is not None and runner.task is not None
        await context.reaching(1)
        stored = await _get(store, run.run_id)
        messages = await store.get_messages(session.session_id)
        # It holds the slot: another run is refused, even one that would queue.
        with pytest.raises(AlreadyRunningError):
            await runs.start_run(a_run(session.session_id), MultitaskPolicy.ENQUEUE)
    assert (run.owner, run.epoch, runner.epoch) == (runs.owner, 1, 1)
    assert context.reached == [run.run_id]
    assert (stored.status, stored.owner) == (RunStatus.RUNNING, runs.owner)
    assert stored.started_at is not None
    assert [(m.role, m.content) for m in messages] == [("user", "hello")]  # type: ignore[union-attr]


async def test_a_run_without_input_starts_without_a_message(tmp_path: Path) -> None:
    context = Context()
    runs = _manager(tmp_path, context, own=True)
    async with _running(runs) as store:
        session = await new_session(store)
        await runs.start_run(a_run(session.session_id), MultitaskPolicy.REJECT)
        await context.reaching(1)
        assert await store.get_messages(session.session_id) == []


async def test_a_sub_agent_is_reserved_only_under_its_parents_claim_here(
    tmp_path: Path,
) -> None:
    context = Context()
    runs = _manager(tmp_path, context)  # an API process: its own top-level runs are ready
    async with _running(runs) as store:
        ours = await owned_run(store, runs.owner)
        theirs = await owned_run(store, "elsewhere")
        gone = await owned_run(store, runs.owner)

        async def child(parent: Run) -> Run:
            session = await new_session(store)
            run = a_run(session.session_id, parent_run_id=parent.run_id)
            return await runs.start_run(run, MultitaskPolicy.REJECT)

        parents = [Runner(ours, **_quiet), Runner(theirs, **_quiet)]  # theirs: taken over
        for parent in parents:
            runs._registry.add(parent)
        spawned = await child(ours)
        with pytest.raises(LeaseLostError) as taken_over:
            await child(theirs)
        with pytest.raises(LeaseLostError) as not_here:
            await child(gone)  # not executing here
        await context.reaching(1)
        stored = await _get(store, spawned.run_id)
        children = {
            parent.run_id: len(await store.list_runs(parent_run_id=parent.run_id))
            for parent in (theirs, gone)
        }
        for parent in parents:  # stand-ins for runs executing here: nothing ends them
            runs._registry.remove(parent)
    assert (spawned.owner, spawned.epoch) == (runs.owner, 1)
    assert (stored.status, stored.owner) == (RunStatus.RUNNING, runs.owner)
    assert context.reached == [spawned.run_id]
    assert (taken_over.value.run_id, not_here.value.run_id) == (theirs.run_id, gone.run_id)
    assert children == {theirs.run_id: 0, gone.run_id: 0}


_quiet: dict[str, Any] = {
    "persist": lambda _, __: None,
    "fan_out_session": lambda _: None,
    "queue_size": 8,
}


# What a launched runner is given


async def test_a_launched_runner_holds_its_lease_queue_size_and_name(tmp_path: Path) -> None:
    context = Context()
    runs = _manager(tmp_path, context, lease_seconds=40, subscriber_queue_size=7)
    async with _running(runs) as store:
        run = await owned_run(store, runs.owner)
        session_follower = Subscription(8)
        runs._registry.add_session_subscriber(run.session_id, session_follower)
        before = time.monotonic()
        runner = runs.launch(run)
        after = time.monotonic()
        assert runs._registry.get(run.run_id) is runner
        assert runner.task is not None and runner.task.get_name() == f"culm-run-{run.run_id}"
        assert before + 40 <= runner.lease_until <= after + 40
        shows = runner.may_show_early()  # its lease holds by more than a quarter
        runner.lease_until = time.monotonic() + 9  # under a quarter lease left
        shows_late = runner.may_show_early()
        subscription = runner.attach(0)
        await context.reaching(1)
        # Its events reach its session's followers here too (once stored: its first).
        shown = await asyncio.wait_for(session_follower.next_batch(), 10)
    assert (shows, shows_late) == (True, False)
    assert subscription is not None and subscription._maxsize == 7
    assert [(event.type, event.run_id) for event in shown] == [("execution_started", run.run_id)]


async def test_a_launched_runs_writes_are_fenced_on_its_claim(tmp_path: Path) -> None:
    # Launched here under a claim the store does not hold (another owner's): its first event
    # (execution_started) is refused, and the run ends here writing nothing.
    runs = _manager(tmp_path)
    async with _running(runs) as store:
        run = await owned_run(store, "elsewhere")
        runner = runs.launch(run)
        await _ended(runner)
        events = await store.read_events(run.run_id)
        stored = await _get(store, run.run_id)
    assert runs.counters.fenced_writes == 1
    assert events == []
    assert (stored.status, stored.owner) == (RunStatus.RUNNING, "elsewhere")


async def test_a_run_launched_while_stopping_is_cancelled_by_the_stop(tmp_path: Path) -> None:
    runs = _manager(tmp_path)
    async with _running(runs) as store:
        run = await owned_run(store, runs.owner)
        runs._closing = True  # as when a claim ends while the stop takes its list of runners
        runner = runs.launch(run)
        await _ended(runner)
        ends = await _events(store, run.run_id)
    assert runner.cancel_reason == "shutdown"
    assert ends == [("cancelled", "shutdown")]


async def test_a_cancel_notice_that_came_while_claiming_is_applied_once_unless_expired(
    tmp_path: Path,
) -> None:
    context = Context()
    runs = _manager(tmp_path, context)
    async with _running(runs) as store:
        noticed = await owned_run(store, runs.owner)
        expired = await owned_run(store, runs.owner)
        runs._cancel_requested({noticed.run_id: "stop that"})  # not here yet: kept
        runs._early_cancels[expired.run_id] = ("too late", time.monotonic() - 1)
        cancelled = runs.launch(noticed)
        running = runs.launch(expired)
        await _ended(cancelled)
        await context.reaching(1)
        ends = await _events(store, noticed.run_id)
        left = dict(runs._early_cancels)
        reasons = (cancelled.cancel_reason, running.cancel_reason)
    assert reasons == ("stop that", None)
    assert ends == [("cancelled", "stop that")]
    assert context.reached == [expired.run_id]
    assert left == {}


async def test_a_run_cancelled_from_outside_before_its_first_step_is_still_ended(
    tmp_path: Path,
) -> None:
    context = Context()
    runs = _manager(tmp_path, context)
    async with _running(runs) as store:
        run = await owned_run(store, runs.owner)
        runner = runs.launch(run)
        assert runner.task is not None
        runner.task.cancel()  # not the engine's cancel: it never runs a line
        await _ended(runner)
        stored = await _get(store, run.run_id)
        ends = await _events(store, run.run_id)
    assert context.reached == []
    assert ends == [("cancelled", "cancelled")]
    assert stored.status is RunStatus.CANCELLED
    assert runs._registry.get(run.run_id) is None


# A cancel while the store starts the run


async def test_a_run_the_store_ended_while_starting_it_writes_nothing_more(
    tmp_path: Path,
) -> None:
    context = Context()
    runs = _manager(tmp_path, context, own=True)
    async with _running(runs) as store:
        session = await new_session(store)
        store.gated = True
        run = await runs.start_run(a_run(session.session_id), MultitaskPolicy.REJECT)
        runner = runs._registry.get(run.run_id)
        assert runner is not None
        await asyncio.wait_for(store.entered.wait(), 10)
        # Another process's cancel: the store's flag, then its notice here.
        await store.request_cancel(run.run_id, "by a person")
        runs._cancel_requested({run.run_id: "by a person"})
        store.gate.set()
        await _ended(runner)
        ends = await _events(store, run.run_id)
        stored = await _get(store, run.run_id)
    assert runner.ended_in_store
    assert ends == [("cancelled", "by a person")]  # the store's, and no second one
    assert runs.counters.fenced_writes == 0
    assert (stored.status, context.reached) == (RunStatus.CANCELLED, [])


async def test_a_run_taken_from_this_process_while_starting_ends_writing_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="culm.runtime.manager")
    runs = _manager(tmp_path, own=True)
    async with _running(runs) as store:
        session = await new_session(store)
        store.gated = True
        run = await runs.start_run(a_run(session.session_id), MultitaskPolicy.REJECT)
        runner = runs._registry.get(run.run_id)
        assert runner is not None
        await asyncio.wait_for(store.entered.wait(), 10)
        await store.release_runs(runs.owner, {run.run_id: 1}, clean=True)  # not ours now
        runner.request_cancel("by a person")
        store.gate.set()
        await _ended(runner)
        stored = await _get(store, run.run_id)
    assert runner.cancel_reason == manager._LEASE_LOST
    assert runs.counters.fenced_writes == 0
    assert (stored.status, stored.owner) == (RunStatus.PENDING, None)
    assert f"lease lost: the run ends here, writing nothing run_id={run.run_id}" in caplog.messages


# Waiting for a run (virtual clock: the store and the bus are stand-ins)


class Statuses:
    """What ``wait`` reads of a store: run ``"r"``, running until ``ends_at`` on the loop's
    clock, then completed. Records the time of each read; fails past 200 reads (a waiter
    that reads the store in a loop)."""

    def __init__(self, ends_at: float) -> None:
        self.ends_at = ends_at
        self.reads: list[float] = []

    async def get_run(self, run_id: str) -> Run | None:
        now = asyncio.get_running_loop().time()
        self.reads.append(round(now, 2))
        assert len(self.reads) <= 200, "the waiter reads the store in a loop"
        if run_id != "r":
            return None
        status = RunStatus.COMPLETED if now >= self.ends_at else RunStatus.RUNNING
        return Run(run_id="r", session_id="s", model="m", status=status)


class Crossing(LocalBus):
    """A bus that carries other processes' events, in the state the test sets; records the
    runs it is asked to follow."""

    def __init__(self, state: BusState = "ok") -> None:
        super().__init__()
        self._now: BusState = state
        self.followed: list[str] = []

    @property
    def crosses_processes(self) -> bool:
        return True

    @property
    def state(self) -> BusState:
        return self._now

    def switch(self, state: BusState) -> None:
        self._now = state
        self._state_changed()

    @contextlib.asynccontextmanager
    async def follow(self, topic: Topic) -> AsyncIterator[None]:
        self.followed.append(topic.id)
        yield


def _waiting(home: Path, store: Statuses, bus: EventBus | None = None) -> RunManager:
    return RunManager(
        store=store,  # type: ignore[arg-type]
        registry=RunnerRegistry(),
        batcher=EventBatcher(store, publish=lambda _: None, linger=1, max_batch=1),  # type: ignore[arg-type]
        settings=settings(home),
        context_factory=Context(),
        bus=bus,
    )


def _wait(runs: RunManager, *steps: tuple[float, Callable[[], object]]) -> tuple[float, Run]:
    """``runs.wait("r")`` with ``steps`` (loop time, action) on the way; the time it returned
    at and what it returned."""

    async def main() -> tuple[float, Run]:
        loop = asyncio.get_running_loop()
        for at, step in steps:
            loop.call_later(at, step)
        async with asyncio.timeout(100):
            run = await runs.wait("r")
        return round(loop.time(), 2), run

    return run_virtual(main())


def _terminal_on(bus: EventBus) -> Callable[[], None]:
    end = Complete(usage=Usage(), final_message="ok")
    return lambda: bus.publish([end.stamped(seq=3, run_id="r", session_id="s", ts=utc_now())])


def test_without_a_bus_across_processes_a_waiter_reads_the_store_every_quarter_second(
    tmp_path: Path,
) -> None:
    store = Statuses(ends_at=1.0)
    at, run = _wait(_waiting(tmp_path, store))
    assert (at, run.status) == (1.0, RunStatus.COMPLETED)
    assert store.reads == [0, 0.25, 0.5, 0.75, 1.0]


def test_a_waiter_follows_the_runs_end_on_the_bus_then_reads_backing_off_to_two_seconds(
    tmp_path: Path,
) -> None:
    store, bus = Statuses(ends_at=12.0), Crossing()
    runs = _waiting(tmp_path, store, bus)
    at, run = _wait(runs, (3, _terminal_on(bus)))
    assert (at, run.status) == (13.54, RunStatus.COMPLETED)
    # Every 2 s (a safety net) until its terminal event passes at 3 s; then its status
    # follows: read at once, then 20 ms later, doubling up to 2 s.
    reads = [0, 2, 3, 3.02, 3.06, 3.14, 3.3, 3.62, 4.26, 5.54, 7.54, 9.54, 11.54, 13.54]
    assert store.reads == reads
    assert bus.followed == ["r"]


def test_a_waiter_on_a_degraded_bus_reads_the_store_then_follows_once_the_bus_is_back(
    tmp_path: Path,
) -> None:
    store, bus = Statuses(ends_at=100.0), Crossing("degraded")
    runs = _waiting(tmp_path, store, bus)
    followed_early: list[list[str]] = []
    at, _ = _wait(
        runs,
        (0.5, lambda: followed_early.append(list(bus.followed))),
        (0.6, lambda: bus.switch("ok")),
        (3.0, _terminal_on(bus)),
        (3.1, lambda: setattr(store, "ends_at", 3.1)),
    )
    assert followed_early == [[]]  # not while degraded: it would wait on an unreachable bus
    assert bus.followed == ["r"]
    # Every 0.25 s, woken when the bus is back (read, then read again following it), the
    # safety net's 2 s, woken by the terminal event at 3 s, then 20 ms later, doubling.
    assert store.reads == [0, 0.25, 0.5, 0.6, 0.6, 2.6, 3.0, 3.02, 3.06, 3.14]
    assert at == 3.14


def test_a_waiter_waits_on_a_run_executing_here_without_reading_the_store(
    tmp_path: Path,
) -> None:
    store = Statuses(ends_at=5.0)
    runs = _waiting(tmp_path, store)
    runner = Runner(Run(run_id="r", session_id="s", model="m"), **_quiet)
    runs._registry.add(runner)
    at, run = _wait(runs, (5, _ending(runs, runner)))
    assert (at, run.status, store.reads) == (5.0, RunStatus.COMPLETED, [5.0])


def test_a_waiter_on_a_run_claimed_here_meanwhile_waits_on_it_instead_of_the_store(
    tmp_path: Path,
) -> None:
    store = Statuses(ends_at=10.0)
    runs = _waiting(tmp_path, store)
    runner = Runner(Run(run_id="r", session_id="s", model="m"), **_quiet)
    at, _ = _wait(runs, (1.1, lambda: runs._registry.add(runner)), (10, _ending(runs, runner)))
    assert (at, store.reads) == (10.0, [0, 0.25, 0.5, 0.75, 1.0, 10.0])


def _ending(runs: RunManager, runner: Runner) -> Callable[[], None]:
    def end() -> None:
        runs._registry.remove(runner)
        runner.done.set()

    return end


def test_waiting_for_a_run_that_does_not_exist_raises(tmp_path: Path) -> None:
    runs = _waiting(tmp_path, Statuses(ends_at=0))

    async def main() -> None:
        await runs.wait("nope")

    with pytest.raises(NotFoundError) as missing:
        run_virtual(main())
    assert str(missing.value) == "run 'nope' not found"
