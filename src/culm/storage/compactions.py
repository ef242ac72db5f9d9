"""The store's compaction rows (``compactions``): write one, read a session's latest or all."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa

from culm.domain.compaction import Compaction
from culm.errors import SessionBusyError, SessionChangedError
from culm.storage import ops
from culm.storage.schema import compactions, messages, sessions

LAST_SEQ = sa.select(sa.func.max(compactions.c.seq)).where(
    compactions.c.session_id == sa.bindparam("session_id")
)


def insert(conn: sa.Connection, compaction: Compaction) -> Compaction:
    """Insert ``compaction`` as its session's next (seq = last + 1); returns it with its seq."""
    last = conn.scalar(LAST_SEQ, {"session_id": compaction.session_id})
    stored = compaction.model_copy(update={"seq": (last or 0) + 1})
    conn.execute(compactions.insert().values(to_row(stored)))
    return stored


def check_idle(conn: sa.Connection, compaction: Compaction) -> None:
    """Before writing a compaction made outside a run: no run holds the session's slot, and the
    transcript is still the one it was made from (no run came and went meanwhile).

    The session's row is locked first: a run's insert holds a key-share lock on it (its foreign
    key) until it commits, so this waits for a run being created and then sees it, or makes
    that run wait until the compaction is stored (PostgreSQL; SQLite's writes are serialized)."""
    session_id = compaction.session_id
    conn.execute(
        sa.select(sessions.c.session_id)
        .where(sessions.c.session_id == session_id)
        .with_for_update()
    )
    active = ops.active_run_id(conn, session_id)
    if active is not None:
        raise SessionBusyError(session_id, active)
    last = conn.execute(
        sa.select(messages.c.idx, messages.c.run_id)
        .where(messages.c.session_id == session_id)
        .order_by(messages.c.idx.desc())
        .limit(1)
    ).first()
    if (0 if last is None else last.idx + 1) != compaction.message_count:
        raise SessionChangedError(session_id, last.run_id if last is not None else "")


def to_row(compaction: Compaction) -> dict[str, Any]:
    data = compaction.model_dump(exclude={"kept", "elided", "summary_usage"})
    state = compaction.model_dump(mode="json", include={"kept", "elided"})
    usage = compaction.summary_usage.model_dump(mode="json")
    return {**data, "summary_usage": usage, "state": state}


def from_row(row: Mapping[Any, Any]) -> Compaction:
    data = dict(row)
    state = data.pop("state") or {}
    return Compaction.model_validate({**data, **state})


# A session's latest compaction (parameter: ``session_id``).
LATEST_QUERY = (
    sa.select(compactions)
    .where(compactions.c.session_id == sa.bindparam("session_id"))
    .order_by(compactions.c.seq.desc())
    .limit(1)
)


def list_query(session_id: str) -> sa.Select[Any]:
    return (
        sa.select(compactions)
        .where(compactions.c.session_id == session_id)
        .order_by(compactions.c.seq)
    )
