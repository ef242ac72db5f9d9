"""The run manager alone, without an engine: which attempt a lost lease or a refused write
cancels, which leases the heartbeat renews, how a cancel notice that arrives before its run is
kept, what outcome and terminal event a cancel gives; its stop and its retries of a failing
``finish_run`` on the virtual clock; hand-back, cancel and tree-wait against a real SQLite
store (how often a waiter reads the store: test_waiter). The engine tests (test_engine_runs,
test_cancel_*, test_lease, ...) drive the same code end to end; these pin the numbers and the
edges they cannot see."""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from pathlib import Path
from typing import Any

import pytest

from culm.domain.events import Cancelled, Complete, Error, RunEvent, Token
from culm.domain.models import Run, RunStatus, Usage
from culm.domain.time import utc_now
from culm.errors import NotFoundError, StorageUnavailableError
from culm.loop.context import LoopState
from culm.runtime import manager
from culm.runtime.batcher import EventBatcher
from culm.runtime.manager import Outcome, RunManager
from culm.runtime.registry import RunnerRegistry
from culm.runtime.runner import Runner
from culm.runtime.subscription import Subscription
from culm.storage.sql import SqlStore
from tests.clock import run_virtual
from tests.storage.queue_support import owned_run, ready_run, stamp
from tests.support import settings

# SQLite only: most tests never open the store; the few that do check the manager's decisions,
# which do not depend on the backend (the store's own tests run on both).
pytestmark = pytest.mark.backends("sqlite")


class FailingFinish(SqlStore):
    """The real store (never opened) whose ``finish_run`` fails ``failures`` times, then
    succeeds; records the loop's time of each call. ``stall``: real seconds each failure
    takes (a timeout, say)."""

    def __init__(self, url: str, failures: int = 0, stall: float = 0) -> None:
        super().__init__(url)
        self.failures = failures
        self.stall = stall
        self.calls: list[tuple[float, str, Any]] = []

    async def finish_run(self, run_id: str, **fields: Any) -> None:
        self.calls.append((asyncio.get_running_loop().time(), run_id, fields))
        if len(self.calls) <= self.failures:
            time.sleep(self.stall)
            raise StorageUnavailableError("disk full")


def _manager(home: Path, failures: int = 0, stall: float = 0, **overrides: Any) -> RunManager:
    store = FailingFinish(f"sqlite+aiosqlite:///{home / 'culm.db'}", failures, stall)
    batcher = EventBatcher(store, publish=lambda _: None, linger=10, max_batch=100)

    async def no_context(*_: Any) -> Any:
        raise AssertionError("no run executes here")

    return RunManager(
        store=store,
        registry=RunnerRegistry(),
        batcher=batcher,
        settings=settings(home, **overrides),
        context_factory=no_context,
    )


def _runner(run_id: str = "r", epoch: int = 1, run: Run | None = None) -> Runner:
    run = run or Run(run_id=run_id, session_id=f"s-{run_id}", model="m", epoch=epoch)
    return Runner(run, persist=lambda _, __: None, fan_out_session=lambda _: None, queue_size=8)


def _added(runs: RunManager, *runners: Runner) -> None:
    for runner in runners:
        runs._registry.add(runner)


# Lost leases, refused writes, a failing store


def test_a_lost_lease_cancels_the_attempt_it_names_and_no_other(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="culm.runtime.manager")
    runs = _manager(tmp_path)
    current, other = _runner("r", epoch=3), _runner("o", epoch=1)
    _added(runs, current, other)
    runs.lease_lost([("r", 2), ("gone", 1)])  # an earlier attempt; a run not here
    assert [current.cancel_reason, other.cancel_reason] == [None, None]
    runs.lease_lost([("gone", 1), ("r", 3)])  # the one it names, after one it skips
    assert [current.cancel_reason, other.cancel_reason] == [manager._LEASE_LOST, None]
    runs.lease_lost([("r", 3)])  # told twice: cancelled (and logged) once
    assert caplog.messages == ["lease lost: cancelling the run here run_id=r"]


def test_a_lost_lease_without_an_epoch_cancels_whatever_attempt_runs_here(
    tmp_path: Path,
) -> None:
    runs = _manager(tmp_path)
    runner = _runner("r", epoch=7)
    _added(runs, runner)
    runs.lease_lost([("r", None)])
    assert runner.cancel_reason == manager._LEASE_LOST


def test_refused_writes_are_counted_per_attempt_and_cancel_those_attempts(
    tmp_path: Path,
) -> None:
    runs = _manager(tmp_path)
    first, second = _runner("a"), _runner("b")
    _added(runs, first, second)
    runs.rejected({("a", 1), ("b", 1), ("gone", 4)})
    assert runs.counters.fenced_writes == 3
    assert first.cancel_reason == second.cancel_reason == manager._LEASE_LOST
    runs.rejected({("a", 1)})
    assert runs.counters.fenced_writes == 4


def test_a_failing_store_ends_each_run_in_error_with_the_stores_message(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="culm.runtime.manager")
    runs = _manager(tmp_path)
    failing, ending = _runner("a"), _runner("b")
    ending.request_cancel("by a person")  # already ending: keeps its own reason and no error
    _added(runs, failing, ending)
    runs.storage_unavailable({"a", "b", "gone"}, OSError("disk full"))
    assert (failing.cancel_reason, failing.storage_error) == (manager._STORAGE, "disk full")
    assert (ending.cancel_reason, ending.storage_error) == ("by a person", None)
    assert caplog.messages == ["ending a run: the store keeps failing run_id=a"]
    outcome = manager._requested(failing)
    assert outcome == Outcome(
        RunStatus.ERROR,
        error="the store kept failing: disk full",
        code="storage_unavailable",
    )


# Leases the heartbeat renews


def test_a_renewal_extends_only_the_attempt_it_renewed_and_never_shortens(
    tmp_path: Path,
) -> None:
    runs = _manager(tmp_path)
    renewed, later, other = _runner("a", epoch=1), _runner("b", epoch=2), _runner("c")
    _added(runs, renewed, later, other)
    renewed.lease_until = later.lease_until = other.lease_until = 100.0
    runs._renewed({"a": 1, "b": 1}, 150.0)  # "b" is renewed for an earlier attempt
    assert (renewed.lease_until, later.lease_until, other.lease_until) == (150.0, 100.0, 100.0)
    runs._renewed({"a": 1}, 120.0)  # an older renewal answered late
    assert renewed.lease_until == 150.0


def test_the_heartbeat_renews_every_run_but_one_stuck_finalizing_past_the_retry_window(
    tmp_path: Path,
) -> None:
    runs = _manager(tmp_path, storage_retry_window=30)
    running, finalizing, stuck = _runner("a", epoch=1), _runner("b", epoch=2), _runner("c")
    _added(runs, running, finalizing, stuck)
    now = time.monotonic()
    finalizing.finalizing_since = now - 20  # within the window: its end may still be stored
    stuck.finalizing_since = now - 40
    assert runs._fences() == {"a": 1, "b": 2}


def test_the_heartbeat_reaches_the_runs_through_the_lease_holder(tmp_path: Path) -> None:
    runs = _manager(tmp_path)
    lost, cancelled, renewed = _runner("a", epoch=1), _runner("b", epoch=2), _runner("c")
    _added(runs, lost, cancelled, renewed)
    renewed.lease_until = 5.0
    holder = runs.lease_holder()
    assert holder.fences() == {"a": 1, "b": 2, "c": 1}
    assert holder.active_runs() == 3
    assert holder.store_failing_for() == 0.0
    holder.lost([("a", 1)])
    holder.cancel_requested({"b": "from another process"})
    holder.renewed({"c": 1}, 50.0)
    assert (lost.cancel_reason, cancelled.cancel_reason) == (
        manager._LEASE_LOST,
        "from another process",
    )
    assert renewed.lease_until == 50.0
    # Events the store wrote for a waiting run (its input timed out): to the observers and,
    # with no bus across processes (the default, in-process one), to this process's followers.
    observed: list[list[RunEvent]] = []
    runs._registry.observers.append(lambda events: observed.append(list(events)))
    follower = Subscription(8)
    runs._registry.add_remote_subscriber("waiting", follower)
    event = Token(content="x").stamped(seq=4, run_id="waiting", session_id="s", ts=utc_now())
    holder.stored_events([event])
    assert observed == [[event]]
    assert list(follower._items) == [event]


def test_events_show_early_only_while_the_lease_holds_by_a_quarter_lease(tmp_path: Path) -> None:
    runs = _manager(tmp_path, lease_seconds=40)
    runner = _runner()
    now = time.monotonic()
    shows = {}
    for left in (100, 11, 9, -1):  # seconds the lease still holds; a quarter lease is 10 s
        runner.lease_until = now + left
        shows[left] = runs._may_show_early(runner)
    assert shows == {100: True, 11: True, 9: False, -1: False}


# Cancel notices from other processes


def test_a_cancel_notice_for_a_run_not_here_is_kept_for_one_lease(tmp_path: Path) -> None:
    runs = _manager(tmp_path, lease_seconds=30)
    here = _runner("here")
    _added(runs, here)
    before = time.monotonic()
    runs._cancel_requested({"here": "stop it", "claiming": "stop that"})
    after = time.monotonic()
    assert here.cancel_reason == "stop it"
    assert set(runs._early_cancels) == {"claiming"}
    reason, expiry = runs._early_cancels["claiming"]
    assert reason == "stop that" and before + 30 <= expiry <= after + 30


def test_expired_cancel_notices_are_dropped_at_the_next_notice(tmp_path: Path) -> None:
    runs = _manager(tmp_path)
    now = time.monotonic()
    runs._early_cancels = {"old": ("x", now - 1), "fresh": ("y", now + 1000)}
    runs._cancel_requested({})
    assert runs._early_cancels == {"fresh": ("y", now + 1000)}


def test_a_stop_cancels_or_hands_back_by_the_shutdown_policy(tmp_path: Path) -> None:
    assert _manager(tmp_path)._stop_reason == "shutdown"
    recover = _manager(tmp_path, shutdown_policy="recover")
    assert recover._stop_reason == manager._RELEASE


# Outcomes and terminal events


def test_the_outcome_of_a_cancel_names_its_reason() -> None:
    runner = _runner()
    assert manager._requested(runner) == Outcome(RunStatus.CANCELLED, reason="cancelled")
    runner.request_cancel("by a person")
    assert manager._requested(runner) == Outcome(RunStatus.CANCELLED, reason="by a person")
    storage = _runner()
    storage.request_cancel(manager._STORAGE)  # without the store's message
    assert manager._requested(storage).error == "the store kept failing: unavailable"


def test_an_outcome_defaults_to_no_message_no_error_and_no_wait() -> None:
    outcome = Outcome(RunStatus.COMPLETED)
    assert (outcome.final_message, outcome.error, outcome.code, outcome.reason) == (
        "",
        None,
        None,
        None,
    )
    assert outcome.wait is None and outcome.input_timeout is None


def test_each_outcome_gives_its_terminal_event() -> None:
    usage = Usage(prompt_tokens=3, completion_tokens=4, total_tokens=7)
    state = LoopState(messages=[], usage=usage)
    done = manager._terminal_event(Outcome(RunStatus.COMPLETED, final_message="hi"), state)
    assert done == Complete(usage=usage, final_message="hi")
    cancelled = manager._terminal_event(Outcome(RunStatus.CANCELLED, reason="why"), state)
    assert cancelled == Cancelled(reason="why")
    assert manager._terminal_event(Outcome(RunStatus.CANCELLED), state) == Cancelled(
        reason="cancelled"
    )
    failed = Outcome(RunStatus.ERROR, error="boom", code="model_error")
    assert manager._terminal_event(failed, state) == Error(message="boom", code="model_error")
    assert manager._terminal_event(Outcome(RunStatus.ERROR), state) == Error(
        message="error", code="error"
    )


def test_a_finished_task_is_forgotten_and_its_error_taken() -> None:
    # An error nobody retrieved is logged when its task is collected ("Task exception was never
    # retrieved"): the manager's own tasks (whose awaiter may be gone) must not leave one.
    unretrieved: list[dict[str, Any]] = []

    async def fail() -> None:
        raise RuntimeError("seen by its awaiter, if any")

    async def main() -> set[asyncio.Task[Any]]:
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda _, context: unretrieved.append(context))
        tasks: set[asyncio.Task[Any]] = set()
        for work in (fail(), asyncio.sleep(0), asyncio.sleep(3600)):
            tasks.add(loop.create_task(work))
        for task in tasks:
            task.add_done_callback(manager._forget(tasks))
        del task
        await asyncio.sleep(0.01)
        for sleeping in list(tasks):
            sleeping.cancel()
        del sleeping
        await asyncio.sleep(0)
        gc.collect()
        return tasks

    assert asyncio.run(main()) == set()
    assert unretrieved == []


# Storing a run's end while the store fails; stopping


def _calls(runs: RunManager) -> list[tuple[float, str, Any]]:
    assert isinstance(runs._store, FailingFinish)
    return runs._store.calls


def test_a_failing_finish_is_retried_backing_off_to_a_second(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="culm.runtime.manager")
    runs = _manager(tmp_path, failures=7, storage_retry_window=3600)
    runner = _runner("r", epoch=4)
    usage = Usage(prompt_tokens=1, completion_tokens=2, total_tokens=3)
    outcome = Outcome(RunStatus.ERROR, error="boom")
    run_virtual(runs._finish_run(runner, outcome, LoopState(messages=[], usage=usage)))
    calls = _calls(runs)
    assert [round(at, 2) for at, _, _ in calls] == [0, 0.05, 0.15, 0.35, 0.75, 1.55, 2.55, 3.55]
    fence = (runs.owner, 4)
    assert {(run_id, repr(fields)) for _, run_id, fields in calls} == {
        ("r", repr({"fence": fence, "status": RunStatus.ERROR, "error": "boom", "usage": usage}))
    }
    assert caplog.messages == 7 * ["storing a run's end failed; retrying run_id=r error=disk full"]


def test_a_finish_failing_past_the_retry_window_raises(tmp_path: Path) -> None:
    # The first attempt takes longer than the window: it is not retried.
    runs = _manager(tmp_path, failures=100, stall=0.002, storage_retry_window=0.001)
    with pytest.raises(StorageUnavailableError):
        run_virtual(
            runs._finish_run(_runner(), Outcome(RunStatus.COMPLETED), LoopState(messages=[]))
        )
    assert len(_calls(runs)) == 1


def test_a_stop_that_gives_up_on_the_store_ends_the_retries(tmp_path: Path) -> None:
    runs = _manager(tmp_path, failures=100, storage_retry_window=3600)

    async def main() -> float:
        loop = asyncio.get_running_loop()
        loop.call_later(2.6, runs._give_up.set)  # during the wait after the 7th attempt
        with pytest.raises(StorageUnavailableError):
            await runs._finish_run(_runner(), Outcome(RunStatus.COMPLETED), LoopState(messages=[]))
        return loop.time()

    assert run_virtual(main()) == 2.6  # retried at once, failed, and not retried again
    assert len(_calls(runs)) == 8


def _ending_at(runner: Runner, at: float, runs: RunManager) -> None:
    """``runner`` ends ``at`` seconds into the loop (as its finalizing would end it)."""

    def end() -> None:
        runs._registry.remove(runner)
        runner.done.set()

    asyncio.get_running_loop().call_later(at, end)


def test_a_stop_waits_half_its_timeout_for_the_runs_then_stops_waiting_for_the_store(
    tmp_path: Path,
) -> None:
    runs = _manager(tmp_path, shutdown_timeout=10)

    async def main(end: float) -> tuple[float, list[bool]]:
        loop = asyncio.get_running_loop()
        runner = _runner()
        _added(runs, runner)
        _ending_at(runner, end, runs)
        gave_up: list[bool] = []
        for at in (4.9, 5.1):
            loop.call_later(at, lambda: gave_up.append(runs._give_up.is_set()))
        await runs._until_done([runner])
        return loop.time(), gave_up

    assert run_virtual(main(3)) == (3, [])
    assert not runs._give_up.is_set()
    assert run_virtual(main(8)) == (8, [False, True])  # gave up at 5 s, still waited for it


def test_a_stop_lets_runs_end_within_the_grace_then_cancels_the_rest(tmp_path: Path) -> None:
    runs = _manager(tmp_path, shutdown_grace=5)
    quick, slow = _runner("quick"), _runner("slow")

    async def main() -> list[tuple[str | None, str | None]]:
        loop = asyncio.get_running_loop()
        _added(runs, quick, slow)
        _ending_at(quick, 2, runs)
        _ending_at(slow, 7, runs)  # cancelled at 5 s, it takes 2 s to end
        finishing = runs._owned(asyncio.sleep(9))  # a run's finalizing, say
        seen: list[tuple[str | None, str | None]] = []
        for at in (4.9, 5.1):
            loop.call_later(at, lambda: seen.append((quick.cancel_reason, slow.cancel_reason)))
        await runs.aclose()
        assert finishing.done() and loop.time() == 9
        return seen

    assert run_virtual(main()) == [(None, None), (None, "shutdown")]
    assert runs.closing


def test_a_grace_under_a_second_is_still_waited_for(tmp_path: Path) -> None:
    runs = _manager(tmp_path, shutdown_grace=0.5)
    runner = _runner()

    async def main() -> float:
        _added(runs, runner)
        _ending_at(runner, 0.3, runs)
        await runs.aclose()
        return asyncio.get_running_loop().time()

    assert run_virtual(main()) == 0.3
    assert runner.cancel_reason is None


def test_a_stop_outlives_a_finalizing_that_fails(tmp_path: Path) -> None:
    # Its error was logged where it happened; the stop waits for the rest and does not raise.
    runs = _manager(tmp_path)

    async def fail() -> None:
        await asyncio.sleep(1)
        raise RuntimeError("finishing failed")

    async def main() -> float:
        runs._owned(fail())
        later = runs._owned(asyncio.sleep(2))
        await runs.aclose()
        assert later.done()
        return asyncio.get_running_loop().time()

    assert run_virtual(main()) == 2


# Handing a run back at a stop


async def test_a_stop_hands_back_a_run_unless_the_store_refused_its_events(
    tmp_path: Path,
) -> None:
    # A run whose events the store refused (here a seq stored twice) may have shown clients
    # events that are not stored: it is left to its lease (recovery then goes on after its
    # reserved seqs) instead of being handed back as if everything it showed were stored.
    runs = _manager(tmp_path, shutdown_policy="recover")
    store, batcher = runs._store, runs._batcher
    assert isinstance(store, SqlStore)
    await store.start()
    batcher.start()
    try:
        kept = await owned_run(store, runs.owner)
        refused = await owned_run(store, runs.owner)
        for run in (kept, refused):
            token = stamp(run, [Token(content="x")])[0]
            batcher.add(token, fence=(runs.owner, run.epoch))
            await batcher.flush()
        batcher.add(token, fence=(runs.owner, refused.epoch))  # the same seq again
        await batcher.flush()
        assert batcher.isolated(refused.run_id, refused.epoch)
        for run in (kept, refused):
            await runs._release(_runner(run=run))
        handed_back = await store.get_run(kept.run_id)
        left = await store.get_run(refused.run_id)
    finally:
        await batcher.aclose()
        await store.aclose()
    assert handed_back is not None and left is not None
    assert (handed_back.status, handed_back.owner, handed_back.attempt) == (
        RunStatus.PENDING,
        None,
        2,
    )
    assert (left.status, left.owner, left.attempt) == (RunStatus.RUNNING, runs.owner, 1)


# Waiting for a tree of runs


async def test_a_child_still_active_once_its_parent_ended_is_cancelled_with_the_trees_reason(
    tmp_path: Path,
) -> None:
    # Reserved while its parent was being cancelled, a sub-agent run can outlive the parent:
    # waiting for the tree cancels it (here a ready one, which the store ends at once).
    runs = _manager(tmp_path)
    store = runs._store
    await store.start()
    try:
        parent = await ready_run(store)
        await store.request_cancel(parent.run_id, "by a person")
        done = await ready_run(store, parent_run_id=parent.run_id)
        await store.request_cancel(done.run_id, "ended before")
        active = await ready_run(store, parent_run_id=parent.run_id)
        below = await ready_run(store, parent_run_id=active.run_id)  # a grandchild
        async with asyncio.timeout(10):
            assert (await runs.wait_tree(parent.run_id, reason="parent cancelled")) == (
                await store.get_run(parent.run_id)
            )
        ends = {}
        for run in (done, active, below):
            end = (await store.read_events(run.run_id))[-1]
            ends[run.run_id] = (end.type, getattr(end, "reason", None))
    finally:
        await store.aclose()
    assert ends == {
        done.run_id: ("cancelled", "ended before"),
        active.run_id: ("cancelled", "parent cancelled"),
        below.run_id: ("cancelled", "parent cancelled"),
    }


# Cancelling a run that executes elsewhere


async def test_a_cancel_reaches_the_owner_of_a_run_that_executes_elsewhere(
    tmp_path: Path,
) -> None:
    runs = _manager(tmp_path)
    store = runs._store
    notices: list[tuple[str, str]] = []
    runs.bus.on_cancel("elsewhere", lambda run_id, reason: notices.append((run_id, reason)))
    await store.start()
    try:
        active = await owned_run(store, "elsewhere")
        ready = await ready_run(store)  # nobody's yet: the store ends it, nobody is told
        flagged = await runs.cancel(active.run_id, reason="by a person")
        ended = await runs.cancel(ready.run_id, reason="by a person")
        with pytest.raises(NotFoundError) as missing:
            await runs.cancel("nobody", reason="by a person")
    finally:
        await store.aclose()
    assert notices == [(active.run_id, "by a person")]
    assert (flagged.status, ended.status) == (RunStatus.RUNNING, RunStatus.CANCELLED)
    assert str(missing.value) == "run 'nobody' not found"


async def test_a_cancel_of_a_run_executing_here_goes_no_further_than_its_runner(
    tmp_path: Path,
) -> None:
    # Cancelled here (even twice), or already ending here: neither the store's flag nor a
    # notice on the bus; the caller gets the run as stored.
    runs = _manager(tmp_path)
    store = runs._store
    notices: list[tuple[str, str]] = []
    runs.bus.on_cancel(runs.owner, lambda run_id, reason: notices.append((run_id, reason)))
    await store.start()
    try:
        running = _runner(run=await owned_run(store, runs.owner))
        ending = _runner(run=await owned_run(store, runs.owner))
        ending.finalizing = True
        ending.done.set()
        _added(runs, running, ending)
        async with asyncio.timeout(10):
            answers = [
                await runs.cancel(running.run_id, reason="by a person"),
                await runs.cancel(running.run_id, reason="again"),
                await runs.cancel(ending.run_id, reason="by a person"),
            ]
    finally:
        await store.aclose()
    assert [run.status for run in answers] == 3 * [RunStatus.RUNNING]
    assert (running.cancel_reason, ending.cancel_reason) == ("by a person", None)
    assert notices == []
