"""The schedule store on each backend: claims by compare-and-set, the (schedule_id,
scheduled_for) key, taking waiting fires, and recording ends into the schedule's state."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from culm.domain.time import new_id
from culm.scheduler.models import FireStatus, OverlapPolicy, Schedule
from culm.scheduler.policy import Fire
from culm.scheduler.schema import schedule_runs
from culm.scheduler.store import ScheduleStore
from culm.storage.sql import SqlStore

NOW = datetime(2026, 11, 23, 9, 0, 5, tzinfo=UTC)
NINE = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)


@pytest.fixture(params=["sqlite", "postgres"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'culm.db'}"
    value: str = request.getfixturevalue("postgres_url")
    return value


@pytest.fixture
async def stores(url: str) -> AsyncIterator[tuple[ScheduleStore, ScheduleStore]]:
    """Two stores on one database, as two processes would have."""
    first, second = SqlStore(url), SqlStore(url)
    await first.start()
    await second.start()
    try:
        yield ScheduleStore(first), ScheduleStore(second)
    finally:
        await first.aclose()
        await second.aclose()


def a_schedule(**fields: object) -> Schedule:
    values: dict[str, object] = {
        "schedule_id": new_id(),
        "name": "s",
        "trigger": {"type": "cron", "expr": "0 * * * *"},
        "run_config": {"message": "go"},
        "created_at": NINE - timedelta(hours=1),
        "updated_at": NINE - timedelta(hours=1),
        "anchor_at": NINE - timedelta(hours=1),
        "next_fire_at": NINE,
    }
    return Schedule.model_validate(values | fields)


def queue_it(busy: int) -> list[Fire]:
    return [Fire(NINE, FireStatus.QUEUED)]


async def test_concurrent_claims_of_one_time_have_one_winner(
    stores: tuple[ScheduleStore, ScheduleStore],
) -> None:
    first, second = stores
    schedule = a_schedule()
    await first.create(schedule)
    results = await asyncio.gather(
        *(
            store.claim(schedule, next_fire_at=NINE + timedelta(hours=1), now=NOW, decide=queue_it)
            for store in (first, second, first, second)
        )
    )
    assert sum(result is not None for result in results) == 1
    [fire] = await first.fires(schedule.schedule_id)
    assert (fire.scheduled_for, fire.status) == (NINE, FireStatus.QUEUED)
    assert (await first.get(schedule.schedule_id)).next_fire_at == NINE + timedelta(hours=1)  # type: ignore[union-attr]
    # A look that saw the old next_fire_at claims nothing.
    again = await second.claim(schedule, next_fire_at=None, now=NOW, decide=queue_it)
    assert again is None


async def test_a_paused_schedule_cannot_be_claimed(
    stores: tuple[ScheduleStore, ScheduleStore],
) -> None:
    store, _ = stores
    schedule = a_schedule()
    await store.create(schedule)
    await store.update(schedule.schedule_id, {"enabled": False})
    assert await store.claim(schedule, next_fire_at=None, now=NOW, decide=queue_it) is None


async def test_the_key_refuses_a_second_record_for_a_time(
    stores: tuple[ScheduleStore, ScheduleStore], url: str
) -> None:
    store, _ = stores
    schedule = a_schedule()
    await store.create(schedule)
    await store.claim(schedule, next_fire_at=None, now=NOW, decide=queue_it)
    sql = SqlStore(url)
    await sql.start()
    try:
        insert = schedule_runs.insert().values(
            schedule_id=schedule.schedule_id,
            scheduled_for=NINE,
            status="queued",
            manual=False,
            created_at=NOW,
        )
        with pytest.raises(sa.exc.IntegrityError):
            await sql.write(lambda conn: conn.execute(insert))
    finally:
        await sql.aclose()


async def test_a_waiting_fire_is_taken_by_one_taker(
    stores: tuple[ScheduleStore, ScheduleStore],
) -> None:
    first, second = stores
    schedule = a_schedule(overlap_policy="allow")
    await first.create(schedule)
    for minute in range(3):
        await first.add_manual_fire(
            schedule.schedule_id, NOW + timedelta(minutes=minute), OverlapPolicy.ALLOW
        )
    taken = await asyncio.gather(
        first.start_waiting(schedule.schedule_id, OverlapPolicy.ALLOW, NOW),
        second.start_waiting(schedule.schedule_id, OverlapPolicy.ALLOW, NOW),
    )
    times = [fire.scheduled_for for batch in taken for fire in batch]
    assert sorted(times) == [NOW + timedelta(minutes=m) for m in range(3)]


async def test_one_at_a_time_policies_start_the_oldest_only_when_none_runs(
    stores: tuple[ScheduleStore, ScheduleStore],
) -> None:
    store, _ = stores
    schedule = a_schedule()
    await store.create(schedule)
    first = await store.add_manual_fire(schedule.schedule_id, NOW, OverlapPolicy.QUEUE_ONE)
    second = await store.add_manual_fire(
        schedule.schedule_id, NOW + timedelta(seconds=1), OverlapPolicy.QUEUE_ONE
    )
    third = await store.add_manual_fire(
        schedule.schedule_id, NOW + timedelta(seconds=2), OverlapPolicy.QUEUE_ONE
    )
    assert [f.status for f in (first, second, third)] == ["queued", "queued", "skipped"]
    [started] = await store.start_waiting(schedule.schedule_id, OverlapPolicy.QUEUE_ONE, NOW)
    assert started.scheduled_for == NOW
    assert await store.start_waiting(schedule.schedule_id, OverlapPolicy.QUEUE_ONE, NOW) == []
    await store.attach_run(schedule.schedule_id, NOW, "run-1")
    assert await store.finish(
        schedule.schedule_id, NOW, FireStatus.FAILED, completed_at=NOW, error="boom"
    )
    assert not await store.finish(  # already ended: recorded once
        schedule.schedule_id, NOW, FireStatus.SUCCESS, completed_at=NOW
    )
    state = await store.get(schedule.schedule_id)
    assert state is not None
    assert (state.consecutive_failures, state.last_error, state.last_failure_at) == (1, "boom", NOW)
    [next_one] = await store.start_waiting(schedule.schedule_id, OverlapPolicy.QUEUE_ONE, NOW)
    assert next_one.scheduled_for == NOW + timedelta(seconds=1)
