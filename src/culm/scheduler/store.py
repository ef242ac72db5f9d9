"""``ScheduleStore``: schedules and their fires, in the engine's database (SQLite or PostgreSQL).

It shares the SQL store's database: its writes go through ``SqlStore.write`` (on SQLite they
are serialized with the engine's own), its reads through ``SqlStore.read_connection``. What
keeps a time from firing twice is here: :meth:`ScheduleStore.claim` moves ``next_fire_at`` by
compare-and-set and records the claimed times under the key (schedule_id, scheduled_for), in
one transaction; and a waiting fire is started only by whoever moves it from ``queued`` to
``running``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from culm.domain.models import TERMINAL_RUN_STATUSES, RunStatus
from culm.errors import NotFoundError
from culm.logs import get_logger
from culm.scheduler.models import FireStatus, OverlapPolicy, Schedule, ScheduleRun
from culm.scheduler.policy import Fire, may_start, overlap_allows
from culm.scheduler.schema import schedule_runs, schedules
from culm.storage.schema import runs
from culm.storage.sql import SqlStore

log = get_logger(__name__)

Decide = Callable[[int], list[Fire]]
_BUSY = (FireStatus.QUEUED.value, FireStatus.RUNNING.value)
_RUNNING = FireStatus.RUNNING.value
_TERMINAL = [status.value for status in TERMINAL_RUN_STATUSES]
# Whether a look at the schedules has anything to do: a fire running or waiting to start, or a
# schedule due. One indexed query, so an idle look (most of them) costs one read, not five.
_WORK = sa.select(
    sa.or_(
        sa.exists().where(schedule_runs.c.status.in_(_BUSY)),
        sa.exists().where(
            schedules.c.enabled.is_(True),
            schedules.c.next_fire_at <= sa.bindparam("now", type_=schedules.c.next_fire_at.type),
        ),
    )
)
DELETED_RUN = "its run was deleted before its end was recorded"
STOPPED_DISPATCH = "the process that was starting its run stopped first"


@dataclass(frozen=True, slots=True)
class Ended:
    """A running fire whose run has ended (found by :meth:`ScheduleStore.ended`)."""

    schedule_id: str
    scheduled_for: datetime
    status: FireStatus
    completed_at: datetime | None
    error: str | None


class ScheduleStore:
    def __init__(self, sql: SqlStore) -> None:
        self._sql = sql

    # Schedules

    async def create(self, schedule: Schedule) -> None:
        row = schedule_row(schedule)

        def transaction(conn: sa.Connection) -> None:
            conn.execute(schedules.insert().values(**row))

        await self._sql.write(transaction)

    async def get(self, schedule_id: str) -> Schedule | None:
        query = schedules.select().where(schedules.c.schedule_id == schedule_id)
        async with self._sql.read_connection() as conn:
            row = (await conn.execute(query)).first()
        return None if row is None else schedule_from_row(row)

    async def list_schedules(self, *, limit: int = 100) -> list[Schedule]:
        """Newest first."""
        query = schedules.select().order_by(schedules.c.created_at.desc()).limit(limit)
        async with self._sql.read_connection() as conn:
            return [schedule_from_row(row) for row in await conn.execute(query)]

    async def update(self, schedule_id: str, values: Mapping[str, Any]) -> Schedule | None:
        """Set ``values`` (columns) and return the schedule as it now is."""

        def transaction(conn: sa.Connection) -> Schedule | None:
            query = schedules.update().where(schedules.c.schedule_id == schedule_id)
            result = conn.execute(query.values(**values))
            if result.rowcount != 1:
                return None
            row = conn.execute(
                schedules.select().where(schedules.c.schedule_id == schedule_id)
            ).one()
            return schedule_from_row(row)

        return await self._sql.write(transaction)

    async def delete(self, schedule_id: str) -> bool:
        """Delete a schedule and its fire records (its runs and sessions stay)."""

        def transaction(conn: sa.Connection) -> bool:
            conn.execute(schedule_runs.delete().where(schedule_runs.c.schedule_id == schedule_id))
            result = conn.execute(schedules.delete().where(schedules.c.schedule_id == schedule_id))
            return result.rowcount > 0

        return await self._sql.write(transaction)

    async def has_work(self, now: datetime) -> bool:
        """Whether a fire is running or waiting to start, or a schedule is due at ``now``: what
        :meth:`ended`, :meth:`due` and :meth:`waiting_schedules` would find something in."""
        async with self._sql.read_connection() as conn:
            return bool(await conn.scalar(_WORK, {"now": now}))

    async def due(self, now: datetime, *, limit: int = 100) -> list[Schedule]:
        """Enabled schedules whose next fire is at or before ``now``, most overdue first."""
        query = (
            schedules.select()
            .where(schedules.c.enabled.is_(True), schedules.c.next_fire_at <= now)
            .order_by(schedules.c.next_fire_at)
            .limit(limit)
        )
        async with self._sql.read_connection() as conn:
            return [schedule_from_row(row) for row in await conn.execute(query)]

    # Claiming fires

    async def claim(
        self, schedule: Schedule, *, next_fire_at: datetime | None, now: datetime, decide: Decide
    ) -> list[Fire] | None:
        """Move the schedule's ``next_fire_at`` on to ``next_fire_at`` if it is still what
        ``schedule`` saw (compare-and-set), and record the fires that ``decide`` makes of the
        number of its fires running or waiting. None if another look claimed them first."""

        def transaction(conn: sa.Connection) -> tuple[list[Fire], int] | None:
            result = conn.execute(
                schedules.update()
                .where(schedules.c.schedule_id == schedule.schedule_id)
                .where(schedules.c.enabled.is_(True))
                .where(schedules.c.next_fire_at == schedule.next_fire_at)
                .values(next_fire_at=next_fire_at)
            )
            if result.rowcount != 1:
                return None
            fires = decide(_busy(conn, schedule.schedule_id))
            return fires, _insert_fires(conn, schedule.schedule_id, fires, now=now, manual=False)

        claimed = await self._sql.write(transaction)
        if claimed is None:
            return None
        fires, kept = claimed
        if kept:
            log.error("a fire time was claimed twice; kept the first", times=kept)
        return fires

    async def add_manual_fire(
        self, schedule_id: str, at: datetime, overlap: OverlapPolicy
    ) -> ScheduleRun:
        """Record a fire for ``at`` (run now): ``queued``, or ``skipped`` if ``overlap`` forbids
        it. If a fire already has that time, the next free microsecond is taken."""

        def transaction(conn: sa.Connection) -> ScheduleRun:
            exists = conn.scalar(
                sa.select(schedules.c.schedule_id).where(schedules.c.schedule_id == schedule_id)
            )
            if exists is None:
                raise NotFoundError("schedule", schedule_id)
            when = at
            while _fire_exists(conn, schedule_id, when):
                when += timedelta(microseconds=1)
            allowed = overlap_allows(overlap, _busy(conn, schedule_id))
            fire = Fire(when, FireStatus.QUEUED if allowed else FireStatus.SKIPPED)
            _insert_fires(conn, schedule_id, [fire], now=when, manual=True)
            return _get_fire(conn, schedule_id, when)

        return await self._sql.write(transaction)

    # Starting waiting fires

    async def waiting_schedules(self) -> list[str]:
        """Schedules with fires waiting to start."""
        query = (
            sa.select(schedule_runs.c.schedule_id)
            .where(schedule_runs.c.status == FireStatus.QUEUED.value)
            .distinct()
        )
        async with self._sql.read_connection() as conn:
            return list(await conn.scalars(query))

    async def start_waiting(
        self, schedule_id: str, overlap: OverlapPolicy, now: datetime
    ) -> list[ScheduleRun]:
        """Take the oldest waiting fires that ``overlap`` lets start now: each becomes
        ``running`` (without a run yet) for this caller only (compare-and-set on its status)."""

        def transaction(conn: sa.Connection) -> list[ScheduleRun]:
            running = conn.scalar(
                sa.select(sa.func.count())
                .select_from(schedule_runs)
                .where(schedule_runs.c.schedule_id == schedule_id)
                .where(schedule_runs.c.status == _RUNNING)
            )
            count = may_start(overlap, int(running or 0))
            if count == 0:
                return []
            waiting = list(
                conn.scalars(
                    sa.select(schedule_runs.c.scheduled_for)
                    .where(schedule_runs.c.schedule_id == schedule_id)
                    .where(schedule_runs.c.status == FireStatus.QUEUED.value)
                    .order_by(schedule_runs.c.scheduled_for)
                    .limit(count)
                )
            )
            started = []
            for scheduled_for in waiting:
                if _move(conn, schedule_id, scheduled_for, FireStatus.QUEUED, started_at=now):
                    started.append(_get_fire(conn, schedule_id, scheduled_for))
            return started

        return await self._sql.write(transaction)

    async def attach_run(self, schedule_id: str, scheduled_for: datetime, run_id: str) -> None:
        def transaction(conn: sa.Connection) -> None:
            conn.execute(
                _fire(schedule_id, scheduled_for)
                .where(schedule_runs.c.status == _RUNNING)
                .values(run_id=run_id)
            )

        await self._sql.write(transaction)

    async def put_back(self, schedule_id: str, scheduled_for: datetime) -> None:
        """A started fire whose run could not be made (the engine is stopping) waits again."""

        def transaction(conn: sa.Connection) -> None:
            _move(conn, schedule_id, scheduled_for, FireStatus.RUNNING, started_at=None)

        await self._sql.write(transaction)

    # Ending fires

    async def finish(
        self,
        schedule_id: str,
        scheduled_for: datetime,
        status: FireStatus,
        *,
        completed_at: datetime,
        error: str | None = None,
    ) -> bool:
        """End a running fire as ``status`` and fold it into the schedule's state; False if it
        was not running (another process recorded its end first, or it was deleted)."""
        state = _state_change(status, completed_at, error)

        def transaction(conn: sa.Connection) -> bool:
            result = conn.execute(
                _fire(schedule_id, scheduled_for)
                .where(schedule_runs.c.status == _RUNNING)
                .values(status=status.value, completed_at=completed_at, error=error)
            )
            if result.rowcount != 1:
                return False
            if state:
                conn.execute(
                    schedules.update().where(schedules.c.schedule_id == schedule_id).values(**state)
                )
            return True

        return await self._sql.write(transaction)

    async def ended(self, *, stale_before: datetime) -> list[Ended]:
        """Running fires that are over without their end recorded: their run ended (in another
        process, or while nobody followed it), was deleted, or was never made because the
        process starting it stopped (started before ``stale_before`` and still without a run)."""
        fire = schedule_runs
        running = fire.c.status == _RUNNING
        finished = (
            sa.select(fire.c.schedule_id, fire.c.scheduled_for, runs.c.status)
            .add_columns(runs.c.completed_at, runs.c.error)
            .select_from(fire.join(runs, fire.c.run_id == runs.c.run_id))
            .where(running, runs.c.status.in_(_TERMINAL))
        )
        deleted = (
            sa.select(fire.c.schedule_id, fire.c.scheduled_for)
            .select_from(fire.outerjoin(runs, fire.c.run_id == runs.c.run_id))
            .where(running, fire.c.run_id.is_not(None), runs.c.run_id.is_(None))
        )
        stalled = sa.select(fire.c.schedule_id, fire.c.scheduled_for).where(
            running, fire.c.run_id.is_(None), fire.c.started_at < stale_before
        )
        async with self._sql.read_connection() as conn:
            ended = [
                Ended(
                    row.schedule_id,
                    row.scheduled_for,
                    FireStatus.of_run(RunStatus(row.status)),
                    row.completed_at,
                    row.error,
                )
                for row in await conn.execute(finished)
            ]
            ended += [
                Ended(row.schedule_id, row.scheduled_for, FireStatus.CANCELLED, None, DELETED_RUN)
                for row in await conn.execute(deleted)
            ]
            ended += [
                Ended(row.schedule_id, row.scheduled_for, FireStatus.FAILED, None, STOPPED_DISPATCH)
                for row in await conn.execute(stalled)
            ]
        return ended

    # Reading fires

    async def fires(self, schedule_id: str, *, limit: int = 100) -> list[ScheduleRun]:
        """The schedule's fires, latest scheduled first."""
        query = (
            schedule_runs.select()
            .where(schedule_runs.c.schedule_id == schedule_id)
            .order_by(schedule_runs.c.scheduled_for.desc())
            .limit(limit)
        )
        async with self._sql.read_connection() as conn:
            return [fire_from_row(row) for row in await conn.execute(query)]

    async def get_fire(self, schedule_id: str, scheduled_for: datetime) -> ScheduleRun | None:
        async with self._sql.read_connection() as conn:
            row = (
                await conn.execute(
                    schedule_runs.select().where(
                        schedule_runs.c.schedule_id == schedule_id,
                        schedule_runs.c.scheduled_for == scheduled_for,
                    )
                )
            ).first()
        return None if row is None else fire_from_row(row)


# Rows


def schedule_row(schedule: Schedule) -> dict[str, Any]:
    """The ``schedules`` row of a schedule."""
    row = schedule.model_dump(exclude={"trigger", "run_config"})
    row["trigger"] = schedule.trigger.model_dump(mode="json")
    row["run_config"] = schedule.run_config.model_dump(mode="json")
    return row


def schedule_from_row(row: sa.Row[Any]) -> Schedule:
    values = dict(row._mapping)
    for key in ("trigger", "run_config"):
        if isinstance(values[key], str):
            values[key] = json.loads(values[key])
    return Schedule.model_validate(values)


def fire_from_row(row: sa.Row[Any]) -> ScheduleRun:
    values = dict(row._mapping)
    del values["created_at"]
    return ScheduleRun.model_validate(values)


# Helpers over a connection


def _fire(schedule_id: str, scheduled_for: datetime) -> sa.Update:
    return schedule_runs.update().where(
        schedule_runs.c.schedule_id == schedule_id,
        schedule_runs.c.scheduled_for == scheduled_for,
    )


def _move(
    conn: sa.Connection,
    schedule_id: str,
    scheduled_for: datetime,
    source: FireStatus,
    *,
    started_at: datetime | None,
) -> bool:
    """queued → running (``started_at`` set) or running → queued, if it is still ``source``."""
    target = FireStatus.RUNNING if source is FireStatus.QUEUED else FireStatus.QUEUED
    result = conn.execute(
        _fire(schedule_id, scheduled_for)
        .where(schedule_runs.c.status == source.value, schedule_runs.c.run_id.is_(None))
        .values(status=target.value, started_at=started_at)
    )
    return result.rowcount == 1


def _busy(conn: sa.Connection, schedule_id: str) -> int:
    count = conn.scalar(
        sa.select(sa.func.count())
        .select_from(schedule_runs)
        .where(schedule_runs.c.schedule_id == schedule_id, schedule_runs.c.status.in_(_BUSY))
    )
    return int(count or 0)


def _fire_exists(conn: sa.Connection, schedule_id: str, at: datetime) -> bool:
    query = sa.select(schedule_runs.c.status).where(
        schedule_runs.c.schedule_id == schedule_id, schedule_runs.c.scheduled_for == at
    )
    return conn.scalar(query) is not None


def _insert_fires(
    conn: sa.Connection,
    schedule_id: str,
    fires: Sequence[Fire],
    *,
    now: datetime,
    manual: bool,
) -> int:
    """Insert fire records; a time already recorded is left as it is. Returns how many of them
    were recorded by the clock, not by a run-now at that very microsecond (which stands for
    that time): those were claimed twice, which compare-and-set should make impossible."""
    times = [fire.scheduled_for for fire in fires]
    found = conn.execute(
        sa.select(schedule_runs.c.scheduled_for, schedule_runs.c.manual).where(
            schedule_runs.c.schedule_id == schedule_id,
            schedule_runs.c.scheduled_for.in_(times),
        )
    ).all()
    taken = {row.scheduled_for for row in found}
    rows = [
        {
            "schedule_id": schedule_id,
            "scheduled_for": fire.scheduled_for,
            "status": fire.status.value,
            "manual": manual,
            "created_at": now,
            "completed_at": None if fire.status is FireStatus.QUEUED else now,
        }
        for fire in fires
        if fire.scheduled_for not in taken
    ]
    if rows:
        conn.execute(schedule_runs.insert(), rows)
    return sum(not row.manual for row in found)


def _get_fire(conn: sa.Connection, schedule_id: str, at: datetime) -> ScheduleRun:
    row = conn.execute(
        schedule_runs.select().where(
            schedule_runs.c.schedule_id == schedule_id, schedule_runs.c.scheduled_for == at
        )
    ).one()
    return fire_from_row(row)


def _state_change(status: FireStatus, at: datetime, error: str | None) -> dict[str, Any]:
    """The schedule's state after a fire ended as ``status``."""
    if status is FireStatus.SUCCESS:
        return {"last_success_at": at, "consecutive_failures": 0}
    if status is FireStatus.FAILED:
        return {
            "last_failure_at": at,
            "last_error": error,
            "consecutive_failures": schedules.c.consecutive_failures + 1,
        }
    return {}
