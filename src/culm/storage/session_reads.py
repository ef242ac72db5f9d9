"""The reads of a session (the session, its messages, its latest compaction, and the three
together when a run starts): each a function over a sync connection, run in a read transaction
of its own by ``SqlStore.read`` (see ``reader.py``), the statements built once (building one per
call cost more than SQLite takes to run it)."""

from __future__ import annotations

import sqlalchemy as sa
from pydantic import TypeAdapter

from culm.domain.compaction import Compaction
from culm.domain.models import Message, Session
from culm.storage import compactions as compaction_rows
from culm.storage.base import SessionState
from culm.storage.rows import session_from_row
from culm.storage.schema import messages, sessions

_messages: TypeAdapter[Message] = TypeAdapter(Message)
_SESSION = sessions.select().where(sessions.c.session_id == sa.bindparam("session_id"))
_MESSAGES = (
    sa.select(messages.c.body)
    .where(messages.c.session_id == sa.bindparam("session_id"))
    .order_by(messages.c.idx)
)


def session(conn: sa.Connection, session_id: str) -> Session | None:
    row = conn.execute(_SESSION, {"session_id": session_id}).first()
    return None if row is None else session_from_row(row)


def messages_of(conn: sa.Connection, session_id: str) -> list[Message]:
    """A session's stored messages, in order."""
    bodies = conn.scalars(_MESSAGES, {"session_id": session_id})
    return [_messages.validate_json(body) for body in bodies]


def compaction(conn: sa.Connection, session_id: str) -> Compaction | None:
    """A session's latest compaction."""
    row = conn.execute(compaction_rows.LATEST_QUERY, {"session_id": session_id}).first()
    return None if row is None else compaction_rows.from_row(row._mapping)


def session_state(conn: sa.Connection, session_id: str) -> SessionState | None:
    """What a run starts from, in one snapshot (None: no such session)."""
    found = session(conn, session_id)
    if found is None:
        return None
    return SessionState(found, messages_of(conn, session_id), compaction(conn, session_id))
