"""Builders shared by the run-queue tests (``test_queue.py``, ``test_takeover.py``)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from culm.domain.events import RunEvent, RunEventBase, Token
from culm.domain.models import Run, Session
from culm.domain.time import new_id
from culm.storage.sql import SqlStore

T0 = datetime(2026, 11, 21, 8, 0, 0, tzinfo=UTC)


async def new_session(store: SqlStore) -> Session:
    session = Session(session_id=new_id(), model="scripted:demo", workspace="/w")
    await store.create_session(session)
    return session


def a_run(session_id: str, **fields: Any) -> Run:
    values = {"run_id": new_id(), "session_id": session_id, "model": "scripted:demo"}
    return Run(**(values | fields))


async def ready_run(store: SqlStore, **fields: Any) -> Run:
    """A ready run (unowned, holding its fresh session's slot)."""
    session = await new_session(store)
    return (await store.reserve_run(a_run(session.session_id, **fields), queue=False)).run


async def owned_run(
    store: SqlStore, owner: str, *, lease_seconds: float = 300, **fields: Any
) -> Run:
    """A run reserved for ``owner`` and started (epoch 1), on a fresh session."""
    session = await new_session(store)
    run = a_run(session.session_id, **fields)
    await store.reserve_run(run, queue=False, owner=owner, lease_seconds=lease_seconds)
    started = await store.start_run(run.run_id, 1, owner=owner)
    assert started is not None
    return started


def stamp(run: Run, events: Sequence[RunEventBase], *, first_seq: int = 1) -> list[RunEvent]:
    return [
        event.stamped(
            seq=first_seq + i,
            run_id=run.run_id,
            session_id=run.session_id,
            ts=T0 + timedelta(seconds=first_seq + i),
        )
        for i, event in enumerate(events)
    ]


def tokens(run: Run, count: int, *, first_seq: int = 1) -> list[RunEvent]:
    return stamp(run, [Token(content=f"t{i}") for i in range(count)], first_seq=first_seq)


async def get(store: SqlStore, run_id: str) -> Run:
    run = await store.get_run(run_id)
    assert run is not None
    return run


async def raw_rows(store: SqlStore, query: sa.Select[Any]) -> list[sa.Row[Any]]:
    """Rows the store does not expose through its API, read on a connection of our own."""
    engine = create_async_engine(store.dialect.url)
    try:
        async with engine.connect() as conn:
            return list(await conn.execute(query))
    finally:
        await engine.dispose()


async def raw_connection(url: str) -> Any:
    """A plain asyncpg connection to the database of ``url`` (to hold locks a test needs)."""
    import asyncpg  # type: ignore[import-untyped]

    parsed = sa.make_url(url)
    return await asyncpg.connect(
        host=parsed.host,
        port=parsed.port or 5432,
        user=parsed.username,
        password=parsed.password,
        database=parsed.database,
    )


async def until_waiting(conn: Any, count: int, *, unless: Any = None) -> None:
    """Until ``count`` sessions of this database wait for a lock (or ``unless``, a task, is
    done: it did not have to wait). Polls ``pg_stat_activity``; no timing is asserted."""
    query = (
        "SELECT count(*) FROM pg_stat_activity"
        " WHERE datname = current_database() AND wait_event_type = 'Lock'"
    )
    while await conn.fetchval(query) < count:
        if unless is not None and unless.done():
            return
        await asyncio.sleep(0.01)
