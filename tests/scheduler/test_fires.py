"""Fires through a real engine with a fake clock: on time, DST both ways, every misfire and
overlap policy, and the schedule's state as runs end."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

import culm
from culm.scheduler.models import FireStatus, MisfirePolicy, Schedule
from tests.scheduler.conftest import FakeClock, cron, eventually, new_engine, settled_fires

SUCCESS, FAILED, MISSED = FireStatus.SUCCESS, FireStatus.FAILED, FireStatus.MISSED
SKIPPED, QUEUED, RUNNING = FireStatus.SKIPPED, FireStatus.QUEUED, FireStatus.RUNNING
CANCELLED = FireStatus.CANCELLED


def hourly(**fields: Any) -> dict[str, Any]:
    return cron("0 * * * *", **fields)


async def step_through(
    engine: culm.Engine, clock: FakeClock, until: datetime, step: timedelta
) -> None:
    """Move the clock to ``until`` in steps, looking at the schedules at each."""
    while clock.now < until:
        clock.set(min(clock.now + step, until))
        await engine.schedules.tick()


async def test_an_on_time_fire_runs_once_as_a_scheduled_run(
    engine: culm.Engine, clock: FakeClock
) -> None:
    schedule = await engine.schedules.create(
        cron("0 9 * * 1-5", timezone="Europe/Paris", name="digest")
    )
    # Monday 2026-11-23 08:00 UTC is 09:00 in Paris: the next fire is Tuesday's.
    tuesday = datetime(2026, 11, 24, 8, 0, tzinfo=UTC)
    assert schedule.next_fire_at == tuesday

    await engine.schedules.tick()
    assert await engine.schedules.runs(schedule.schedule_id) == []

    clock.set(tuesday + timedelta(seconds=1, milliseconds=500))
    await engine.schedules.tick()
    await engine.schedules.tick()  # a second look finds nothing more to fire
    [fire] = await settled_fires(engine, schedule.schedule_id, 1)

    assert fire.scheduled_for == tuesday
    assert fire.status is SUCCESS and not fire.manual
    assert fire.dispatch_lag_ms == 1500
    assert fire.run_id is not None
    run = await engine.get_run(fire.run_id)
    assert run.trigger is culm.RunTrigger.SCHEDULE
    assert run.status is culm.RunStatus.COMPLETED
    session = await engine.get_session(run.session_id)
    assert session.metadata["schedule_id"] == schedule.schedule_id
    assert session.metadata["scheduled_for"] == tuesday.isoformat()
    assert [m.content for m in await engine.get_messages(run.session_id)][0] == "tick"

    after = await engine.schedules.get(schedule.schedule_id)
    assert after.next_fire_at == tuesday + timedelta(days=1)
    assert after.last_success_at == run.completed_at
    assert after.consecutive_failures == 0


async def test_each_fire_gets_its_own_session(engine: culm.Engine, clock: FakeClock) -> None:
    schedule = await engine.schedules.create(hourly(overlap_policy="allow"))
    await step_through(engine, clock, clock.now + timedelta(hours=3), timedelta(minutes=30))
    fires = await settled_fires(engine, schedule.schedule_id, 3)
    assert [f.status for f in fires] == [SUCCESS] * 3
    sessions = {(await engine.get_run(fire.run_id or "")).session_id for fire in fires}
    assert len(sessions) == 3


# DST, through the ticker


@pytest.mark.parametrize(
    ("expr", "start", "expected"),
    [
        # Fall back (2026-11-01 02:00 EDT → 01:00 EST): 01:30 comes twice, fires once.
        ("30 1 * * *", datetime(2026, 10, 31, 12, tzinfo=UTC), ["01:30 EDT", "01:30 EST"]),
        # Spring forward (2026-03-08 02:00 EST → 03:00 EDT): 02:30 never comes, fires at 03:00.
        ("30 2 * * *", datetime(2026, 3, 7, 12, tzinfo=UTC), ["03:00 EDT", "02:30 EDT"]),
    ],
    ids=["fall-back", "spring-forward"],
)
async def test_dst_days_fire_exactly_once(
    tmp_path: Path, clock: FakeClock, expr: str, start: datetime, expected: list[str]
) -> None:
    clock.set(start)
    async with new_engine(tmp_path / "home", clock) as engine:
        body = cron(expr, timezone="America/New_York", overlap_policy="allow")
        schedule = await engine.schedules.create(body)
        await step_through(engine, clock, start + timedelta(days=2), timedelta(minutes=10))
        fires = await settled_fires(engine, schedule.schedule_id, 2)
    zone = ZoneInfo("America/New_York")
    assert [f.scheduled_for.astimezone(zone).strftime("%H:%M %Z") for f in fires] == expected
    assert [f.scheduled_for.date() for f in fires] == [
        (start + timedelta(days=1)).date(),
        (start + timedelta(days=2)).date(),
    ]
    assert all(f.status is SUCCESS and f.dispatch_lag_ms is not None for f in fires)
    assert all(0 <= (f.dispatch_lag_ms or 0) <= 10 * 60 * 1000 for f in fires)


# Misfires: the clock jumps five hours (as if the server was down)


@pytest.mark.parametrize(
    ("policy", "limit", "expected"),
    [
        (MisfirePolicy.SKIP, 10, [MISSED] * 5),
        (MisfirePolicy.RUN_ONCE, 10, [MISSED] * 4 + [SUCCESS]),
        (MisfirePolicy.CATCH_UP, 10, [SUCCESS] * 5),
        (MisfirePolicy.CATCH_UP, 2, [MISSED] * 3 + [SUCCESS] * 2),
    ],
)
async def test_misfire_policies(
    engine: culm.Engine,
    clock: FakeClock,
    policy: MisfirePolicy,
    limit: int,
    expected: list[FireStatus],
) -> None:
    schedule = await engine.schedules.create(
        hourly(misfire_policy=policy, catch_up_limit=limit, overlap_policy="allow")
    )
    clock.advance(hours=5, minutes=30)  # fires at 09:00 … 13:00 were due; it is 13:30
    await engine.schedules.tick()
    fires = await settled_fires(engine, schedule.schedule_id, 5)
    assert [f.status for f in fires] == expected
    assert [f.scheduled_for.hour for f in fires] == [9, 10, 11, 12, 13]
    assert all(f.run_id is None for f in fires if f.status is MISSED)
    assert all(f.dispatch_lag_ms is not None for f in fires if f.status is SUCCESS)
    assert (await engine.schedules.get(schedule.schedule_id)).next_fire_at == datetime(
        2026, 11, 23, 14, 0, tzinfo=UTC
    )


async def test_a_fire_later_than_the_grace_is_a_misfire(tmp_path: Path, clock: FakeClock) -> None:
    async with new_engine(tmp_path / "home", clock, schedule_misfire_grace=5) as engine:
        schedule = await engine.schedules.create(hourly(misfire_policy="skip"))
        clock.set(datetime(2026, 11, 23, 9, 0, 4, tzinfo=UTC))
        await engine.schedules.tick()
        clock.set(datetime(2026, 11, 23, 10, 0, 6, tzinfo=UTC))
        await engine.schedules.tick()
        fires = await settled_fires(engine, schedule.schedule_id, 2)
        assert [f.status for f in fires] == [SUCCESS, MISSED]


# Overlap: runs of the `stuck` model keep running until cancelled


async def stuck_schedule(engine: culm.Engine, overlap: str) -> Schedule:
    return await engine.schedules.create(
        {
            "name": "stuck",
            "trigger": {"type": "interval", "every_seconds": 60},
            "run_config": {"message": "go", "model": "scripted:stuck"},
            "overlap_policy": overlap,
        }
    )


async def fire_minutes(engine: culm.Engine, clock: FakeClock, count: int) -> None:
    for _ in range(count):
        clock.advance(seconds=60)
        await engine.schedules.tick()


async def statuses(engine: culm.Engine, schedule: Schedule) -> list[FireStatus]:
    return [f.status for f in reversed(await engine.schedules.runs(schedule.schedule_id))]


async def test_overlap_allow_runs_alongside(engine: culm.Engine, clock: FakeClock) -> None:
    schedule = await stuck_schedule(engine, "allow")
    await fire_minutes(engine, clock, 3)
    assert await statuses(engine, schedule) == [RUNNING] * 3
    assert len(await engine.list_runs(status="running")) == 3


async def test_overlap_skip_skips_while_a_run_is_active(
    engine: culm.Engine, clock: FakeClock
) -> None:
    schedule = await stuck_schedule(engine, "skip")
    await fire_minutes(engine, clock, 3)
    assert await statuses(engine, schedule) == [RUNNING, SKIPPED, SKIPPED]
    [first] = (await engine.schedules.runs(schedule.schedule_id))[-1:]
    await engine.cancel(first.run_id or "", wait=True)
    await eventually(lambda: _first_status_is(engine, schedule, CANCELLED))
    await fire_minutes(engine, clock, 1)
    assert (await statuses(engine, schedule))[-1] is RUNNING


async def _first_status_is(engine: culm.Engine, schedule: Schedule, status: FireStatus) -> bool:
    return (await statuses(engine, schedule))[0] is status


async def test_overlap_queue_one_waits_for_the_active_run(
    engine: culm.Engine, clock: FakeClock
) -> None:
    schedule = await stuck_schedule(engine, "queue_one")
    await fire_minutes(engine, clock, 3)
    assert await statuses(engine, schedule) == [RUNNING, QUEUED, SKIPPED]
    fires = list(reversed(await engine.schedules.runs(schedule.schedule_id)))
    waiting = fires[1]
    assert waiting.run_id is None and waiting.started_at is None

    clock.advance(seconds=5)
    await engine.cancel(fires[0].run_id or "", wait=True)

    async def second_started() -> bool:
        return await statuses(engine, schedule) == [CANCELLED, RUNNING, SKIPPED]

    await eventually(second_started)  # started when the first ended, without another tick
    started = (await engine.schedules.runs(schedule.schedule_id))[1]
    assert started.run_id is not None
    assert started.dispatch_lag_ms == 65_000  # it waited behind the first run


# State


async def test_state_counts_failures_until_a_success(engine: culm.Engine, clock: FakeClock) -> None:
    schedule = await engine.schedules.create(
        hourly(run_config={"message": "go", "model": "scripted:failing"})
    )
    for _ in range(2):
        clock.advance(hours=1)
        await engine.schedules.tick()
        await eventually(lambda: _no_active_fire(engine, schedule))
    failed = await engine.schedules.get(schedule.schedule_id)
    assert failed.consecutive_failures == 2
    assert failed.last_failure_at is not None and failed.last_success_at is None
    fires = await engine.schedules.runs(schedule.schedule_id)
    assert [f.status for f in fires] == [FAILED] * 2
    last_run = await engine.get_run(fires[0].run_id or "")
    assert last_run.status is culm.RunStatus.ERROR
    assert failed.last_error == fires[0].error == last_run.error
    assert failed.last_failure_at == last_run.completed_at

    await engine.schedules.update(schedule.schedule_id, run_config={"model": "scripted:echo"})
    clock.advance(hours=1)
    await engine.schedules.tick()
    await eventually(lambda: _no_active_fire(engine, schedule))
    healed = await engine.schedules.get(schedule.schedule_id)
    assert healed.consecutive_failures == 0
    assert healed.last_success_at is not None
    assert healed.last_failure_at == failed.last_failure_at


async def _no_active_fire(engine: culm.Engine, schedule: Schedule) -> bool:
    fires = await engine.schedules.runs(schedule.schedule_id)
    return bool(fires) and all(f.status not in (QUEUED, RUNNING) for f in fires)


async def test_a_run_that_cannot_start_is_a_failed_fire(
    engine: culm.Engine, clock: FakeClock, tmp_path: Path
) -> None:
    workspace = tmp_path / "ws"
    workspace.mkdir()
    schedule = await engine.schedules.create(
        hourly(run_config={"message": "go", "model": "scripted:echo", "workspace": str(workspace)})
    )
    workspace.rmdir()
    clock.advance(hours=1)
    await engine.schedules.tick()
    [fire] = await settled_fires(engine, schedule.schedule_id, 1)
    assert fire.status is FAILED and fire.run_id is None
    assert fire.error and "workspace" in fire.error
    assert (await engine.schedules.get(schedule.schedule_id)).consecutive_failures == 1


async def test_an_idle_look_is_one_read(
    engine: culm.Engine, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing running, waiting or due: a look (every second, in every process) reads once
    rather than once per kind of work."""
    await engine.schedules.create(hourly())  # next due on the hour, not now
    reads = 0
    read_connection = engine.store.read_connection

    def counted() -> Any:
        nonlocal reads
        reads += 1
        return read_connection()

    monkeypatch.setattr(engine.store, "read_connection", counted)
    await engine.schedules.tick()
    assert reads == 1
