"""The store's health: a refused write is not a store failure; a real failure is one, named."""

from __future__ import annotations

import asyncio

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from culm.domain.models import Session
from culm.errors import StorageUnavailableError
from culm.storage.health import is_store_failure
from culm.storage.sql import SqlStore
from tests.pgfaults import cut_off


async def test_a_working_store_is_healthy_and_a_refused_write_keeps_it_so(store: SqlStore) -> None:
    assert await store.check() is None
    session = Session(session_id="s", model="scripted:echo", workspace="/tmp")
    await store.create_session(session)
    with pytest.raises(sa.exc.IntegrityError):  # the same id twice: the caller's mistake
        await store.create_session(session)
    assert await store.check() is None


async def test_a_failing_write_is_storage_unavailable_until_one_succeeds(store: SqlStore) -> None:
    def broken(conn: sa.Connection) -> None:
        conn.execute(sa.text("SELECT * FROM no_such_table_at_all"))

    def fine(conn: sa.Connection) -> int:
        return int(conn.scalar(sa.text("SELECT 1")) or 0)

    if store.dialect.name == "sqlite":  # SQLite reports a missing table as OperationalError
        with pytest.raises(StorageUnavailableError, match="no_such_table_at_all"):
            await store.write(broken)
        problem = await store.check()
        assert problem is not None and "unavailable: no such table: no_such_table_at_all" in problem
    assert await store.write(fine) == 1
    assert await store.check() is None


async def test_a_postgres_database_that_refuses_connections_is_a_store_failure(
    postgres_store: SqlStore, postgres_head_url: str
) -> None:
    """asyncpg's errors reach SQLAlchemy as plain DBAPIError: the SQLSTATE (here 55000, the
    database does not accept connections) says whether the store cannot serve."""
    async with cut_off(postgres_head_url):
        # The pooled connection just ended may not be seen closed yet (no ping at checkout):
        # its statement fails, a store failure too, and the pool reconnects from then on.
        with pytest.raises(StorageUnavailableError):
            await postgres_store.get_run("any")
        with pytest.raises(StorageUnavailableError, match="not currently accepting connections"):
            await postgres_store.get_run("any")
        problem = await postgres_store.check()
        assert problem is not None and "accepting connections" in problem
    assert await postgres_store.get_run("any") is None
    assert await postgres_store.check() is None


async def test_a_postgres_store_is_healthy_again_once_the_server_commits_again(
    postgres_store: SqlStore, postgres_head_url: str
) -> None:
    """A process that writes nothing of its own (an API-only `culm serve --no-worker`) must not
    stay degraded after a failed write once the database is back: check() tries a write."""
    session = Session(session_id="s", model="scripted:echo", workspace="/tmp")
    async with cut_off(postgres_head_url):
        with pytest.raises(StorageUnavailableError):
            await postgres_store.create_session(session)
        problem = await postgres_store.check()
        # The failed write's error, for how long (its probe failed too: not served again).
        assert problem is not None and "accepting connections" in problem and "(for " in problem
    assert await postgres_store.check() is None
    assert await postgres_store.get_session("s") is None  # the probe wrote nothing


async def test_a_deadlock_on_postgres_is_a_transient_store_failure(postgres_head_url: str) -> None:
    """Two transactions that lock two rows in opposite orders: PostgreSQL breaks the deadlock by
    failing one (SQLSTATE 40P01). That is a failure a retry gets past (the event writer retries
    it), not a refusal of the data (which would isolate a run)."""
    engine = create_async_engine(postgres_head_url)
    try:
        async with engine.begin() as conn:
            await conn.execute(sa.text("CREATE TABLE pair (id int PRIMARY KEY)"))
            await conn.execute(sa.text("INSERT INTO pair VALUES (1), (2)"))
        first_locked, second_locked = asyncio.Event(), asyncio.Event()

        async def lock(first: int, second: int, mine: asyncio.Event, theirs: asyncio.Event) -> None:
            async with engine.begin() as conn:
                await conn.execute(sa.text(f"SELECT id FROM pair WHERE id = {first} FOR UPDATE"))
                mine.set()
                await theirs.wait()
                await conn.execute(sa.text(f"SELECT id FROM pair WHERE id = {second} FOR UPDATE"))

        outcomes = await asyncio.gather(
            lock(1, 2, first_locked, second_locked),
            lock(2, 1, second_locked, first_locked),
            return_exceptions=True,
        )
        errors = [outcome for outcome in outcomes if isinstance(outcome, BaseException)]
        assert len(errors) == 1, outcomes
        assert isinstance(errors[0], sa.exc.DBAPIError)
        assert getattr(errors[0].orig, "sqlstate", None) == "40P01"
        assert is_store_failure(errors[0])
    finally:
        await engine.dispose()
