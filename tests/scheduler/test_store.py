"""The schedule store on each backend: claims by compare-and-set, the (schedule_id,
scheduled_for) key, taking waiting fires, and recording ends into the schedule's state."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from culm.domain.models import RunStatus, Session
from culm.domain.time import new_id
from culm.errors import NotFoundError
from culm.scheduler.models import FireStatus, OverlapPolicy, Schedule
from culm.scheduler.policy import Fire
from culm.scheduler.schema import schedule_runs
from culm.scheduler.store import DELETED_RUN, STOPPED_DISPATCH, Ended, ScheduleStore
from culm.storage.schema import runs
from culm.storage.sql import SqlStore

NOW = datetime(2026, 11, 23, 9, 0, 5, tzinfo=UTC)
NINE = datetime(2026, 11, 23, 9, 0, tzinfo=UTC)


@pytest.fixture(params=["sqlite", "postgres"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'culm.db'}"
    value: str = request.getfixturevalue("postgres_head_url")
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


# Edges found by mutation testing (docs/testing.md, "Mutation testing")


async def test_schedules_are_listed_newest_first_up_to_the_limit(
    stores: tuple[ScheduleStore, ScheduleStore],
) -> None:
    store, _ = stores
    made = [a_schedule(created_at=NINE + timedelta(minutes=m)) for m in (2, 0, 1)]
    for schedule in made:
        await store.create(schedule)
    listed = await store.list_schedules()
    assert [s.created_at for s in listed] == [NINE + timedelta(minutes=m) for m in (2, 1, 0)]
    assert [s.schedule_id for s in await store.list_schedules(limit=2)] == [
        s.schedule_id for s in listed[:2]
    ]


async def test_due_lists_enabled_schedules_at_or_before_now_most_overdue_first(
    stores: tuple[ScheduleStore, ScheduleStore],
) -> None:
    store, _ = stores
    late = a_schedule(next_fire_at=NOW - timedelta(minutes=5))
    on_time = a_schedule(next_fire_at=NOW)
    later = a_schedule(next_fire_at=NOW - timedelta(minutes=1))
    future = a_schedule(next_fire_at=NOW + timedelta(microseconds=1))
    paused = a_schedule(next_fire_at=NOW - timedelta(hours=1), enabled=False)
    never = a_schedule(next_fire_at=None)
    for schedule in (on_time, future, late, paused, later, never):
        await store.create(schedule)
    due = await store.due(NOW)
    assert [s.schedule_id for s in due] == [x.schedule_id for x in (late, later, on_time)]
    assert [s.schedule_id for s in await store.due(NOW, limit=1)] == [late.schedule_id]


async def test_update_and_delete_of_a_missing_schedule(
    stores: tuple[ScheduleStore, ScheduleStore],
) -> None:
    store, _ = stores
    assert await store.update("missing", {"enabled": False}) is None
    assert await store.delete("missing") is False
    schedule = a_schedule()
    await store.create(schedule)
    updated = await store.update(schedule.schedule_id, {"name": "renamed"})
    assert updated is not None and updated.name == "renamed"
    await store.add_manual_fire(schedule.schedule_id, NOW, OverlapPolicy.ALLOW)
    assert await store.delete(schedule.schedule_id) is True
    assert await store.get(schedule.schedule_id) is None
    assert await store.fires(schedule.schedule_id) == []
    assert await store.waiting_schedules() == []


async def test_a_run_now_at_a_taken_time_takes_the_next_free_microsecond(
    stores: tuple[ScheduleStore, ScheduleStore],
) -> None:
    store, _ = stores
    schedule = a_schedule()
    await store.create(schedule)
    times = [
        (await store.add_manual_fire(schedule.schedule_id, NOW, OverlapPolicy.ALLOW)).scheduled_for
        for _ in range(3)
    ]
    assert times == [NOW + timedelta(microseconds=us) for us in range(3)]
    fires = await store.fires(schedule.schedule_id)
    assert [f.scheduled_for for f in fires] == times[::-1]  # latest first
    assert all(f.manual and f.status is FireStatus.QUEUED for f in fires)
    assert [f.scheduled_for for f in await store.fires(schedule.schedule_id, limit=1)] == [
        times[-1]
    ]
    with pytest.raises(NotFoundError):
        await store.add_manual_fire("missing", NOW, OverlapPolicy.ALLOW)


async def test_a_skipped_run_now_is_final_at_once(
    stores: tuple[ScheduleStore, ScheduleStore],
) -> None:
    store, _ = stores
    schedule = a_schedule()
    await store.create(schedule)
    await store.add_manual_fire(schedule.schedule_id, NOW, OverlapPolicy.SKIP)
    skipped = await store.add_manual_fire(schedule.schedule_id, NINE, OverlapPolicy.SKIP)
    assert (skipped.status, skipped.completed_at) == (FireStatus.SKIPPED, NINE)
    queued = await store.get_fire(schedule.schedule_id, NOW)
    assert queued is not None and queued.completed_at is None
    assert await store.get_fire(schedule.schedule_id, NOW + timedelta(hours=1)) is None
    assert await store.waiting_schedules() == [schedule.schedule_id]


async def test_a_started_fire_put_back_waits_again_and_a_run_attaches_while_running_only(
    stores: tuple[ScheduleStore, ScheduleStore],
) -> None:
    store, _ = stores
    schedule = a_schedule()
    await store.create(schedule)
    await store.add_manual_fire(schedule.schedule_id, NOW, OverlapPolicy.ALLOW)
    await store.attach_run(schedule.schedule_id, NOW, "too-early")  # still queued: ignored
    started_at = NOW + timedelta(seconds=3)
    [started] = await store.start_waiting(schedule.schedule_id, OverlapPolicy.ALLOW, started_at)
    assert (started.status, started.started_at, started.run_id) == (
        FireStatus.RUNNING,
        started_at,
        None,
    )
    assert started.dispatch_lag_ms == 3000
    await store.put_back(schedule.schedule_id, NOW)
    back = await store.get_fire(schedule.schedule_id, NOW)
    assert back is not None
    assert (back.status, back.started_at, back.run_id) == (FireStatus.QUEUED, None, None)
    assert await store.waiting_schedules() == [schedule.schedule_id]
    [again] = await store.start_waiting(schedule.schedule_id, OverlapPolicy.ALLOW, NOW)
    await store.attach_run(schedule.schedule_id, NOW, "run-1")
    await store.put_back(schedule.schedule_id, NOW)  # it has a run now: stays running
    fire = await store.get_fire(schedule.schedule_id, NOW)
    assert fire is not None and (fire.status, fire.run_id) == (FireStatus.RUNNING, "run-1")


async def test_ends_fold_into_the_schedules_state(
    stores: tuple[ScheduleStore, ScheduleStore],
) -> None:
    store, _ = stores
    schedule = a_schedule()
    await store.create(schedule)
    sid = schedule.schedule_id
    outcomes = [
        (FireStatus.FAILED, "one"),
        (FireStatus.FAILED, "two"),
        (FireStatus.CANCELLED, None),
        (FireStatus.SUCCESS, None),
    ]
    states = []
    for minute, (status, error) in enumerate(outcomes):
        at = NOW + timedelta(minutes=minute)
        await store.add_manual_fire(sid, at, OverlapPolicy.ALLOW)
        await store.start_waiting(sid, OverlapPolicy.ALLOW, at)
        done = at + timedelta(seconds=30)
        assert await store.finish(sid, at, status, completed_at=done, error=error)
        fire = await store.get_fire(sid, at)
        assert fire is not None and (fire.status, fire.completed_at, fire.error) == (
            status,
            done,
            error,
        )
        state = await store.get(sid)
        assert state is not None
        states.append(
            (
                state.consecutive_failures,
                state.last_error,
                state.last_failure_at,
                state.last_success_at,
            )
        )
    first_failure = NOW + timedelta(seconds=30)
    second_failure = NOW + timedelta(minutes=1, seconds=30)
    assert states == [
        (1, "one", first_failure, None),
        (2, "two", second_failure, None),
        (2, "two", second_failure, None),  # a cancel changes nothing
        (0, "two", second_failure, NOW + timedelta(minutes=3, seconds=30)),
    ]


async def test_deleting_a_schedule_keeps_the_fires_of_the_others(
    stores: tuple[ScheduleStore, ScheduleStore],
) -> None:
    store, _ = stores
    gone, kept = a_schedule(), a_schedule()
    for schedule in (gone, kept):
        await store.create(schedule)
        await store.add_manual_fire(schedule.schedule_id, NOW, OverlapPolicy.ALLOW)
    assert await store.delete(gone.schedule_id)
    assert await store.fires(gone.schedule_id) == []
    assert [f.scheduled_for for f in await store.fires(kept.schedule_id)] == [NOW]


async def test_a_claim_decides_on_the_schedules_own_busy_fires_and_records_clock_fires(
    stores: tuple[ScheduleStore, ScheduleStore],
) -> None:
    store, _ = stores
    schedule, other = a_schedule(), a_schedule()
    for each in (schedule, other):
        await store.create(each)
    for minute in range(2):  # two waiting fires of its own, one of another schedule
        at = NINE - timedelta(minutes=minute + 1)
        await store.add_manual_fire(schedule.schedule_id, at, OverlapPolicy.ALLOW)
    await store.add_manual_fire(other.schedule_id, NINE, OverlapPolicy.ALLOW)
    seen: list[int] = []

    def decide(busy: int) -> list[Fire]:
        seen.append(busy)
        return [Fire(NINE, FireStatus.QUEUED)]

    fires = await store.claim(schedule, next_fire_at=None, now=NOW, decide=decide)
    assert fires == [Fire(NINE, FireStatus.QUEUED)]
    assert seen == [2]
    fire = await store.get_fire(schedule.schedule_id, NINE)
    assert fire is not None and not fire.manual
    assert fire.schedule_id == schedule.schedule_id  # the other one has a fire at NINE too


async def test_has_work_while_a_schedule_is_due_or_a_fire_waits_or_runs(
    stores: tuple[ScheduleStore, ScheduleStore],
) -> None:
    store, other = stores
    assert not await store.has_work(NOW)  # an empty database
    schedule = a_schedule(next_fire_at=NOW + timedelta(seconds=1))
    await store.create(schedule)
    assert not await store.has_work(NOW)  # due a second later
    assert await store.has_work(NOW + timedelta(seconds=1))  # due at that very instant
    paused = schedule.schedule_id
    await store.update(paused, {"enabled": False})
    assert not await store.has_work(NOW + timedelta(hours=1))  # a paused schedule is never due
    await store.add_manual_fire(paused, NOW, OverlapPolicy.ALLOW)
    assert await other.has_work(NOW)  # a fire waiting to start (seen from the other process)
    [fire] = await store.start_waiting(paused, OverlapPolicy.ALLOW, NOW)
    assert await store.has_work(NOW)  # running: its end is still to be recorded
    await store.finish(paused, fire.scheduled_for, FireStatus.SUCCESS, completed_at=NOW)
    assert not await store.has_work(NOW)  # ended and recorded: nothing left


async def _add_run(sql: SqlStore, session_id: str, status: RunStatus, **fields: object) -> str:
    run_id = new_id()
    row = {
        "run_id": run_id,
        "session_id": session_id,
        "status": status.value,
        "created_at": NINE,
        "model": "scripted:demo",
        "trigger": "schedule",
    }

    def transaction(conn: sa.Connection) -> None:
        conn.execute(runs.insert().values(**(row | fields)))

    await sql.write(transaction)
    return run_id


async def _running_fire(store: ScheduleStore, sid: str, at: datetime, run_id: str | None) -> None:
    await store.add_manual_fire(sid, at, OverlapPolicy.ALLOW)
    await store.start_waiting(sid, OverlapPolicy.ALLOW, at)
    if run_id is not None:
        await store.attach_run(sid, at, run_id)


async def test_ended_finds_running_fires_whose_run_ended_was_deleted_or_never_came(
    url: str,
) -> None:
    sql = SqlStore(url)
    await sql.start()
    try:
        store = ScheduleStore(sql)
        session = Session(session_id=new_id(), model="scripted:demo", workspace="/w")
        await sql.create_session(session)
        schedule = a_schedule()
        await store.create(schedule)
        sid, done = schedule.schedule_id, NOW + timedelta(minutes=30)
        ended = {
            RunStatus.COMPLETED: (FireStatus.SUCCESS, None),
            RunStatus.ERROR: (FireStatus.FAILED, "boom"),
            RunStatus.CANCELLED: (FireStatus.CANCELLED, "stopped"),
        }
        times = [NOW + timedelta(minutes=minute) for minute in range(9)]
        for at, (status, (_, error)) in zip(times[:3], ended.items(), strict=True):
            run_id = await _add_run(sql, session.session_id, status, completed_at=done, error=error)
            await _running_fire(store, sid, at, run_id)
        alive = await _add_run(sql, session.session_id, RunStatus.RUNNING)
        await _running_fire(store, sid, times[3], alive)  # its run goes on: not over
        await _running_fire(store, sid, times[4], "deleted-run")
        await _running_fire(store, sid, times[5], None)  # started at times[5]: stale
        await _running_fire(store, sid, times[6], None)  # started at the stale mark: not yet
        recorded = await _add_run(sql, session.session_id, RunStatus.COMPLETED, completed_at=done)
        await _running_fire(store, sid, times[7], recorded)  # its end is recorded already
        assert await store.finish(sid, times[7], FireStatus.SUCCESS, completed_at=done)
        await _running_fire(store, sid, times[8], "also-deleted")
        assert await store.finish(sid, times[8], FireStatus.CANCELLED, completed_at=done)
        gave_up = NINE - timedelta(hours=2)  # ended without a run: recorded, not stalled
        await _running_fire(store, sid, gave_up, None)
        assert await store.finish(sid, gave_up, FireStatus.FAILED, completed_at=done)
        await store.add_manual_fire(sid, times[0] - timedelta(hours=1), OverlapPolicy.ALLOW)

        found = await store.ended(stale_before=times[6])

        expected = [
            Ended(sid, at, fire_status, done, error)
            for at, (fire_status, error) in zip(times[:3], ended.values(), strict=True)
        ]
        expected.append(Ended(sid, times[4], FireStatus.CANCELLED, None, DELETED_RUN))
        expected.append(Ended(sid, times[5], FireStatus.FAILED, None, STOPPED_DISPATCH))
        assert sorted(found, key=lambda e: e.scheduled_for) == expected
    finally:
        await sql.aclose()


async def test_a_once_schedule_keeps_its_time_and_a_run_now_of_a_missing_one_names_it(
    stores: tuple[ScheduleStore, ScheduleStore],
) -> None:
    store, _ = stores
    once = a_schedule(trigger={"type": "once", "at": NINE.isoformat()})
    await store.create(once)  # a datetime in the trigger: stored as JSON text
    assert await store.get(once.schedule_id) == once
    with pytest.raises(NotFoundError) as refused:
        await store.add_manual_fire("missing", NOW, OverlapPolicy.ALLOW)
    assert (refused.value.kind, refused.value.ident) == ("schedule", "missing")


async def test_a_fire_is_written_under_its_own_schedule_only(
    stores: tuple[ScheduleStore, ScheduleStore],
) -> None:
    store, _ = stores
    mine, other = a_schedule(), a_schedule()
    for schedule in (mine, other):
        await store.create(schedule)
        await store.add_manual_fire(schedule.schedule_id, NOW, OverlapPolicy.ALLOW)
        await store.start_waiting(schedule.schedule_id, OverlapPolicy.ALLOW, NOW)
    await store.attach_run(mine.schedule_id, NOW, "run-1")
    assert await store.finish(mine.schedule_id, NOW, FireStatus.SUCCESS, completed_at=NOW)
    untouched = await store.get_fire(other.schedule_id, NOW)
    assert untouched is not None
    assert (untouched.status, untouched.run_id) == (FireStatus.RUNNING, None)


async def test_an_ended_fire_put_back_stays_ended_and_is_not_busy(
    stores: tuple[ScheduleStore, ScheduleStore],
) -> None:
    store, _ = stores
    schedule = a_schedule()
    sid = schedule.schedule_id
    await store.create(schedule)
    at = NINE - timedelta(minutes=1)
    await store.add_manual_fire(sid, at, OverlapPolicy.ALLOW)
    await store.start_waiting(sid, OverlapPolicy.ALLOW, NOW)
    # ended (another process found it stalled) before the dispatcher puts it back
    assert await store.finish(sid, at, FireStatus.FAILED, completed_at=NOW, error="stalled")
    await store.put_back(sid, at)
    fire = await store.get_fire(sid, at)
    assert fire is not None and fire.status == FireStatus.FAILED
    seen: list[int] = []

    def decide(busy: int) -> list[Fire]:
        seen.append(busy)
        return []

    await store.claim(schedule, next_fire_at=None, now=NOW, decide=decide)
    assert seen == [0]  # an ended fire is not busy


async def test_a_claim_leaves_a_run_now_at_the_same_time_as_it_is(
    stores: tuple[ScheduleStore, ScheduleStore],
) -> None:
    store, _ = stores
    schedule = a_schedule()
    await store.create(schedule)
    await store.add_manual_fire(schedule.schedule_id, NINE, OverlapPolicy.ALLOW)
    fires = await store.claim(schedule, next_fire_at=None, now=NOW, decide=queue_it)
    assert fires == [Fire(NINE, FireStatus.QUEUED)]
    [fire] = await store.fires(schedule.schedule_id)
    assert (fire.scheduled_for, fire.manual) == (NINE, True)


async def test_the_oldest_waiting_fire_starts_first_whatever_the_order_of_recording(
    stores: tuple[ScheduleStore, ScheduleStore],
) -> None:
    store, _ = stores
    schedule = a_schedule()
    await store.create(schedule)
    for at in (NOW + timedelta(seconds=1), NOW):
        await store.add_manual_fire(schedule.schedule_id, at, OverlapPolicy.ALLOW)
    [started] = await store.start_waiting(schedule.schedule_id, OverlapPolicy.QUEUE_ONE, NOW)
    assert started.scheduled_for == NOW
