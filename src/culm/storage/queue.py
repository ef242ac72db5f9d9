"""The run queue's write transactions: reserve, claim (which starts), start, finish, renew, cancel.

The queue is the ``runs`` table: a *ready* run (pending, not queued, no owner) holds its
session's slot and waits for a worker; a *queued* one waits behind its session's active run
and becomes ready when that one ends (``promote_next``, in the ending transaction). Claims take
ready runs oldest first in one statement (``FOR UPDATE SKIP LOCKED`` on PostgreSQL, so
concurrent claimers never take one run twice; SQLite's writes are serialized anyway). Each
claim bumps the run's epoch; every later write of the claimer is fenced on (owner, epoch).
Leases are database time (``dbtime``). Each function is one transaction's body (see
``writer.py``); ``wake`` is called when the transaction made a run ready.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

import sqlalchemy as sa

from culm.domain.models import Message, Run, RunStatus, Usage, UserMessage
from culm.errors import AlreadyRunningError, LeaseLostError
from culm.storage import dbtime, fencing, ops, schema
from culm.storage.base import Fence, Renewal, Reservation
from culm.storage.rows import run_from_row
from culm.storage.rowwriter import RowWriter
from culm.storage.schema import runs
from culm.storage.wakeups import Wake


def reserve(
    conn: sa.Connection,
    dialect: str,
    run: Run,
    row: dict[str, Any],
    *,
    queue: bool,
    jump_queue: bool,
    owner: str | None,
    lease_seconds: float | None,
    parent_fence: Fence | None,
    wake: Wake,
) -> Reservation:
    if parent_fence is not None and run.parent_run_id is not None:
        fencing.check_fence(conn, run.parent_run_id, parent_fence)  # the parent is still ours
    ready = {**row, "queued": False, "owner": None, "epoch": 0, "lease_expires_at": None}
    # PostgreSQL: most sessions are free, so try the insert first, one statement (and round
    # trip) less than the look below on the path from a run's reservation to its start.
    free = owner is None and dialect == "postgresql"
    if free and wake.sent_if_inserted(conn, ops.RUN_INSERT_IF_FREE, ready, run.run_id):
        return Reservation(run=run.model_copy(update={"queued": False, "epoch": 0}))
    active = ops.lock_active_run_id(conn, run.session_id)
    if active is None:
        if owner is None:
            conn.execute(wake.sent_by(ops.RUN_INSERT, run.run_id), ready)
            return Reservation(run=run.model_copy(update={"queued": False, "epoch": 0}))
        if lease_seconds is None:
            raise ValueError("reserve_run: lease_seconds is required with an owner")
        lease = dbtime.later(dialect, lease_seconds)
        values = {**row, "queued": False, "owner": owner, "epoch": 1}
        conn.execute(runs.insert().values(**values, lease_expires_at=lease))
        return Reservation(run=run.model_copy(update={"queued": False, "epoch": 1, "owner": owner}))
    if owner is not None or not queue:
        raise AlreadyRunningError(run.session_id, active)
    order = ops.queue_order(conn, run.session_id, jump_queue)
    values = {**row, "queued": True, "queue_order": order, "owner": None, "epoch": 0}
    conn.execute(ops.RUN_INSERT, {**values, "lease_expires_at": None})
    if conn.scalar(sa.select(runs.c.owner).where(runs.c.run_id == active)) is None:
        # The active run is ready: a claim meanwhile skipped it (this transaction held it FOR
        # SHARE, and claims SKIP LOCKED rows), so wake the workers to look again.
        wake(conn)
    queued = run.model_copy(update={"queued": True, "epoch": 0})
    return Reservation(run=queued, active_run_id=active)


def claim(
    conn: sa.Connection,
    dialect: str,
    rows: RowWriter,
    owner: str,
    limit: int,
    lease_seconds: float,
    exclude: Sequence[str] = (),
    only: Sequence[str] | None = None,
) -> list[Run]:
    """Claim and start up to ``limit`` ready runs: one transaction takes them (owner, epoch + 1,
    lease), marks them running and stores each one's input as its first message. Starting in
    the claim, not in a transaction of its own per run, is one round trip less between a run's
    reservation and its start (the enqueue → start latency)."""
    statement = _claim_statement(dialect, lease_seconds, bool(exclude), only is not None)
    parameters: dict[str, Any] = {"owner": owner, "limit": limit}
    if exclude:
        parameters["exclude"] = list(exclude)
    if only is not None:
        parameters["only"] = list(only)
    claimed = [run_from_row(row) for row in conn.execute(statement, parameters)]
    claimed.sort(key=lambda run: (run.created_at, run.run_id))
    _store_inputs(conn, rows, claimed)
    return claimed


@functools.lru_cache(maxsize=32)
def _claim_statement(dialect: str, lease_seconds: float, exclude: bool, only: bool) -> sa.Update:
    """The claim's statement, built once for each shape (parameters: ``owner``, ``limit``,
    ``exclude`` and ``only``): building it cost more than SQLite takes to run it, and every
    poll of every worker claims."""
    # The pick is a CTE: PostgreSQL evaluates it once. As a plain ``IN (SELECT … LIMIT n FOR
    # UPDATE SKIP LOCKED)`` the planner may rescan the subquery for every outer row (a nested
    # loop semi join), and each rescan locks further rows: one claim took every ready run.
    ready: sa.ColumnElement[bool] = sa.and_(schema.READY)  # the partial index's predicate
    if exclude:
        ready = sa.and_(ready, runs.c.run_id.not_in(sa.bindparam("exclude", expanding=True)))
    if only:
        ready = sa.and_(ready, runs.c.run_id.in_(sa.bindparam("only", expanding=True)))
    picked = (
        sa.select(runs.c.run_id)
        .where(ready)
        .order_by(runs.c.created_at, runs.c.run_id)
        .limit(sa.bindparam("limit", type_=sa.Integer))
        .with_for_update(skip_locked=True)  # nothing on SQLite, whose writes are serialized
        .cte("picked")
    )
    return (
        runs.update()
        .where(runs.c.run_id.in_(sa.select(picked.c.run_id)), ops.READY)
        .values(
            owner=sa.bindparam("owner", type_=runs.c.owner.type),
            epoch=runs.c.epoch + 1,
            lease_expires_at=dbtime.later(dialect, lease_seconds),
            status=RunStatus.RUNNING.value,
            # A run resumed after waiting for a person keeps its start (takeovers and
            # hand-backs clear it: their next claim starts anew).
            started_at=sa.func.coalesce(runs.c.started_at, dbtime.statement_now(dialect)),
        )
        .returning(*runs.c)
    )


def _store_inputs(conn: sa.Connection, rows: RowWriter, started: Sequence[Run]) -> None:
    """Append each started run's input to its session, unless an earlier claim of the run (a
    recovered or handed-back attempt) stored it already. A run at epoch 1 is at its first claim
    (reserved at 0; every claim, takeover and release bumps it): no look needed."""
    with_input = [run for run in started if run.input]
    again = [run.run_id for run in with_input if run.epoch > 1]
    stored = ops.runs_with_messages(conn, again) if again else set()
    for run in with_input:
        if run.run_id not in stored:
            message = UserMessage(content=run.input)
            ops.insert_messages(conn, rows, run.session_id, [message], run.run_id)


def start(
    conn: sa.Connection,
    dialect: str,
    rows: RowWriter,
    run_id: str,
    epoch: int,
    owner: str,
    message: Message | None,
    wake: Wake,
) -> Run | None:
    statement = (
        runs.update()
        .where(runs.c.run_id == run_id, runs.c.owner == owner, runs.c.epoch == epoch)
        .where(runs.c.status == RunStatus.PENDING.value, runs.c.queued.is_(False))
        .where(runs.c.cancel_requested.is_(None))
        .values(status=RunStatus.RUNNING.value, started_at=dbtime.now(dialect))
        .returning(*runs.c)
    )
    started = conn.execute(statement).first()
    if started is not None:
        run = run_from_row(started)
        # A later attempt (after a recovery or a release) may have stored it already.
        first = run.attempt == 1
        if message is not None and (first or not ops.has_run_messages(conn, run_id)):
            ops.insert_messages(conn, rows, run.session_id, [message], run_id)
        return run
    current = conn.execute(runs.select().where(runs.c.run_id == run_id).with_for_update()).first()
    if current is None or RunStatus(current.status).is_terminal:
        return None
    if current.owner != owner or current.epoch != epoch:
        raise LeaseLostError(run_id)
    if current.cancel_requested is not None and current.status == RunStatus.PENDING.value:
        # Cancelled between its claim and its start: end it now ("not started" means "ended").
        run = run_from_row(current)
        ops.end_cancelled(conn, rows, run, current.cancel_requested, dbtime.read_now(conn, dialect))
        promote_next(conn, run.session_id, wake)
    return None


def finish(
    conn: sa.Connection,
    dialect: str,
    run_id: str,
    fence: Fence | None,
    status: RunStatus,
    error: str | None,
    usage: Usage,
    wake: Wake,
) -> None:
    parameters: dict[str, Any] = {"run": run_id, "to_status": status.value, "to_error": error}
    parameters["to_usage"] = usage.model_dump()
    if fence is not None:
        parameters["fence_owner"], parameters["fence_epoch"] = fence
    session_id = conn.scalar(_finish_statement(dialect, fence is not None), parameters)
    if session_id is None:
        if fence is not None:
            raise LeaseLostError(run_id)
        return
    promote_next(conn, session_id, wake)


@functools.lru_cache(maxsize=8)
def _finish_statement(dialect: str, fenced: bool) -> sa.Update:
    """The ending's statement, built once for each shape (parameters: ``run``, ``to_status``,
    ``to_error``, ``to_usage``, and with a fence ``fence_owner`` and ``fence_epoch``)."""
    statement = runs.update().where(runs.c.run_id == sa.bindparam("run"))
    if fenced:
        statement = statement.where(
            runs.c.owner == sa.bindparam("fence_owner"),
            runs.c.epoch == sa.bindparam("fence_epoch"),
            runs.c.status.in_(ops.ACTIVE),
        )
    return statement.values(
        status=sa.bindparam("to_status", type_=runs.c.status.type),
        error=sa.bindparam("to_error", type_=runs.c.error.type),
        usage=sa.bindparam("to_usage", type_=runs.c.usage.type),
        completed_at=dbtime.now(dialect),
        owner=None,
        lease_expires_at=None,
        queued=False,
        queue_order=None,
    ).returning(runs.c.session_id)


_WAITING = runs.alias("waiting")
_STRANDED = (
    sa.select(_WAITING.c.session_id)
    .where(_WAITING.c.queued.is_(True), _WAITING.c.status == ops.PENDING)
    .where(~sa.exists().where(runs.c.session_id == _WAITING.c.session_id, ops.SLOT))
    .distinct()
    .limit(sa.bindparam("limit", type_=sa.Integer))
)


def promote_stranded(conn: sa.Connection, wake: Wake, *, limit: int) -> list[str]:
    """The safety net: make ready the first queued run of every session that has queued runs
    but no active one (a state no transaction should leave; found by the sweeper). Returns
    the sessions promoted. A concurrent promotion of one of them (the slot's unique index
    refuses the second) is left to that one."""
    stranded = conn.scalars(_STRANDED, {"limit": limit}).all()
    promoted = []
    for session_id in stranded:
        try:
            with conn.begin_nested():
                promote_next(conn, session_id, wake)
        except sa.exc.IntegrityError:
            continue
        promoted.append(session_id)
    return promoted


_NEXT_QUEUED = (
    sa.select(runs.c.run_id)
    .where(runs.c.session_id == sa.bindparam("session_id"), ops.QUEUED)
    .order_by(runs.c.queue_order, runs.c.created_at, runs.c.run_id)
    .limit(1)
    .with_for_update()
)


def promote_next(conn: sa.Connection, session_id: str, wake: Wake) -> None:
    """Make the session's first queued run ready, if its slot is free."""
    if ops.active_run_id(conn, session_id) is not None:
        return
    next_id = conn.scalar(_NEXT_QUEUED, {"session_id": session_id})
    if next_id is None:
        return
    result = conn.execute(
        runs.update()
        .where(runs.c.run_id == next_id, ops.QUEUED)
        .values(queued=False, queue_order=None)
    )
    if result.rowcount == 1:
        wake(conn)


def renew(
    conn: sa.Connection, dialect: str, owner: str, fences: Mapping[str, int], lease_seconds: float
) -> Renewal:
    if not fences:
        return Renewal(cancel_requested={}, lost=[])
    pairs = sorted(fences.items())
    held = sa.and_(
        runs.c.owner == owner,
        runs.c.status.in_(ops.ACTIVE),
        sa.tuple_(runs.c.run_id, runs.c.epoch).in_(pairs),
    )
    # Lock the rows in run_id order first, as every writer does: an UPDATE of many rows locks
    # them in the order it finds them, and deadlocked with the event writer's fenced batches.
    conn.execute(sa.select(runs.c.run_id).where(held).order_by(runs.c.run_id).with_for_update())
    statement = (
        runs.update()
        .where(held)
        .values(lease_expires_at=dbtime.later(dialect, lease_seconds))
        .returning(runs.c.run_id, runs.c.cancel_requested)
    )
    kept = {row.run_id: row.cancel_requested for row in conn.execute(statement)}
    missing = set(fences) - set(kept)
    if missing:
        # A run its owner ended itself (``finish_run``, or ``start_run`` ending a cancelled one)
        # keeps its epoch: it is done, not lost. Everyone else's ending bumps the epoch (and so
        # does the owner's parking of a run to wait for a person: by one, in that transaction).
        ended = sa.select(runs.c.run_id, runs.c.status, runs.c.epoch).where(
            runs.c.run_id.in_(sorted(missing))
        )
        for row in conn.execute(ended):
            if RunStatus(row.status).is_terminal and row.epoch == fences[row.run_id]:
                missing.discard(row.run_id)
            elif row.status == RunStatus.WAITING.value and row.epoch == fences[row.run_id] + 1:
                missing.discard(row.run_id)  # parked by its owner to wait for a person: done
    return Renewal(
        cancel_requested={run_id: reason for run_id, reason in sorted(kept.items()) if reason},
        lost=sorted(missing),
    )


def request_cancel(
    conn: sa.Connection, dialect: str, rows: RowWriter, run_id: str, reason: str, wake: Wake
) -> Run | None:
    # Lock the row: a concurrent claim must not take the run between look and write.
    row = conn.execute(runs.select().where(runs.c.run_id == run_id).with_for_update()).first()
    run = None if row is None else run_from_row(row)
    if row is None or run is None or run.status.is_terminal:
        return run
    if run.status in (RunStatus.PENDING, RunStatus.WAITING) and row.owner is None:
        # Nobody executes it (ready, queued or waiting for a person): end it here, with its
        # terminal event.
        ops.end_cancelled(conn, rows, run, reason, dbtime.read_now(conn, dialect))
        if not run.queued:
            promote_next(conn, run.session_id, wake)
    else:
        conn.execute(
            runs.update()
            .where(runs.c.run_id == run_id, runs.c.cancel_requested.is_(None))
            .values(cancel_requested=reason)
        )
    return ops.get_run(conn, run_id)
