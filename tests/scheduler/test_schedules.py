"""The Python API (``engine.schedules``): create, change, pause, resume, run now, delete, the
fields its errors name, and what a restart does with fires missed while the engine was down."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

import culm
from culm.errors import InvalidFieldError, NotFoundError
from culm.scheduler.models import FireStatus, ScheduleSpec
from culm.scheduler.store import STOPPED_DISPATCH, ScheduleStore
from culm.storage.sql import SqlStore
from tests.scheduler.conftest import FakeClock, cron, new_engine, settled_fires

SUCCESS, MISSED, SKIPPED = FireStatus.SUCCESS, FireStatus.MISSED, FireStatus.SKIPPED
RUNNING, CANCELLED, FAILED = FireStatus.RUNNING, FireStatus.CANCELLED, FireStatus.FAILED


# Creating, reading, changing


async def test_create_takes_the_json_shape_a_spec_or_keywords(
    engine: culm.Engine, clock: FakeClock
) -> None:
    body = {
        "name": "weekday digest",
        "enabled": True,
        "timezone": "Europe/Paris",
        "trigger": {"type": "cron", "expr": "0 9 * * 1-5"},
        "run_config": {
            "message": "Summarize",
            "agent": None,
            "model": "scripted:echo",
            "system_prompt": "Be brief.",
            "tools": ["read"],
            "workspace": None,
        },
        "misfire_policy": "catch_up",
        "overlap_policy": "queue_one",
    }
    from_json = await engine.schedules.create(body)
    from_spec = await engine.schedules.create(ScheduleSpec.model_validate(body))
    from_keywords = await engine.schedules.create(**body)
    for schedule in (from_json, from_spec, from_keywords):
        assert schedule.model_dump(include=set(body), mode="json") == body
        assert schedule.created_at == clock.now
        assert schedule.next_fire_at == datetime(2026, 11, 24, 8, 0, tzinfo=UTC)
    listed = await engine.schedules.list()
    made = (from_json, from_spec, from_keywords)
    assert {s.schedule_id for s in listed} == {s.schedule_id for s in made}
    assert await engine.schedules.get(from_json.schedule_id) == from_json


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"trigger": {"type": "cron", "expr": "0 9 * *"}}, "trigger.expr"),
        ({"trigger": {"type": "cron", "expr": "0 25 * * *"}}, "trigger.expr"),
        ({"trigger": {"type": "cron"}}, "trigger.expr"),
        ({"trigger": {"type": "interval", "every_seconds": 0}}, "trigger.every_seconds"),
        ({"trigger": {"type": "once", "at": "tomorrow"}}, "trigger.at"),
        ({"trigger": {"type": "weekly"}}, "trigger"),
        ({"timezone": "Mars/Olympus_Mons"}, "timezone"),
        ({"timezone": "../../etc/passwd"}, "timezone"),
        ({"misfire_policy": "sometimes"}, "misfire_policy"),
        ({"overlap_policy": "queue_all"}, "overlap_policy"),
        ({"catch_up_limit": 0}, "catch_up_limit"),
        ({"run_config": {"message": ""}}, "run_config.message"),
        ({"run_config": {"message": "hi", "model": "nope:x"}}, "run_config.model"),
        ({"run_config": {"message": "hi", "tools": ["teleport"]}}, "run_config.tools"),
        ({"run_config": {"message": "hi", "workspace": "/no/such/dir"}}, "run_config.workspace"),
        ({"name": ""}, "name"),
        ({"colour": "red"}, "colour"),
    ],
)
async def test_invalid_fields_are_named(
    engine: culm.Engine, change: dict[str, Any], field: str
) -> None:
    with pytest.raises(InvalidFieldError) as caught:
        await engine.schedules.create(cron("0 9 * * *") | change)
    assert caught.value.field == field
    assert str(caught.value).startswith(f"{field}: ")
    assert await engine.schedules.list() == []


async def test_update_replaces_the_fields_given(engine: culm.Engine, clock: FakeClock) -> None:
    schedule = await engine.schedules.create(
        cron("0 9 * * *", run_config={"message": "a", "model": "scripted:echo", "tools": ["read"]})
    )
    clock.advance(minutes=5)
    renamed = await engine.schedules.update(
        schedule.schedule_id, name="renamed", run_config={"message": "b"}
    )
    assert renamed.name == "renamed"
    assert renamed.run_config.message == "b"
    assert renamed.run_config.tools == ("read",)  # a run config changes field by field
    assert renamed.next_fire_at == schedule.next_fire_at  # timing untouched
    assert renamed.updated_at == clock.now

    moved = await engine.schedules.update(
        schedule.schedule_id,
        {"timezone": "Asia/Tokyo", "trigger": {"type": "cron", "expr": "0 9 * * *"}},
    )
    assert moved.next_fire_at == datetime(2026, 11, 24, 0, 0, tzinfo=UTC)  # 09:00 in Tokyo

    with pytest.raises(InvalidFieldError, match="name: may not be null"):
        await engine.schedules.update(schedule.schedule_id, name=None)
    with pytest.raises(InvalidFieldError) as caught:
        await engine.schedules.update(schedule.schedule_id, run_config={"model": "nope:x"})
    assert caught.value.field == "run_config.model"
    with pytest.raises(NotFoundError):
        await engine.schedules.update("missing", name="x")


async def test_an_interval_counts_from_when_its_trigger_was_set(
    engine: culm.Engine, clock: FakeClock
) -> None:
    schedule = await engine.schedules.create(
        cron("* * * * *", trigger={"type": "interval", "every_seconds": 90})
    )
    assert schedule.next_fire_at == clock.now + timedelta(seconds=90)
    clock.advance(seconds=40)
    changed = await engine.schedules.update(
        schedule.schedule_id, trigger={"type": "interval", "every_seconds": 30}
    )
    assert changed.anchor_at == clock.now
    assert changed.next_fire_at == clock.now + timedelta(seconds=30)


# Pause, resume, once, run now, delete


async def test_a_paused_schedule_does_not_fire_and_resumes_from_now(
    engine: culm.Engine, clock: FakeClock
) -> None:
    schedule = await engine.schedules.create(cron("0 * * * *", misfire_policy="catch_up"))
    paused = await engine.schedules.pause(schedule.schedule_id)
    assert not paused.enabled and paused.next_fire_at is None
    clock.advance(hours=3, minutes=10)
    await engine.schedules.tick()
    resumed = await engine.schedules.resume(schedule.schedule_id)
    assert resumed.enabled
    assert resumed.next_fire_at == datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
    await engine.schedules.tick()
    assert await engine.schedules.runs(schedule.schedule_id) == []  # nothing caught up


async def test_once_fires_once(engine: culm.Engine, clock: FakeClock) -> None:
    at = clock.now + timedelta(minutes=30)
    schedule = await engine.schedules.create(cron("* * * * *", trigger={"type": "once", "at": at}))
    assert schedule.next_fire_at == at
    clock.advance(minutes=31)
    await engine.schedules.tick()
    clock.advance(days=1)
    await engine.schedules.tick()
    [fire] = await settled_fires(engine, schedule.schedule_id, 1)
    assert fire.scheduled_for == at and fire.status is SUCCESS
    done = await engine.schedules.get(schedule.schedule_id)
    assert done.next_fire_at is None and done.enabled
    # Resuming a once trigger that already fired does not fire it again; nor does changing
    # its zone (its time was claimed again: "a fire time was claimed twice").
    await engine.schedules.pause(schedule.schedule_id)
    resumed = await engine.schedules.resume(schedule.schedule_id)
    assert resumed.next_fire_at is None
    await engine.schedules.tick()
    assert len(await engine.schedules.runs(schedule.schedule_id)) == 1
    moved = await engine.schedules.update(schedule.schedule_id, timezone="UTC", enabled=True)
    assert moved.next_fire_at is None
    await engine.schedules.tick()
    assert len(await engine.schedules.runs(schedule.schedule_id)) == 1


async def test_once_in_the_past_is_refused(engine: culm.Engine, clock: FakeClock) -> None:
    at = (clock.now - timedelta(hours=2)).replace(tzinfo=None)  # wall clock in Paris: 07:00
    trigger = {"type": "once", "at": at.isoformat()}
    with pytest.raises(InvalidFieldError) as refused:
        await engine.schedules.create(cron("* * * * *", timezone="Europe/Paris", trigger=trigger))
    assert refused.value.field == "trigger.at"
    assert "run_now_if_past" in str(refused.value)
    assert await engine.schedules.list() == []
    future = await engine.schedules.create(cron("0 9 * * *", timezone="Europe/Paris"))
    with pytest.raises(InvalidFieldError) as patched:
        await engine.schedules.update(future.schedule_id, trigger=trigger)
    assert patched.value.field == "trigger.at"
    assert (await engine.schedules.get(future.schedule_id)).trigger == future.trigger


@pytest.mark.parametrize("policy", ["skip", "run_once"])
async def test_once_in_the_past_runs_now_when_asked(
    engine: culm.Engine, clock: FakeClock, policy: str
) -> None:
    at = (clock.now - timedelta(hours=2)).replace(tzinfo=None)  # wall clock in Paris: 07:00
    schedule = await engine.schedules.create(
        cron(
            "* * * * *",
            timezone="Europe/Paris",
            trigger={"type": "once", "at": at.isoformat(), "run_now_if_past": True},
            misfire_policy=policy,
        )
    )
    assert schedule.trigger.model_dump(mode="json") == {
        "type": "once",
        "at": at.isoformat(),
        "run_now_if_past": True,
    }
    assert schedule.next_fire_at == clock.now  # now, on time: the misfire policy plays no part
    await engine.schedules.tick()
    [fire] = await settled_fires(engine, schedule.schedule_id, 1)
    assert fire.status is SUCCESS and fire.scheduled_for == clock.now
    await engine.schedules.resume(schedule.schedule_id)
    await engine.schedules.tick()
    assert len(await engine.schedules.runs(schedule.schedule_id)) == 1


@pytest.mark.parametrize(
    ("timezone", "at"),
    [("America/Los_Angeles", "9999-12-31T23:59:59"), ("Asia/Tokyo", "0001-01-01T00:00:00")],
)
async def test_once_at_the_ends_of_the_calendar_is_refused(
    engine: culm.Engine, timezone: str, at: str
) -> None:
    """Its time has no UTC date: an OverflowError was a plain-text 500."""
    trigger = {"type": "once", "at": at, "run_now_if_past": True}
    with pytest.raises(InvalidFieldError) as refused:
        await engine.schedules.create(cron("* * * * *", timezone=timezone, trigger=trigger))
    assert refused.value.field == "trigger.at"
    assert "out of the range of dates" in str(refused.value)


async def test_run_now_fires_at_once_even_while_paused(
    engine: culm.Engine, clock: FakeClock
) -> None:
    schedule = await engine.schedules.create(cron("0 9 * * *", enabled=False))
    fire = await engine.schedules.trigger(schedule.schedule_id)
    assert fire.manual and fire.scheduled_for == clock.now
    assert fire.status is RUNNING and fire.run_id is not None and fire.dispatch_lag_ms == 0
    [done] = await settled_fires(engine, schedule.schedule_id, 1)
    assert done.status is SUCCESS
    run = await engine.get_run(done.run_id or "")
    assert run.trigger is culm.RunTrigger.SCHEDULE
    # A second run now at the same instant gets the next microsecond: both are recorded.
    again = await engine.schedules.trigger(schedule.schedule_id)
    assert again.scheduled_for == clock.now + timedelta(microseconds=1)
    with pytest.raises(NotFoundError):
        await engine.schedules.trigger("missing")


async def test_run_now_follows_the_overlap_policy(engine: culm.Engine) -> None:
    schedule = await engine.schedules.create(
        cron("0 9 * * *", run_config={"message": "go", "model": "scripted:stuck"})
    )
    first = await engine.schedules.trigger(schedule.schedule_id)
    second = await engine.schedules.trigger(schedule.schedule_id)
    assert (first.status, second.status) == (RUNNING, SKIPPED)
    assert second.run_id is None


async def test_delete_keeps_the_runs(engine: culm.Engine) -> None:
    schedule = await engine.schedules.create(cron("0 9 * * *"))
    fire = await engine.schedules.trigger(schedule.schedule_id)
    await settled_fires(engine, schedule.schedule_id, 1)
    await engine.schedules.delete(schedule.schedule_id)
    with pytest.raises(NotFoundError):
        await engine.schedules.get(schedule.schedule_id)
    with pytest.raises(NotFoundError):
        await engine.schedules.runs(schedule.schedule_id)
    with pytest.raises(NotFoundError):
        await engine.schedules.delete(schedule.schedule_id)
    assert (await engine.get_run(fire.run_id or "")).status is culm.RunStatus.COMPLETED


# Restarts


async def test_fires_missed_while_down_are_settled_at_start_by_the_misfire_policy(
    tmp_path: Path, clock: FakeClock
) -> None:
    home = tmp_path / "home"
    async with new_engine(home, clock) as engine:
        caught_up = await engine.schedules.create(
            cron("0 * * * *", misfire_policy="catch_up", catch_up_limit=2, overlap_policy="allow")
        )
        skipped = await engine.schedules.create(cron("30 * * * *", misfire_policy="skip"))
    clock.advance(hours=4, minutes=45)  # down from 08:00 to 12:45
    async with new_engine(home, clock) as engine:  # its first look is right after start
        fires = await settled_fires(engine, caught_up.schedule_id, 4)
        assert [f.status for f in fires] == [MISSED, MISSED, SUCCESS, SUCCESS]
        assert [f.scheduled_for.hour for f in fires] == [9, 10, 11, 12]
        missed = await settled_fires(engine, skipped.schedule_id, 5)
        assert {f.status for f in missed} == {MISSED}
        assert (await engine.schedules.get(caught_up.schedule_id)).next_fire_at == datetime(
            2026, 11, 23, 13, 0, tzinfo=UTC
        )


async def test_ends_of_runs_nobody_waited_on_are_recorded_at_the_next_start(
    tmp_path: Path, clock: FakeClock
) -> None:
    home = tmp_path / "home"
    async with new_engine(home, clock) as engine:
        schedule = await engine.schedules.create(
            cron("0 9 * * *", run_config={"message": "go", "model": "scripted:stuck"})
        )
        fire = await engine.schedules.trigger(schedule.schedule_id)
        assert fire.status is RUNNING
    # The stop cancelled the run after the ticker had stopped following it.
    async with new_engine(home, clock) as engine:
        await engine.schedules.tick()
        [ended] = await engine.schedules.runs(schedule.schedule_id)
        assert ended.status is CANCELLED
        assert (await engine.get_run(ended.run_id or "")).status is culm.RunStatus.CANCELLED


async def test_a_fire_whose_starter_died_fails_after_a_while(
    tmp_path: Path, clock: FakeClock
) -> None:
    home = tmp_path / "home"
    async with new_engine(home, clock) as engine:
        schedule = await engine.schedules.create(cron("0 9 * * *"))
    # A process took the fire for starting (queued → running) and died before making the run.
    sql = SqlStore(f"sqlite+aiosqlite:///{home / 'culm.db'}")
    await sql.start()
    try:
        store = ScheduleStore(sql)
        await store.add_manual_fire(schedule.schedule_id, clock.now, schedule.overlap_policy)
        [taken] = await store.start_waiting(
            schedule.schedule_id, schedule.overlap_policy, clock.now
        )
        assert taken.status is RUNNING and taken.run_id is None
    finally:
        await sql.aclose()
    async with new_engine(home, clock) as engine:
        await engine.schedules.tick()
        assert (await engine.schedules.runs(schedule.schedule_id))[0].status is RUNNING
        clock.advance(minutes=11)
        await engine.schedules.tick()
        [failed] = await engine.schedules.runs(schedule.schedule_id)
        assert failed.status is FAILED and failed.error == STOPPED_DISPATCH


async def test_scheduler_off_means_no_clock_fires(tmp_path: Path, clock: FakeClock) -> None:
    async with new_engine(tmp_path / "home", clock, scheduler=False) as engine:
        schedule = await engine.schedules.create(cron("* * * * *"))
        clock.advance(minutes=5)
        engine._ticker.wake()  # no loop to wake: nothing looks
        await asyncio.sleep(0.2)
        assert await engine.schedules.runs(schedule.schedule_id) == []
        fire = await engine.schedules.trigger(schedule.schedule_id)  # run now still works
        assert fire.status is RUNNING


async def test_no_time_is_claimed_twice_after_a_patch_or_a_run_now(
    tmp_path: Path,
    clock: FakeClock,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A PATCH of a `once` that had fired set its time again, and the next look claimed it a
    second time; a run-now at the very time a fire comes due was logged as a double claim.
    Only the test looks (no ticker loop: one woken by the create would race the run-now for
    the time, and take it first as often as not)."""
    caplog.set_level(logging.DEBUG)
    async with new_engine(tmp_path / "home", clock, scheduler=False) as engine:
        at = clock.now + timedelta(minutes=5)
        once = await engine.schedules.create(cron("* * * * *", trigger={"type": "once", "at": at}))
        clock.set(at)
        await engine.schedules.tick()
        await settled_fires(engine, once.schedule_id, 1)
        await engine.schedules.update(once.schedule_id, enabled=True, timezone="Europe/Paris")
        await engine.schedules.tick()
        every = await engine.schedules.create(
            cron("* * * * *", trigger={"type": "interval", "every_seconds": 60})
        )
        clock.advance(seconds=60)
        manual = await engine.schedules.trigger(every.schedule_id)
        assert manual.scheduled_for == every.anchor_at + timedelta(seconds=60)
        await engine.schedules.tick()
        await settled_fires(engine, every.schedule_id, 1)
        assert len(await engine.schedules.runs(once.schedule_id)) == 1
        logged = caplog.text + "".join(capsys.readouterr())
        assert "claimed twice" not in logged
