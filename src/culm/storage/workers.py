"""The ``workers`` table: one row per worker process (``culm worker``, embedded ``culm serve``,
``culm run``), its liveness (last heartbeat, database time) and cumulative counters."""

from __future__ import annotations

import functools
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from culm.domain.models import RunStatus
from culm.storage import dbtime, ops
from culm.storage.base import QueueStats, WorkerInfo
from culm.storage.schema import UTCDateTime, runs, workers


def register(conn: sa.Connection, dialect: str, worker_id: str, fields: dict[str, Any]) -> None:
    now = dbtime.now(dialect)
    conn.execute(workers.delete().where(workers.c.worker_id == worker_id))
    conn.execute(
        workers.insert().values(
            worker_id=worker_id,
            started_at=now,
            last_heartbeat_at=now,
            stopped_at=None,
            active_runs=0,
            claims=0,
            takeovers=0,
            fenced_writes=0,
            **fields,
        )
    )


def heartbeat(conn: sa.Connection, dialect: str, worker_id: str, counters: dict[str, int]) -> None:
    conn.execute(
        workers.update()
        .where(workers.c.worker_id == worker_id)
        .values(last_heartbeat_at=dbtime.now(dialect), **counters)
    )


def stop(conn: sa.Connection, dialect: str, worker_id: str) -> None:
    conn.execute(
        workers.update()
        .where(workers.c.worker_id == worker_id)
        .values(stopped_at=dbtime.now(dialect))
    )


# A stopped worker's row is kept this long (its counters stay in the /metrics sums meanwhile).
STOPPED_RETENTION_SECONDS = 24 * 3600.0


def retire(conn: sa.Connection, dialect: str, lease_seconds: float) -> None:
    """The sweeper's upkeep of the table: a worker silent for longer than a lease that holds no
    active run (a killed process; its runs were taken over) is marked stopped, and rows stopped
    for longer than ``STOPPED_RETENTION_SECONDS`` are deleted. Rows are locked in worker_id
    order, skipping those another sweeper holds."""
    for statement in _retire_statements(dialect, lease_seconds):
        conn.execute(statement)


@functools.lru_cache(maxsize=8)
def _retire_statements(dialect: str, lease_seconds: float) -> tuple[sa.Update, sa.Delete]:
    """:func:`retire`'s statements, built once (the sweeper runs them every heartbeat)."""
    holds_runs = sa.exists().where(
        runs.c.owner == workers.c.worker_id, runs.c.status.in_(ops.ACTIVE)
    )
    silent = (
        sa.select(workers.c.worker_id)
        .where(workers.c.stopped_at.is_(None), ~holds_runs)
        .where(workers.c.last_heartbeat_at < dbtime.later(dialect, -lease_seconds))
        .order_by(workers.c.worker_id)
        .with_for_update(skip_locked=True)
        .cte("silent")
    )
    expired = (
        sa.select(workers.c.worker_id)
        .where(workers.c.stopped_at < dbtime.later(dialect, -STOPPED_RETENTION_SECONDS))
        .order_by(workers.c.worker_id)
        .with_for_update(skip_locked=True)
        .cte("expired")
    )
    return (
        workers.update()
        .where(workers.c.worker_id.in_(sa.select(silent.c.worker_id)))
        .values(stopped_at=dbtime.now(dialect)),
        workers.delete().where(workers.c.worker_id.in_(sa.select(expired.c.worker_id))),
    )


def select_workers(dialect: str, lease_seconds: float) -> sa.Select[Any]:
    alive = sa.and_(
        workers.c.stopped_at.is_(None),
        workers.c.last_heartbeat_at >= dbtime.later(dialect, -lease_seconds),
    )
    flag = sa.case((alive, sa.true()), else_=sa.false()).label("alive")
    return sa.select(*workers.c, flag).order_by(workers.c.started_at, workers.c.worker_id)


def worker_from_row(row: Any) -> WorkerInfo:
    return WorkerInfo(
        worker_id=row.worker_id,
        host=row.host,
        pid=row.pid,
        boot_id=row.boot_id,
        pid_namespace=row.pid_namespace,
        kind=row.kind,
        concurrency=row.concurrency,
        started_at=row.started_at,
        last_heartbeat_at=row.last_heartbeat_at,
        stopped_at=row.stopped_at,
        active_runs=row.active_runs,
        claims=row.claims,
        takeovers=row.takeovers,
        fenced_writes=row.fenced_writes,
        alive=bool(row.alive),
    )


def _count(condition: sa.ColumnElement[bool]) -> sa.ColumnElement[int]:
    return sa.func.coalesce(sa.func.sum(sa.case((condition, 1), else_=0)), 0)


def select_queue_stats(dialect: str) -> sa.Select[int, int, int, datetime, datetime]:
    # Waiting for a worker: ready or queued, nobody's. A run a worker holds (claimed, or
    # reserved for its owner, and not started yet) counts as running.
    pending = sa.and_(runs.c.status == RunStatus.PENDING.value, runs.c.owner.is_(None))
    return sa.select(
        _count(pending).label("pending"),
        _count(ops.READY).label("ready"),
        _count(runs.c.owner.is_not(None)).label("running"),
        sa.type_coerce(
            sa.func.min(sa.case((pending, runs.c.created_at), else_=None)), UTCDateTime
        ).label("oldest"),
        dbtime.now(dialect).label("now"),
    ).where(runs.c.status.in_(ops.ACTIVE))


def queue_stats_from_row(row: Any) -> QueueStats:
    oldest: datetime | None = row.oldest
    age = None if oldest is None else max(0.0, (row.now - oldest).total_seconds())
    return QueueStats(
        pending=int(row.pending),
        ready=int(row.ready),
        running=int(row.running),
        oldest_pending_age=age,
    )
