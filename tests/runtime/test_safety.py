"""The safety check behind the bus (``culm.runtime.safety``), against a real store.

A run followed through the bus gets one store read per interval, shared by its followers; only a
follower the bus left silent for a whole interval while the store is ahead of it (or the run is
over, or gone) is woken. The bus here is the in-process one with a state the test sets, so the
check's interval (``ok``) and poll (``degraded``) can be told apart without a clock: the one not
in use is an hour.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

import culm
from culm.bus.base import BusState
from culm.bus.local import LocalBus
from culm.domain.models import Run
from culm.errors import StorageUnavailableError
from culm.runtime.safety import Follower, SafetyChecks
from culm.runtime.subscription import Subscription
from tests.support import settings

pytestmark = pytest.mark.timeout(60)

IDLE = {"turns": [[{"text": "thinking"}, {"delay": 3600}, {"text": "done"}]]}
HOUR = 3600.0


class SettableBus(LocalBus):
    """The in-process bus with a state the test chooses (``ok`` by default)."""

    def __init__(self) -> None:
        super().__init__()
        self._now: BusState = "ok"

    @property
    def state(self) -> BusState:
        return self._now

    def become(self, state: BusState) -> None:
        self._now = state
        self._state_changed()


class Woken(Subscription):
    """A subscription that counts its wake-ups."""

    def __init__(self) -> None:
        super().__init__(maxsize=10)
        self.wakes = 0

    def wake(self) -> None:
        self.wakes += 1
        super().wake()


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[culm.Engine]:
    async with culm.Engine(settings(tmp_path, scheduler=False)) as engine:
        engine.scripts.register("idle", IDLE)
        yield engine


async def _until(condition: Callable[[], bool]) -> None:
    async with asyncio.timeout(30):
        while not condition():
            await asyncio.sleep(0.005)


async def _running(engine: culm.Engine) -> Run:
    """A run that has stored events and goes on for an hour."""
    session = await engine.create_session(model="scripted:idle")
    run_id = (await engine.start_run(session.session_id, "go")).run_id

    async def stored() -> Run:
        while True:
            run = await engine.store.get_run(run_id)
            assert run is not None
            if run.last_seq > 1 and not run.status.is_terminal:
                return run
            await asyncio.sleep(0.01)

    return await asyncio.wait_for(stored(), 30)


def _checks(engine: culm.Engine, bus: SettableBus, *, interval: float, poll: float) -> SafetyChecks:
    return SafetyChecks(engine.store, bus, asyncio.Semaphore(1), interval=interval, poll=poll)


async def test_a_silent_follower_behind_the_store_is_woken_a_moving_or_level_one_is_not(
    engine: culm.Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = await _running(engine)
    checks = _checks(engine, SettableBus(), interval=0.01, poll=HOUR)
    behind = Follower(Woken(), cursor=run.last_seq - 1)
    level = Follower(Woken(), cursor=run.last_seq)
    moving = Follower(Woken(), cursor=-1000)  # far behind, but the bus brings it something
    get_run = engine.store.get_run

    async def moved(run_id: str) -> Run | None:
        moving.cursor += 1  # each interval
        return await get_run(run_id)

    monkeypatch.setattr(engine.store, "get_run", moved)
    with checks.follow(run.run_id, behind), checks.follow(run.run_id, level):
        with checks.follow(run.run_id, moving):
            # The first check only notes each cursor (nobody was silent for an interval yet).
            await _until(lambda: checks.count >= 1)
            assert behind.checked == run.last_seq - 1 and level.checked == run.last_seq
            await _until(lambda: checks.count >= 5)
            assert moving.subscription.wakes == 0  # type: ignore[attr-defined]
            assert moving.checked <= moving.cursor <= moving.checked + 1  # a read may be under way
        assert behind.subscription.wakes >= 1  # type: ignore[attr-defined]
        # Level with a running run: the store has nothing it lacks.
        assert level.subscription.wakes == 0  # type: ignore[attr-defined]
        assert await asyncio.wait_for(behind.subscription.next_batch(), 30) == []


async def test_a_silent_follower_of_an_ended_or_unknown_run_is_woken(engine: culm.Engine) -> None:
    run = await _running(engine)
    await engine.cancel(run.run_id)

    async def ended_run() -> Run:
        while (ended := await engine.store.get_run(run.run_id)) is None or not (
            ended.status.is_terminal
        ):
            await asyncio.sleep(0.01)
        return ended

    ended = await asyncio.wait_for(ended_run(), 30)
    checks = _checks(engine, SettableBus(), interval=0.01, poll=HOUR)
    level = Follower(Woken(), cursor=ended.last_seq)
    lost = Follower(Woken(), cursor=5)
    with checks.follow(run.run_id, level), checks.follow("no-such-run", lost):
        await _until(lambda: level.subscription.wakes >= 1)  # type: ignore[attr-defined]
        await _until(lambda: lost.subscription.wakes >= 1)  # type: ignore[attr-defined]


async def test_one_check_per_run_shared_by_its_followers_ended_by_the_last_to_leave(
    engine: culm.Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = await _running(engine)
    reads: list[str] = []
    get_run = engine.store.get_run

    async def counted(run_id: str) -> Run | None:
        reads.append(run_id)
        return await get_run(run_id)

    monkeypatch.setattr(engine.store, "get_run", counted)
    checks = _checks(engine, SettableBus(), interval=0.01, poll=HOUR)
    first, second = Follower(Woken()), Follower(Woken())
    with checks.follow(run.run_id, first):
        with checks.follow(run.run_id, second):
            await _until(lambda: checks.count >= 10)
        tasks = [t for t in asyncio.all_tasks() if t.get_name() == "bus-safety-check"]
        assert len(tasks) == 1  # one for both, still checking for the one left
        count = checks.count
        await _until(lambda: checks.count >= count + 3)
    await asyncio.sleep(0)  # the cancelled task ends
    assert tasks[0].done()
    assert len(reads) == checks.count  # one read per check, whatever the followers
    # Following it again starts a new check (the old one is not left behind, cancelled).
    again = Follower(Woken())
    with checks.follow(run.run_id, again):
        count = checks.count
        await _until(lambda: checks.count > count)
    assert set(reads) == {run.run_id}


async def test_a_failing_store_is_read_again_at_the_next_interval(
    engine: culm.Engine, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="culm.runtime.safety")
    run = await _running(engine)
    failures: list[Exception] = [
        StorageUnavailableError("database unreachable"),
        RuntimeError("a bug"),
    ]
    get_run = engine.store.get_run

    async def failing(run_id: str) -> Run | None:
        if failures:
            raise failures.pop(0)
        return await get_run(run_id)

    monkeypatch.setattr(engine.store, "get_run", failing)
    checks = _checks(engine, SettableBus(), interval=0.01, poll=HOUR)
    behind = Follower(Woken(), cursor=run.last_seq - 1)
    with checks.follow(run.run_id, behind):
        await _until(lambda: behind.subscription.wakes >= 1)  # type: ignore[attr-defined]
        assert not failures
        assert checks.count >= 2  # the reads that failed are not counted
    logged = [r for r in caplog.records if r.name == "culm.runtime.safety"]
    assert len(logged) == 1  # the bug, not the outage
    assert logged[0].exc_info is not None and "a bug" in str(logged[0].exc_info[1])
    assert logged[0].getMessage() == (
        f"the safety check of a followed run failed run_id={run.run_id}"
    )


async def test_a_degraded_bus_is_polled_and_a_change_of_state_cuts_the_wait_short(
    engine: culm.Engine,
) -> None:
    run = await _running(engine)
    bus = SettableBus()
    checks = _checks(engine, bus, interval=HOUR, poll=0.01)
    follower = Follower(Woken(), cursor=run.last_seq)
    with checks.follow(run.run_id, follower):
        await asyncio.sleep(0.05)
        assert checks.count == 0  # ok: an hour's interval
        bus.become("degraded")  # the change cuts the hour short; then the poll
        await _until(lambda: checks.count >= 5)
        bus.become("ok")
        count = checks.count
        await asyncio.sleep(0.05)
        assert checks.count <= count + 1  # back to the hour (one check may be under way)
