"""The store's compaction rows (``compactions``): write one, read a session's latest or all."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa

from culm.domain.compaction import Compaction
from culm.storage.schema import compactions

LAST_SEQ = sa.select(sa.func.max(compactions.c.seq)).where(
    compactions.c.session_id == sa.bindparam("session_id")
)


def insert(conn: sa.Connection, compaction: Compaction) -> Compaction:
    """Insert ``compaction`` as its session's next (seq = last + 1); returns it with its seq."""
    last = conn.scalar(LAST_SEQ, {"session_id": compaction.session_id})
    stored = compaction.model_copy(update={"seq": (last or 0) + 1})
    conn.execute(compactions.insert().values(to_row(stored)))
    return stored


def to_row(compaction: Compaction) -> dict[str, Any]:
    data = compaction.model_dump(exclude={"kept", "elided", "summary_usage"})
    state = compaction.model_dump(mode="json", include={"kept", "elided"})
    usage = compaction.summary_usage.model_dump(mode="json")
    return {**data, "summary_usage": usage, "state": state}


def from_row(row: Mapping[str, Any]) -> Compaction:
    data = dict(row)
    state = data.pop("state") or {}
    return Compaction.model_validate({**data, **state})


def latest_query(session_id: str) -> sa.Select[Any]:
    return (
        sa.select(compactions)
        .where(compactions.c.session_id == session_id)
        .order_by(compactions.c.seq.desc())
        .limit(1)
    )


def list_query(session_id: str) -> sa.Select[Any]:
    return (
        sa.select(compactions)
        .where(compactions.c.session_id == session_id)
        .order_by(compactions.c.seq)
    )
