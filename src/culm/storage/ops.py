"""The plain functions over a connection that ``SqlStore``'s write transactions are made of,
and the statements they run, built once (building a statement costs more than SQLite takes to
run it)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from culm.domain import liveness
from culm.domain.events import Cancelled, RunEvent, event_to_json
from culm.domain.models import Message, Run, RunStatus
from culm.domain.text import model_json
from culm.domain.time import as_utc, utc_now
from culm.storage.rows import run_from_row
from culm.storage.rowwriter import Prepared, RowWriter
from culm.storage.schema import ACTIVE_SLOT, input_requests, messages, run_events, runs

# Runs a process executes or is about to (leases, fences); a waiting run is held by none.
ACTIVE = (RunStatus.PENDING.value, RunStatus.RUNNING.value)
# Runs holding their session's one slot: those, and runs waiting for a person's answer.
SLOT_STATUSES = (*ACTIVE, RunStatus.WAITING.value)


def constant(value: str) -> sa.ColumnElement[str]:
    """``value`` (a status, no quote in it) written into the SQL rather than bound. SQLite
    prepares again, on every execution, a statement where a bound value decided whether a
    partial index's predicate holds (it matches ``status = ?`` against ``status = 'pending'``
    only for that value): the claim spent most of its time being parsed and planned anew."""
    assert "'" not in value
    return sa.literal_column(f"'{value}'", sa.String)


PENDING = constant(RunStatus.PENDING.value)
SLOT = sa.and_(runs.c.status.in_(SLOT_STATUSES), runs.c.queued.is_(False))
QUEUED = sa.and_(runs.c.queued.is_(True), runs.c.status == PENDING)
READY = sa.and_(runs.c.status == PENDING, runs.c.queued.is_(False), runs.c.owner.is_(None))


ACTIVE_RUN_ID = sa.select(runs.c.run_id).where(
    runs.c.session_id == sa.bindparam("session_id"), SLOT
)
# The same, locking the active run's row (FOR SHARE) for the rest of the transaction: a run
# queued behind it then commits before that run can end (its ending UPDATE waits), so the ending
# transaction's promotion sees the queued run. Without it a run could queue behind a run that
# ended meanwhile, and wait for good.
ACTIVE_RUN_ID_LOCKED = ACTIVE_RUN_ID.with_for_update(read=True)
RUN = runs.select().where(runs.c.run_id == sa.bindparam("run_id"))
LAST_SEQ = sa.select(sa.func.max(run_events.c.seq)).where(
    run_events.c.run_id == sa.bindparam("run_id")
)
SEQ_RESERVED = sa.select(runs.c.seq_reserved).where(runs.c.run_id == sa.bindparam("run_id"))
RUN_HAS_MESSAGES = (
    sa.select(messages.c.idx).where(messages.c.run_id == sa.bindparam("run_id")).limit(1)
)
LAST_MESSAGE_IDX = sa.select(sa.func.max(messages.c.idx)).where(
    messages.c.session_id == sa.bindparam("session_id")
)
MESSAGE_INSERT = messages.insert()
RUN_INSERT = runs.insert()
# PostgreSQL: the insert of a run that holds its session's slot, or nothing when the slot is
# taken (its partial unique index) instead of an error that would end the transaction.
RUN_INSERT_IF_FREE = postgresql.insert(runs).on_conflict_do_nothing(
    index_elements=[runs.c.session_id], index_where=ACTIVE_SLOT
)


def active_run_id(conn: sa.Connection, session_id: str) -> str | None:
    return conn.scalar(ACTIVE_RUN_ID, {"session_id": session_id})


def lock_active_run_id(conn: sa.Connection, session_id: str) -> str | None:
    return conn.scalar(ACTIVE_RUN_ID_LOCKED, {"session_id": session_id})


def queue_order(conn: sa.Connection, session_id: str, jump_queue: bool) -> float:
    queued = sa.and_(runs.c.session_id == session_id, runs.c.queued.is_(True))
    if jump_queue:
        first = conn.scalar(sa.select(sa.func.min(runs.c.queue_order)).where(queued))
        return (first if first is not None else 0.0) - 1.0
    last = conn.scalar(sa.select(sa.func.max(runs.c.queue_order)).where(queued))
    return (last if last is not None else 0.0) + 1.0


def get_run(conn: sa.Connection, run_id: str) -> Run | None:
    row = conn.execute(RUN, {"run_id": run_id}).first()
    return None if row is None else run_from_row(row)


def last_seq(conn: sa.Connection, run_id: str, *, reserved: bool = True) -> int:
    """The seq to append after: the last stored, or (``reserved``) the reservation a client
    may have seen events up to (pre-commit delivery), whichever is higher."""
    stored = int(conn.scalar(LAST_SEQ, {"run_id": run_id}) or 0)
    if not reserved:
        return stored
    return max(stored, int(conn.scalar(SEQ_RESERVED, {"run_id": run_id}) or 0))


def has_run_messages(conn: sa.Connection, run_id: str) -> bool:
    return conn.scalar(RUN_HAS_MESSAGES, {"run_id": run_id}) is not None


def runs_with_messages(conn: sa.Connection, run_ids: Sequence[str]) -> set[str]:
    """Those of ``run_ids`` that have messages stored."""
    query = sa.select(messages.c.run_id).where(messages.c.run_id.in_(run_ids)).distinct()
    return set(conn.scalars(query))


def insert_messages(
    conn: sa.Connection,
    rows: RowWriter,
    session_id: str,
    items: Sequence[Message],
    run_id: str | None,
) -> None:
    last = conn.scalar(LAST_MESSAGE_IDX, {"session_id": session_id})
    start = 0 if last is None else last + 1
    now = utc_now()
    values = [
        {
            "session_id": session_id,
            "idx": start + i,
            "run_id": run_id,
            "role": item.role,
            "body": model_json(item),
            "created_at": now,
        }
        for i, item in enumerate(items)
    ]
    rows.execute(conn, MESSAGE_INSERT, values)


def end_cancelled(
    conn: sa.Connection, rows: RowWriter, run: Run, reason: str, now: datetime | None = None
) -> None:
    """End a run nobody executes as ``cancelled``, with its terminal event (at ``now``, the
    database's time when the caller read it); its open requests for a person are closed."""
    now = now or utc_now()
    close_requests(conn, [run.run_id])
    seq = last_seq(conn, run.run_id) + 1
    event = Cancelled(reason=reason).stamped(
        seq=seq, run_id=run.run_id, session_id=run.session_id, ts=now
    )
    insert_events(conn, rows, [event])
    conn.execute(
        runs.update()
        .where(runs.c.run_id == run.run_id)
        .values(
            status=RunStatus.CANCELLED.value,
            completed_at=now,
            last_seq=seq,
            last_event_at=now,
            owner=None,
            lease_expires_at=None,
            queued=False,
            queue_order=None,
            cancel_requested=reason,
        )
    )


def insert_events(
    conn: sa.Connection,
    rows: RowWriter,
    events: Sequence[RunEvent],
    epochs: Mapping[str, int] | None = None,
) -> None:
    prepare_events(rows, events, epochs).execute(conn)


def prepare_events(
    rows: RowWriter, events: Sequence[RunEvent], epochs: Mapping[str, int] | None = None
) -> Prepared:
    """The insert of ``events``, each with its run's epoch from ``epochs`` (None: unfenced)."""
    epoch = (epochs or {}).get
    values = [
        (
            event.run_id,
            event.seq,
            event.type,
            event.ts,
            event_to_json(in_utc(event)),
            epoch(event.run_id),
        )
        for event in events
    ]
    return rows.prepare_values(EVENT_INSERT, EVENT_COLUMNS, values)


def in_utc(event: RunEvent) -> RunEvent:
    """The event with its ``ts`` in UTC, as replay promises (a copy only when it is not)."""
    if event.ts.tzinfo is UTC or event.ts.utcoffset() == timedelta(0):
        return event
    return event.model_copy(update={"ts": as_utc(event.ts)})


def update_liveness(conn: sa.Connection, events: Sequence[RunEvent]) -> None:
    if events:
        conn.execute(LIVENESS_UPDATE, liveness_rows(events))


def liveness_rows(events: Sequence[RunEvent], reserve: int = 0) -> list[dict[str, Any]]:
    """The parameters of one executemany of ``LIVENESS_UPDATE`` for the runs of ``events``;
    fields the events say nothing about keep their stored value (NULL parameters fall back to
    the column through COALESCE). Each run's ``seq_reserved`` becomes its last seq plus
    ``reserve`` (see ``Store.append_events``)."""
    states: dict[str, liveness.Liveness] = {}
    for event in events:
        states[event.run_id] = liveness.apply(states.get(event.run_id, NO_LIVENESS), event)
    rows = [
        {
            "b_run_id": run_id,
            "b_last_seq": state.last_seq,
            "b_seq_reserved": state.last_seq + reserve,
            "b_last_event_at": state.last_event_at,
            "b_round_count": state.round_count or None,
            "b_tool_name": state.last_tool_name if state.last_tool_phase else None,
            "b_tool_phase": state.last_tool_phase.value if state.last_tool_phase else None,
        }
        for run_id, state in sorted(states.items())  # lock order: by run_id, always
    ]
    return rows


EVENT_INSERT = run_events.insert()
EVENT_COLUMNS = ("run_id", "seq", "type", "ts", "body", "epoch")
LIVENESS_UPDATE = (
    runs.update()
    .where(runs.c.run_id == sa.bindparam("b_run_id"))
    .values(
        last_seq=sa.bindparam("b_last_seq"),
        seq_reserved=sa.bindparam("b_seq_reserved"),
        last_event_at=sa.bindparam("b_last_event_at", type_=runs.c.last_event_at.type),
        round_count=sa.func.coalesce(
            sa.bindparam("b_round_count", type_=sa.Integer), runs.c.round_count
        ),
        last_tool_name=sa.func.coalesce(
            sa.bindparam("b_tool_name", type_=sa.String), runs.c.last_tool_name
        ),
        last_tool_phase=sa.func.coalesce(
            sa.bindparam("b_tool_phase", type_=sa.String), runs.c.last_tool_phase
        ),
    )
)
NO_LIVENESS = liveness.Liveness()


def close_requests(conn: sa.Connection, run_ids: Sequence[str]) -> None:
    """Close the open requests for a person of runs that end without them being answered
    (cancelled, taken over, timed out in error): ``closed``, no answer, no outcome."""
    conn.execute(
        input_requests.update()
        .where(input_requests.c.run_id.in_(list(run_ids)), input_requests.c.status == "open")
        .values(status="closed")
    )
