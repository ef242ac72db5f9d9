"""The dispatcher's edges on SQLite: the back-off from runs whose launch failed (on a clock the
test moves), a worker filled while it claims, a full worker whose runs end unannounced, and
what it logs when the store fails it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from culm.domain.models import Run, RunStatus
from culm.runtime import dispatch
from culm.runtime.dispatch import Dispatcher, WorkerCounters
from culm.storage.sql import SqlStore
from tests.runtime.launches import Launches
from tests.storage.queue_support import ready_run

# SQLite only: the dispatcher's own logic, whatever the store (test_dispatch.py: PostgreSQL).
pytestmark = [pytest.mark.timeout(60), pytest.mark.backends("sqlite")]


class _Clock:
    """The dispatcher's ``time``: a monotonic clock the test sets (the event loop keeps its own)."""

    def __init__(self) -> None:
        self.now = 100.0

    def monotonic(self) -> float:
        return self.now


class _Store(SqlStore):
    """SQLite, with counted claims and store calls a test may make fail."""

    claims = 0
    others_per_claim = 0  # sub-agents started while each claim is awaited
    launches: Launches | None = None
    failing: frozenset[str] = frozenset()

    async def claim_runs(self, *args: Any, **kwargs: Any) -> list[Run]:
        self.claims += 1
        if "claim_runs" in self.failing:
            raise ConnectionError("the database is gone")
        claimed = await super().claim_runs(*args, **kwargs)
        if self.launches is not None:
            self.launches.others += self.others_per_claim
        return claimed

    async def release_runs(self, *args: Any, **kwargs: Any) -> list[str]:
        if "release_runs" in self.failing:
            raise ConnectionError("the database is gone")
        return await super().release_runs(*args, **kwargs)

    async def append_events(self, *args: Any, **kwargs: Any) -> set[str]:
        if "append_events" in self.failing:
            raise ConnectionError("the database is gone")
        return await super().append_events(*args, **kwargs)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[_Store]:
    store = _Store(f"sqlite+aiosqlite:///{tmp_path / 'd.db'}")
    await store.start()
    try:
        yield store
    finally:
        await store.aclose()


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Iterator[_Clock]:
    clock = _Clock()
    monkeypatch.setattr(dispatch, "time", clock)
    yield clock


def _dispatcher(
    store: SqlStore, launches: Launches, *, concurrency: int = 4, poll: float = 3600
) -> Dispatcher:
    return Dispatcher(
        store,
        owner="w1",
        concurrency=concurrency,
        lease_seconds=60,
        poll_seconds=poll,
        active=launches.active,
        held=set,
        launch=launches.launch,
        counters=WorkerCounters(),
    )


async def _epochs(store: SqlStore, runs: list[Run]) -> list[int]:
    stored = [await store.get_run(run.run_id) for run in runs]
    return [run.epoch for run in stored if run is not None]


def _logged(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "culm.runtime.dispatch"]


async def test_each_failing_run_is_left_alone_one_second_then_two_then_ended(
    store: _Store, clock: _Clock
) -> None:
    # Two runs whose launch always fails, in one claim: each counts its own failures.
    runs = [await ready_run(store), await ready_run(store)]
    dispatcher = _dispatcher(store, Launches(failing={run.run_id for run in runs}))
    await dispatcher.claim()  # at 100 s: the first failure each (claimed, handed back)
    assert await _epochs(store, runs) == [2, 2]
    # Each step: the time, then each run's epoch after a claim then (+2: claimed and handed back).
    for now, epochs in ((100.999, [2, 2]), (101.0, [4, 4]), (102.999, [4, 4])):
        clock.now = now
        await dispatcher.claim()
        assert await _epochs(store, runs) == epochs, f"at {now} s"
    clock.now = 103.0
    await dispatcher.claim()  # the third failure each: ended in error
    for run in runs:
        ended = await store.get_run(run.run_id)
        assert ended is not None and (ended.status, ended.owner) == (RunStatus.ERROR, None)
    assert dispatcher._launch_failures == {}, "nothing kept of the runs it ended"


async def test_a_run_launched_after_a_failure_counts_its_later_failures_afresh(
    store: _Store, clock: _Clock
) -> None:
    run = await ready_run(store)
    launches = Launches(failing={run.run_id})
    dispatcher = _dispatcher(store, launches)
    await dispatcher.claim()  # a failure at 100 s
    launches.failing.clear()
    clock.now = 101.0
    await dispatcher.claim()
    [launched] = launches.launched
    # Lost, then ready again (as a sweep re-queues it); now its launch fails again.
    assert await store.release_runs("w1", {run.run_id: launched.epoch}, clean=False)
    launches.launched.clear()
    launches.failing.add(run.run_id)
    clock.now = 102.0
    await dispatcher.claim()
    assert await _epochs(store, [run]) == [6]
    clock.now = 103.0  # one second on: its first failure since the launch, not its second
    await dispatcher.claim()
    assert await _epochs(store, [run]) == [8]


async def test_a_worker_full_by_the_time_it_claims_runs_no_claim_and_claims_again(
    store: _Store,
) -> None:
    run = await ready_run(store)
    launches = Launches()
    answers = iter([0, 1])  # free as it looks, full (a sub-agent started) once it may claim
    dispatcher = Dispatcher(
        store,
        owner="w1",
        concurrency=1,
        lease_seconds=60,
        poll_seconds=3600,
        active=lambda: next(answers),
        held=set,
        launch=launches.launch,
        counters=WorkerCounters(),
    )
    assert await dispatcher.claim() is True, "a run ends soon: not a wait for a wake-up"
    assert store.claims == 0
    left = await store.get_run(run.run_id)
    assert left is not None and left.owner is None


async def test_runs_claimed_while_sub_agents_filled_every_place_are_all_handed_back(
    store: _Store,
) -> None:
    runs = [await ready_run(store), await ready_run(store)]
    store.launches = launches = Launches()
    store.others_per_claim = 2  # both places taken by sub-agents while the claim is awaited
    again = await _dispatcher(store, launches, concurrency=2).claim()
    assert launches.launched == [] and again is False
    for run in runs:
        back = await store.get_run(run.run_id)
        assert back is not None
        assert (back.status, back.owner, back.epoch) == (RunStatus.PENDING, None, 2)


async def test_a_full_worker_whose_run_ends_unannounced_looks_again_at_the_poll(
    store: _Store, caplog: pytest.LogCaptureFixture
) -> None:
    launches = Launches()
    launches.others = 1
    dispatcher = _dispatcher(store, launches, concurrency=1, poll=0.05)
    claiming = asyncio.create_task(dispatcher.claim())
    await asyncio.sleep(0)
    launches.others = 0  # ended, but nobody called `freed`
    async with asyncio.timeout(10):
        assert await claiming is True
    assert _logged(caplog) == []


async def test_a_claim_for_a_run_just_reserved_that_fails_is_logged_not_raised(
    store: _Store, caplog: pytest.LogCaptureFixture
) -> None:
    store.failing = frozenset({"claim_runs"})
    await _dispatcher(store, Launches()).claim_now()
    assert store.claims == 1
    assert _logged(caplog) == ["claiming a run just reserved failed; the dispatcher retries"]


async def test_a_hand_back_that_fails_is_logged_and_leaves_the_run_to_its_lease(
    store: _Store, clock: _Clock, caplog: pytest.LogCaptureFixture
) -> None:
    run = await ready_run(store)
    store.failing = frozenset({"release_runs"})
    await _dispatcher(store, Launches(failing={run.run_id})).claim()
    left = await store.get_run(run.run_id)
    assert left is not None and (left.owner, left.epoch) == ("w1", 1)
    assert _logged(caplog) == [
        f"launching a claimed run failed run_id={run.run_id}",
        "handing back claimed runs failed; their leases run out runs=1",
    ]


async def test_a_run_that_cannot_be_ended_in_error_is_logged_and_left_to_its_lease(
    store: _Store, clock: _Clock, caplog: pytest.LogCaptureFixture
) -> None:
    run = await ready_run(store)
    dispatcher = _dispatcher(store, Launches(failing={run.run_id}))
    for now in (100.0, 101.0):
        clock.now = now
        await dispatcher.claim()
    store.failing = frozenset({"append_events"})
    clock.now = 103.0
    await dispatcher.claim()
    left = await store.get_run(run.run_id)
    assert left is not None and (left.status, left.owner) != (RunStatus.ERROR, None)
    assert left.owner == "w1"
    assert await store.read_events(run.run_id) == []
    assert _logged(caplog)[-2:] == [
        f"launching a claimed run failed run_id={run.run_id}",
        f"ending a run that cannot be launched failed run_id={run.run_id}",
    ]


async def test_the_loop_runs_as_one_named_task_until_closed(store: _Store) -> None:
    def loops() -> list[asyncio.Task[Any]]:
        return [t for t in asyncio.all_tasks() if t.get_name() == "culm-dispatcher"]

    dispatcher = _dispatcher(store, Launches())
    dispatcher.start()
    assert len(loops()) == 1
    await dispatcher.aclose()
    assert loops() == []


def test_a_full_worker_waits_twice_the_stagger_and_no_longer_past_full() -> None:
    launches = Launches()
    store: Any = None
    dispatcher = Dispatcher(
        store,
        owner="w1",
        concurrency=1,
        lease_seconds=60,
        poll_seconds=3600,
        active=launches.active,
        held=set,
        launch=launches.launch,
        counters=WorkerCounters(),
        peers=lambda: ("w1", "w2"),
    )
    hint = "run-0"  # w2's turn: crc32("run-0") is odd
    assert dispatcher.stagger([hint]) == pytest.approx(0.05)
    launches.others = 1  # its one place taken
    assert dispatcher.stagger([hint]) == pytest.approx(0.1)
    launches.others = 3  # sub-agents past its concurrency
    assert dispatcher.stagger([hint]) == pytest.approx(0.1)
