"""The dispatcher of one worker on SQLite: how it drains a backlog of ready runs, and never
holds two attempts of one run."""

from __future__ import annotations

import asyncio
from collections import Counter
from itertools import count
from pathlib import Path
from typing import Any
from zlib import crc32

import pytest

import culm
from culm.domain.models import Run, RunStatus
from culm.runtime import dispatch
from culm.runtime.dispatch import Dispatcher, WorkerCounters
from culm.runtime.registry import RunnerRegistry
from culm.runtime.roles import Role
from culm.runtime.runner import Runner
from culm.storage.base import SweepPolicy, Wakeups
from culm.storage.sql import SqlStore
from tests.runtime.launches import Launches
from tests.storage.queue_support import ready_run
from tests.support import settings

pytestmark = pytest.mark.timeout(60)

QUICK = {"turns": [[{"text": "done"}]]}


def _engine(home: Path, role: Role, **overrides: Any) -> culm.Engine:
    return culm.Engine(settings(home, heartbeat_seconds=0.1, **overrides), role=role)


async def test_a_full_worker_claims_the_backlog_as_its_runs_end_without_waiting_for_the_poll(
    tmp_path: Path,
) -> None:
    # Six ready runs in six sessions, reserved before any worker runs: ending one of them
    # wakes nobody (no session has a queued run), so only the worker's own "a run ended here"
    # can start the next. The safety poll is an hour: without that, the test times out.
    api = _engine(tmp_path, Role.API)
    async with api:
        api.scripts.register("quick", QUICK)
        run_ids = []
        for _ in range(6):
            session = await api.create_session(model="scripted:quick")
            run = await api.start_run(session.session_id, "go")
            run_ids.append(run.run_id)
    worker = _engine(tmp_path, Role.WORKER, worker_concurrency=2, claim_poll_seconds=3600)
    async with worker:
        worker.scripts.register("quick", QUICK)
        for run_id in run_ids:
            done = await worker.wait(run_id, timeout=20)
            assert done.status is culm.RunStatus.COMPLETED
        assert worker.counters.claims == 6


async def test_a_dispatcher_never_claims_a_run_whose_earlier_attempt_it_still_holds(
    tmp_path: Path,
) -> None:
    store = SqlStore(f"sqlite+aiosqlite:///{tmp_path / 'd.db'}")
    await store.start()
    try:
        winding_down = await ready_run(store)  # lost here, re-queued, its runner still ending
        other = await ready_run(store)
        launched: list[Run] = []
        got = asyncio.Event()

        def launch(run: Run) -> None:
            launched.append(run)
            got.set()

        dispatcher = Dispatcher(
            store,
            owner="w1",
            concurrency=4,
            lease_seconds=60,
            poll_seconds=3600,
            active=lambda: len(launched),
            held=lambda: {winding_down.run_id},
            launch=launch,
            counters=WorkerCounters(),
        )
        dispatcher.start()
        async with asyncio.timeout(10):
            await got.wait()
        await dispatcher.aclose()
        assert [run.run_id for run in launched] == [other.run_id]
        left = await store.get_run(winding_down.run_id)
        assert left is not None and left.epoch == 0  # still ready, for another worker
    finally:
        await store.aclose()


def _dispatcher(store: SqlStore, launches: Launches, concurrency: int) -> Dispatcher:
    return Dispatcher(
        store,
        owner="w1",
        concurrency=concurrency,
        lease_seconds=60,
        poll_seconds=3600,
        active=launches.active,
        held=set,
        launch=launches.launch,
        counters=WorkerCounters(),
    )


async def test_a_launch_that_raises_hands_its_run_back_and_launches_the_rest(
    tmp_path: Path,
) -> None:
    store = SqlStore(f"sqlite+aiosqlite:///{tmp_path / 'd.db'}")
    await store.start()
    try:
        made = [await ready_run(store) for _ in range(3)]
        launches = Launches(failing={made[0].run_id})

        await _dispatcher(store, launches, concurrency=4).claim()

        assert launches.ids == [made[1].run_id, made[2].run_id], "the rest still launched"
        back = await store.get_run(made[0].run_id)
        assert back is not None
        assert (back.status, back.attempt, back.epoch) == (RunStatus.PENDING, 1, 2)
        [again] = await store.claim_runs("w2", limit=4, lease_seconds=60)
        assert again.run_id == made[0].run_id, "ready again at once, not after its lease"
    finally:
        await store.aclose()


async def test_a_run_whose_launch_always_fails_ends_in_error_after_a_bounded_number_of_claims(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A hand-back counts no attempt: without a count of its own, a run whose launch always
    fails would be claimed and handed back for good, holding its session."""
    monkeypatch.setattr(dispatch, "LAUNCH_BACKOFF", 0.0)  # claim it back at once, to count
    store = SqlStore(f"sqlite+aiosqlite:///{tmp_path / 'd.db'}")
    await store.start()
    try:
        doomed = await ready_run(store)
        launches = Launches(failing={doomed.run_id})
        dispatcher = _dispatcher(store, launches, concurrency=4)
        counters = WorkerCounters()
        dispatcher._counters = counters

        for _ in range(2 * dispatch.LAUNCH_ATTEMPTS):
            await dispatcher.claim()

        assert counters.claims == dispatch.LAUNCH_ATTEMPTS
        ended = await store.get_run(doomed.run_id)
        assert ended is not None
        assert (ended.status, ended.owner) == (RunStatus.ERROR, None)
        assert ended.error == "the run could not be launched (3 attempts)"
        [event] = await store.read_events(doomed.run_id)
        assert event.type == "error" and event.code == dispatch.LAUNCH_FAILED
        assert event.seq == 1, "right after the last stored event: no gap"
        logged = [r.getMessage() for r in caplog.records if r.name == "culm.runtime.dispatch"]
        assert logged == [f"launching a claimed run failed run_id={doomed.run_id}"] * 3 + [
            f"ended a run that cannot be launched in error run_id={doomed.run_id}"
        ]
    finally:
        await store.aclose()


class _TakenOverAtThirdClaim(SqlStore):
    """A store whose third claim is taken over by worker "w2" (w1 counted dead) right after
    it returns: w1's claim is stale before w1 launches its runs."""

    claims = 0

    async def claim_runs(self, *args: Any, **kwargs: Any) -> list[Run]:
        claimed = await super().claim_runs(*args, **kwargs)
        self.claims += 1
        if self.claims == 3:
            policy = SweepPolicy(requeue=True, max_attempts=3, lease_seconds=10.0)
            await self.sweep("w2", policy, dead_owners=["w1"])
        return claimed


async def test_a_run_taken_over_before_its_last_failed_launch_is_left_to_its_new_owner(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(dispatch, "LAUNCH_BACKOFF", 0.0)
    store = _TakenOverAtThirdClaim(f"sqlite+aiosqlite:///{tmp_path / 'd.db'}")
    await store.start()
    try:
        doomed = await ready_run(store)
        dispatcher = _dispatcher(store, Launches(failing={doomed.run_id}), concurrency=4)
        for _ in range(dispatch.LAUNCH_ATTEMPTS):
            await dispatcher.claim()

        left = await store.get_run(doomed.run_id)
        assert left is not None
        assert (left.status, left.owner) == (RunStatus.PENDING, None), "re-queued by w2"
        assert [event.type for event in await store.read_events(doomed.run_id)] == [
            "run_recovered"
        ], "w1 wrote nothing under its stale claim"
    finally:
        await store.aclose()


class _CountingClaims(SqlStore):
    claims = 0

    async def claim_runs(self, *args: Any, **kwargs: Any) -> list[Run]:
        self.claims += 1
        return await super().claim_runs(*args, **kwargs)


async def test_callers_claiming_at_once_share_the_claims_and_none_claims_after_stop(
    tmp_path: Path,
) -> None:
    store = _CountingClaims(f"sqlite+aiosqlite:///{tmp_path / 'd.db'}")
    await store.start()
    try:
        made = [await ready_run(store) for _ in range(3)]
        launches = Launches()
        dispatcher = _dispatcher(store, launches, concurrency=4)
        # The first claims at once; the second waits for it and claims again (its run may
        # have been reserved after the first began); the third is covered by the second's.
        await asyncio.gather(*(dispatcher.claim_now() for _ in range(3)))
        assert store.claims == 2
        assert sorted(launches.ids) == sorted(run.run_id for run in made)
        await dispatcher.aclose()
        late = await ready_run(store)
        await dispatcher.claim_now()
        assert store.claims == 2, "a stopped dispatcher claims nothing"
        left = await store.get_run(late.run_id)
        assert left is not None and left.owner is None
    finally:
        await store.aclose()


async def test_a_worker_leaves_a_run_whose_launch_failed_to_the_others_for_a_while(
    tmp_path: Path,
) -> None:
    store = SqlStore(f"sqlite+aiosqlite:///{tmp_path / 'd.db'}")
    await store.start()
    try:
        run = await ready_run(store)
        dispatcher = _dispatcher(store, Launches(failing={run.run_id}), concurrency=4)
        await dispatcher.claim()
        await dispatcher.claim()  # at once: not claimed back here

        again = await store.get_run(run.run_id)
        assert again is not None and again.epoch == 2, "claimed once, handed back once"
        [other] = await store.claim_runs("w2", limit=4, lease_seconds=60)
        assert other.run_id == run.run_id
    finally:
        await store.aclose()


class _SubAgentsMeanwhile(SqlStore):
    """A store whose claims take long enough for two sub-agents to start meanwhile."""

    launches: Launches

    async def claim_runs(self, *args: Any, **kwargs: Any) -> list[Run]:
        claimed = await super().claim_runs(*args, **kwargs)
        self.launches.others += 2
        return claimed


async def test_sub_agents_started_during_a_claim_never_push_the_worker_past_its_concurrency(
    tmp_path: Path,
) -> None:
    store = _SubAgentsMeanwhile(f"sqlite+aiosqlite:///{tmp_path / 'd.db'}")
    store.launches = launches = Launches()
    await store.start()
    try:
        made = [await ready_run(store) for _ in range(4)]

        again = await _dispatcher(store, launches, concurrency=3).claim()

        assert launches.ids == [made[0].run_id], "3 places, 2 taken by sub-agents meanwhile"
        assert launches.active() == 3
        assert again is False
        for run in made[1:3]:
            back = await store.get_run(run.run_id)
            assert back is not None
            assert (back.status, back.attempt, back.epoch) == (RunStatus.PENDING, 1, 2)
        claimed = await store.claim_runs("w2", limit=4, lease_seconds=60)
        assert sorted(run.run_id for run in claimed) == sorted(run.run_id for run in made[1:])
    finally:
        await store.aclose()


def _runner(run: Run) -> Runner:
    return Runner(run, persist=lambda _, __: None, fan_out_session=lambda _: None, queue_size=8)


def test_removing_an_ended_attempt_keeps_the_later_attempt_of_its_run() -> None:
    registry = RunnerRegistry()
    old = _runner(Run(run_id="r", session_id="s", model="m", epoch=1))
    new = _runner(Run(run_id="r", session_id="s", model="m", epoch=3))
    registry.add(old)
    registry.add(new)
    registry.remove(old)  # the lost attempt finishes winding down
    assert registry.get("r") is new and registry.for_session("s") is new
    assert registry.run_ids() == {"r"}
    registry.remove(new)
    assert registry.get("r") is None and len(registry) == 0


async def test_a_lost_lease_cancels_only_the_attempt_it_is_about(tmp_path: Path) -> None:
    engine = _engine(tmp_path, Role.EMBEDDED)
    async with engine:
        engine.scripts.register("stuck", {"turns": [[{"text": "working"}, {"delay": 3600}]]})
        run = await engine.run("go", model="scripted:stuck")
        async with asyncio.timeout(10):
            while (runner := engine.registry.get(run.run_id)) is None:
                await asyncio.sleep(0.01)
        assert runner.epoch == 1
        engine.runs.lease_lost([(run.run_id, 0)])  # news about an earlier attempt
        assert runner.cancel_reason is None
        engine.runs.lease_lost([(run.run_id, 1)])
        assert runner.cancel_reason is not None
        async with asyncio.timeout(10):
            await runner.done.wait()


def test_a_wake_up_naming_a_run_is_claimed_at_once_by_one_worker_the_others_later() -> None:
    # The thundering herd: one reservation woke every worker into a claim transaction at once.
    peers = ("w1", "w2", "w3")
    store: Any = None
    launches = Launches()

    def dispatcher(owner: str) -> Dispatcher:
        return Dispatcher(
            store,
            owner=owner,
            concurrency=4,
            lease_seconds=60,
            poll_seconds=3600,
            active=launches.active,
            held=set,
            launch=launches.launch,
            counters=WorkerCounters(),
            peers=lambda: peers,
        )

    workers = [dispatcher(owner) for owner in peers]
    for run_id in (f"run-{i}" for i in range(30)):
        delays = [worker.stagger([run_id]) for worker in workers]
        assert sorted(delays)[:2] == [0.0, 0.05], "one at once, the others 50 ms later"
        assert delays.count(0.0) == 1
    turns = Counter(
        next(w for w in peers if dispatcher(w).stagger([f"r{i}"]) == 0) for i in range(300)
    )
    assert set(turns) == set(peers), "every worker gets turns"
    # Other wake-ups (a promotion, a requeue, a reconnect), none heard, or no peers known:
    # everyone claims at once, as before.
    assert [worker.stagger(["run-1", ""]) for worker in workers] == [0.0] * 3
    assert [worker.stagger([]) for worker in workers] == [0.0] * 3
    peers = ()
    assert [worker.stagger(["run-1"]) for worker in workers] == [0.0] * 3
    # Half full (2 of 4 places here): it waits longer, so an idler one takes what is left.
    peers = ("w1", "w2", "w3")
    launches.others = 2
    later = sorted(worker.stagger(["run-1"]) for worker in workers)[1:]
    assert later == [pytest.approx(0.075)] * 2


class _Wakeups(Wakeups):
    """The store's own wake-ups as a test sets them: ``hints`` named by every wake-up, the
    wake-ups ``lost`` (only the timeout ends a wait) or ``failing`` (the listening connection
    gone), and an ``aclose`` that raises (its connection is gone too)."""

    def __init__(
        self, real: Wakeups, *, hints: list[str], lost: bool = False, failing: bool = False
    ) -> None:
        self._real = real
        self._hints = hints
        self._lost = lost
        self._failing = failing

    async def wait(self, timeout: float) -> bool:
        if self._failing:
            raise ConnectionError("the listening connection is gone")
        if self._lost:
            async with asyncio.timeout(timeout):  # None (no poll): for ever
                await asyncio.Event().wait()
        return await self._real.wait(timeout)

    def take_hints(self) -> list[str]:
        return list(self._hints)

    async def aclose(self) -> None:
        await self._real.aclose()
        raise ConnectionError("already closed")


class _WakeupsStore(SqlStore):
    settings: dict[str, Any]

    def wakeups(self) -> Wakeups:
        return _Wakeups(super().wakeups(), **self.settings)


class _Sleeps(Dispatcher):
    """A dispatcher that records the staggers it sleeps."""

    slept: list[float]

    async def _sleep(self, seconds: float) -> bool:
        self.slept.append(seconds)
        return await super()._sleep(seconds)


async def _launched_once_ready(
    tmp_path: Path, *, peers: tuple[str, ...] = (), poll: float = 3600, **settings: Any
) -> list[float]:
    """Start w1's dispatcher, then reserve a run (its id named by every wake-up when ``peers``
    give the turn to w2), and wait for w1 to launch it. Returns the staggers it slept."""
    store = _WakeupsStore(f"sqlite+aiosqlite:///{tmp_path / 'd.db'}")
    run_id = next(
        f"run-{i}" for i in count() if not peers or peers[crc32(f"run-{i}".encode()) % 2] == "w2"
    )
    store.settings = {"hints": [run_id] if peers else [], **settings}
    await store.start()
    launched = asyncio.Event()
    dispatcher = _Sleeps(
        store,
        owner="w1",
        concurrency=4,
        lease_seconds=60,
        poll_seconds=poll,
        active=lambda: 0,
        held=set,
        launch=lambda run: launched.set(),
        counters=WorkerCounters(),
        peers=lambda: peers,
    )
    dispatcher.slept = []
    try:
        dispatcher.start()
        await asyncio.sleep(0)  # it claimed (nothing), and waits
        await ready_run(store, run_id=run_id)
        async with asyncio.timeout(20):
            await launched.wait()
        await dispatcher.aclose()  # the wake-ups' failing close is not the caller's problem
    finally:
        await store.aclose()
    return dispatcher.slept


async def test_a_worker_whose_turn_a_wake_up_is_not_still_claims_the_run_a_little_later(
    tmp_path: Path,
) -> None:
    # Each wake-up names the run (this store's hints never change): each is staggered.
    assert set(await _launched_once_ready(tmp_path, peers=("w1", "w2"))) == {0.05}


async def test_a_run_whose_wake_up_was_lost_is_claimed_at_the_poll(tmp_path: Path) -> None:
    assert await _launched_once_ready(tmp_path, poll=0.05, lost=True) == [], "no peers: no stagger"


async def test_a_dispatcher_whose_wake_ups_fail_polls_for_runs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    assert await _launched_once_ready(tmp_path, poll=0.05, failing=True) == []
    logged = {r.getMessage() for r in caplog.records if r.name == "culm.runtime.dispatch"}
    assert logged == {"waiting for wake-ups failed error=the listening connection is gone"}


class _FailingClaims(_CountingClaims):
    async def claim_runs(self, *args: Any, **kwargs: Any) -> list[Run]:
        self.claims += 1
        await asyncio.sleep(0)
        raise ConnectionError("the database is gone")


async def test_a_failed_claim_waits_for_a_wake_up_or_the_poll_never_spins(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = _FailingClaims(f"sqlite+aiosqlite:///{tmp_path / 'd.db'}")
    await store.start()
    try:
        dispatcher = _dispatcher(store, Launches(), concurrency=4)
        dispatcher.start()
        async with asyncio.timeout(10):
            while store.claims == 0:
                await asyncio.sleep(0)
        for _ in range(20):
            await asyncio.sleep(0)
        assert store.claims == 1
        assert [r.getMessage() for r in caplog.records if r.name == "culm.runtime.dispatch"] == [
            "claiming runs failed; retrying at the next poll"
        ]
        await dispatcher.aclose()
    finally:
        await store.aclose()
