"""Taking runs over: the sweeper (leases expired in database time, or owners known dead) and a
worker's clean release of its own runs.

Every run taken gets epoch + 1 (so its former owner's writes are fenced out from then on) and
one outcome, with its events from ``last_seq + 1``: the status its stored terminal event says
(it did end, only its row was not updated), ``cancelled`` (a sub-agent run, "parent
recovered", or a run whose cancel was requested), ready again (re-queued, ``run_recovered``
"requeued"), or ``error`` "interrupted". The non-terminal children of every run taken end
``cancelled`` "parent recovered": a sub-agent never runs twice. A run that ends frees its
session's slot for the next queued run.

Rows are locked with ``FOR UPDATE SKIP LOCKED`` (PostgreSQL): two sweepers never take one run,
and a sweeper never waits on (so never deadlocks with) a writer holding a run's row; the
update is also a compare-and-set on the epoch seen.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from culm.domain.events import Cancelled, Error, RunEventBase, RunRecovered
from culm.domain.models import Run, RunStatus
from culm.storage import dbtime, ops, schema, workers
from culm.storage.base import SweepPolicy
from culm.storage.ending import ending_values
from culm.storage.queue import promote_next, promote_stranded
from culm.storage.rowwriter import RowWriter
from culm.storage.schema import run_events, runs
from culm.storage.wakeups import Wake

PARENT_RECOVERED = "parent recovered"
INTERRUPTED = "interrupted"
SWEEP_LIMIT = 200  # runs per sweep transaction; the next tick takes the rest

# The partial index's own predicate (constants, not parameters, so that the planner can use
# it), and only runs in their slot.
_LEASED = sa.and_(schema.LEASED, runs.c.queued.is_(False))


@dataclass(slots=True)
class _Takeover:
    conn: sa.Connection
    rows: RowWriter
    now: datetime
    wake: Wake
    taken: list[str] = field(default_factory=list)
    # Runs whose owner hands them back having stored every event it emitted (a clean release):
    # their events go on from the last stored seq, not after the seqs reserved for pre-commit
    # delivery (which a crash would have left as a gap).
    clean: frozenset[str] = frozenset()


@functools.lru_cache(maxsize=8)
def _expired_runs(dialect: str, with_dead: bool) -> sa.Select[Any]:
    """The sweep's look for runs to take over, built once for each shape (parameters:
    ``limit``, and with ``with_dead`` ``dead``, the owners known to be gone): the sweeper runs
    it every heartbeat."""
    expired: sa.ColumnElement[bool] = runs.c.lease_expires_at <= dbtime.now(dialect)
    if with_dead:
        expired = sa.or_(expired, runs.c.owner.in_(sa.bindparam("dead", expanding=True)))
    return (
        runs.select()
        .where(_LEASED, expired)
        .order_by(runs.c.lease_expires_at, runs.c.run_id)
        .limit(sa.bindparam("limit", type_=sa.Integer))
        .with_for_update(skip_locked=True)
    )


def sweep(
    conn: sa.Connection,
    dialect: str,
    rows: RowWriter,
    policy: SweepPolicy,
    dead_owners: Sequence[str],
    wake: Wake,
) -> list[Run]:
    parameters: dict[str, Any] = {"limit": SWEEP_LIMIT}
    if dead_owners:
        parameters["dead"] = list(dead_owners)
    found = conn.execute(_expired_runs(dialect, bool(dead_owners)), parameters).all()
    promote_stranded(conn, wake, limit=SWEEP_LIMIT)
    if not found:
        workers.retire(conn, dialect, policy.lease_seconds)
        return []
    takeover = _Takeover(conn, rows, dbtime.read_now(conn, dialect), wake)
    for row in found:
        requeue = policy.requeue and row.attempt < policy.max_attempts
        _take(takeover, row, requeue=requeue)
    workers.retire(conn, dialect, policy.lease_seconds)
    return _runs(conn, takeover.taken)


def release(
    conn: sa.Connection,
    dialect: str,
    rows: RowWriter,
    owner: str,
    fences: Mapping[str, int],
    wake: Wake,
    *,
    clean: bool,
) -> list[str]:
    if not fences:
        return []
    query = (
        runs.select()
        .where(ops.SLOT, runs.c.owner == owner)
        .where(sa.tuple_(runs.c.run_id, runs.c.epoch).in_(sorted(fences.items())))
        .order_by(runs.c.run_id)
        .with_for_update()
    )
    found = conn.execute(query).all()
    if not found:
        return []
    takeover = _Takeover(
        conn,
        rows,
        dbtime.read_now(conn, dialect),
        wake,
        clean=frozenset(fences) if clean else frozenset(),
    )
    started = _with_events(conn, found)
    for row in found:
        if row.run_id in started or row.parent_run_id or row.cancel_requested:
            _take(takeover, row, requeue=True)  # a sub-agent ends, a cancel is obeyed
        else:
            _hand_back_unstarted(takeover, row)
    return [run_id for run_id in takeover.taken if run_id in fences]


def _with_events(conn: sa.Connection, found: Sequence[Any]) -> set[str]:
    """Those of the runs ``found`` that wrote an event under the epoch they are held at (or an
    unfenced one, whose epoch is unknown): they started executing (``execution_started`` is
    every attempt's first event)."""
    pairs = sorted((row.run_id, row.epoch) for row in found)
    unfenced = sa.and_(
        run_events.c.run_id.in_([run_id for run_id, _ in pairs]), run_events.c.epoch.is_(None)
    )
    query = sa.select(run_events.c.run_id).where(
        sa.or_(sa.tuple_(run_events.c.run_id, run_events.c.epoch).in_(pairs), unfenced)
    )
    return set(conn.scalars(query.distinct()))


def _hand_back_unstarted(takeover: _Takeover, row: Any) -> None:
    """A run claimed but never executed here (a launch that failed, a claim made while
    stopping): ready again as it was, no attempt counted (``max_attempts`` counts executions)
    and no event (nothing happened to it); only the epoch moves on, fencing this claim out."""
    values = {
        "epoch": row.epoch + 1,
        "owner": None,
        "lease_expires_at": None,
        "status": RunStatus.PENDING.value,
        "started_at": None,
    }
    seen = sa.and_(runs.c.run_id == row.run_id, runs.c.epoch == row.epoch)
    if takeover.conn.execute(runs.update().where(seen).values(**values)).rowcount == 1:
        takeover.taken.append(row.run_id)
        takeover.wake(takeover.conn)


def _take(takeover: _Takeover, row: Any, *, requeue: bool) -> None:
    conn, now = takeover.conn, takeover.now
    run_id = row.run_id
    seen = sa.and_(runs.c.run_id == run_id, runs.c.epoch == row.epoch)
    values: dict[str, Any] = {
        "epoch": row.epoch + 1,
        "owner": None,
        "lease_expires_at": None,
        "queued": False,
        "queue_order": None,
    }
    events: list[RunEventBase] = []
    ended = ending_values(conn, run_id)
    if ended is not None:  # it did end: its status just was not stored
        values.update(ended)
    elif row.parent_run_id is not None or row.cancel_requested is not None:
        reason = PARENT_RECOVERED if row.parent_run_id is not None else row.cancel_requested
        values.update(status=RunStatus.CANCELLED.value, completed_at=now)
        values.update(cancel_requested=reason)
        events.append(Cancelled(reason=reason))
    elif requeue:
        values.update(status=RunStatus.PENDING.value, attempt=row.attempt + 1, started_at=None)
        events.append(RunRecovered(previous_attempt=row.attempt, action="requeued"))
    else:
        values.update(status=RunStatus.ERROR.value, error=INTERRUPTED, completed_at=now)
        events.append(RunRecovered(previous_attempt=row.attempt, action="errored"))
        events.append(Error(message=INTERRUPTED, code=INTERRUPTED))
    if conn.execute(runs.update().where(seen).values(**values)).rowcount != 1:
        return  # taken in this transaction already (a child of a run taken before it)
    takeover.taken.append(run_id)
    if values.get("status") != RunStatus.PENDING.value:
        ops.close_requests(conn, [run_id])  # a waiting child's requests end with it
    if events:
        seq = ops.last_seq(conn, run_id, reserved=run_id not in takeover.clean)
        stamped = [
            event.stamped(seq=seq + i, run_id=run_id, session_id=row.session_id, ts=now)
            for i, event in enumerate(events, start=1)
        ]
        ops.insert_events(conn, takeover.rows, stamped, {run_id: row.epoch + 1})
        ops.update_liveness(conn, stamped)
    if values.get("status") == RunStatus.PENDING.value:
        takeover.wake(conn)
    elif not row.queued:
        promote_next(conn, row.session_id, takeover.wake)
    _take_children(takeover, run_id)


def _take_children(takeover: _Takeover, parent_run_id: str) -> None:
    query = (
        runs.select()
        .where(runs.c.parent_run_id == parent_run_id, runs.c.status.in_(ops.SLOT_STATUSES))
        .order_by(runs.c.run_id)
        .with_for_update(skip_locked=True)  # a locked one is swept on its own (its lease)
    )
    for child in takeover.conn.execute(query).all():
        _take(takeover, child, requeue=False)


def _runs(conn: sa.Connection, run_ids: Sequence[str]) -> list[Run]:
    found = [ops.get_run(conn, run_id) for run_id in run_ids]
    return [run for run in found if run is not None]
