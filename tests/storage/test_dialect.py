"""The dialect seam: which dialect a URL gets, how SQLite's connections are set up (the
writer's and the readers'), what a unique violation looks like, and JSON made storable."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from culm.errors import ConfigError
from culm.storage import dialect
from culm.storage.dialect import PostgresDialect, SqliteDialect, dialect_for, json_dumps
from culm.storage.sql import SqlStore
from tests.storage.queue_support import T0, new_session

PRAGMAS = {
    "busy_timeout": 30_000,
    "journal_mode": "wal",
    "synchronous": 1,  # NORMAL
    "foreign_keys": 1,
    "wal_autocheckpoint": dialect.WAL_CHECKPOINT_PAGES,
    "journal_size_limit": dialect.WAL_SIZE_LIMIT,
}


@pytest.mark.parametrize(
    ("url", "kind", "driver"),
    [
        ("sqlite:///a/culm.db", SqliteDialect, "sqlite+aiosqlite"),
        ("sqlite+pysqlite:///a/culm.db", SqliteDialect, "sqlite+aiosqlite"),
        ("sqlite+aiosqlite:///a/culm.db", SqliteDialect, "sqlite+aiosqlite"),
        ("postgresql://u@h/db", PostgresDialect, "postgresql+asyncpg"),
        ("postgresql+psycopg://u@h/db", PostgresDialect, "postgresql+asyncpg"),
        ("postgresql+asyncpg://u@h/db", PostgresDialect, "postgresql+asyncpg"),
    ],
)
def test_a_url_gets_its_dialect_with_the_async_driver(url: str, kind: type, driver: str) -> None:
    chosen = dialect_for(url)
    assert type(chosen) is kind
    assert chosen.url.drivername == driver
    assert chosen.url.database == sa.make_url(url).database
    assert chosen.name == ("sqlite" if kind is SqliteDialect else "postgresql")


def test_another_database_is_refused_by_name() -> None:
    with pytest.raises(ConfigError, match=r"unsupported database 'mysql' \(sqlite, postgresql\)"):
        dialect_for("mysql://u@h/db")


@pytest.mark.parametrize("url", ["sqlite+aiosqlite://", "sqlite+aiosqlite:///:memory:"])
def test_sqlite_needs_a_file(url: str) -> None:
    with pytest.raises(
        ConfigError, match=r"^CULM_DATABASE_URL: SQLite needs a file path \(WAL mode\)$"
    ):
        dialect_for(url).create_engines()


async def test_sqlite_creates_the_files_directory_and_sets_up_every_connection(
    tmp_path: Path,
) -> None:
    store = SqlStore(f"sqlite:///{tmp_path / 'a' / 'b' / 'culm.db'}")
    await store.start()
    try:
        assert (tmp_path / "a" / "b" / "culm.db").exists()

        def pragmas(conn: sa.Connection) -> dict[str, Any]:
            return {name: conn.exec_driver_sql(f"PRAGMA {name}").scalar() for name in PRAGMAS}

        assert await store.write(pragmas) == PRAGMAS
        async with store.read_connection() as conn:
            assert await conn.run_sync(pragmas) == PRAGMAS
    finally:
        await store.aclose()


async def test_sqlite_writes_take_the_write_lock_when_they_begin(tmp_path: Path) -> None:
    """``BEGIN IMMEDIATE``: a write transaction that has only read holds the write lock (and
    the driver's own transaction handling is off, or it would begin none at all)."""
    path = tmp_path / "culm.db"
    store = SqlStore(f"sqlite:///{path}")
    await store.start()
    try:

        def lock_held(conn: sa.Connection) -> str:
            import sqlite3

            other = sqlite3.connect(path, timeout=0, isolation_level=None)
            try:
                conn.exec_driver_sql("SELECT 1").scalar()  # a read only
                try:
                    other.execute("BEGIN IMMEDIATE")
                except sqlite3.OperationalError as exc:
                    return str(exc)
                other.execute("ROLLBACK")
                return "not locked"
            finally:
                other.close()

        assert await store.write(lock_held) == "database is locked"
        async with store.read_connection() as conn:
            assert await conn.run_sync(lock_held) == "not locked"  # a reader's BEGIN is deferred
    finally:
        await store.aclose()


async def test_a_duplicate_key_is_a_unique_violation_on_each_backend(store: SqlStore) -> None:
    session = await new_session(store)
    insert = sa.text(
        "INSERT INTO sessions (session_id, kind, model, tools, workspace, metadata, created_at)"
        " VALUES (:session_id, 'chat', 'm', '[]', '/w', '{}', :t)"
    )
    duplicate = {"session_id": session.session_id, "t": T0}
    null = {"session_id": "x", "t": None}  # NOT NULL: a violation, not a unique one
    for values, unique in ((duplicate, True), (null, False)):
        with pytest.raises(sa.exc.IntegrityError) as failed:
            await store.write(lambda conn, v=values: conn.execute(insert, v))  # type: ignore[misc]
        assert store.dialect.is_unique_violation(failed.value) is unique


@pytest.mark.parametrize(
    ("value", "stored"),
    [
        ({"a": "x\x00y"}, {"a": "x\ufffdy"}),
        ({"b": ["\ud800"]}, {"b": ["\ufffd"]}),
        ({"a": "x\x00y", "b": ["\udfff"]}, {"a": "x\ufffdy", "b": ["\ufffd"]}),
        ({"a": "\U0001f600", "b": "plain"}, {"a": "\U0001f600", "b": "plain"}),  # a valid pair
        ({"a": "plain"}, {"a": "plain"}),
    ],
)
def test_json_with_nul_or_a_lone_surrogate_is_made_storable(
    value: dict[str, Any], stored: dict[str, Any]
) -> None:
    assert json_dumps(value) == json.dumps(stored)


async def test_postgres_sessions_end_idle_transactions_and_take_storable_json(
    postgres_store: SqlStore,
) -> None:
    async with postgres_store.read_connection() as conn:
        setting = await conn.scalar(sa.text("SHOW idle_in_transaction_session_timeout"))
    assert setting == f"{dialect.IDLE_IN_TRANSACTION_TIMEOUT_MS // 1000}s"
    # JSONB refuses \u0000: the engine's serializer replaces it (and a lone surrogate).
    session = await new_session(postgres_store)
    table = sa.table("sessions", sa.column("session_id"), sa.column("metadata", sa.JSON))
    value = {"note": "a\x00b", "odd": "\udc80"}
    update = table.update().where(table.c.session_id == session.session_id)
    await postgres_store.write(lambda conn: conn.execute(update.values(metadata=value)))
    stored = await postgres_store.get_session(session.session_id)
    assert stored is not None and stored.metadata == {"note": "a\ufffdb", "odd": "\ufffd"}


def test_postgres_pools_ten_connections() -> None:
    writer, reader = dialect_for("postgresql://u@127.0.0.1:1/db").create_engines()  # unopened
    assert reader.pool.size() == 10  # type: ignore[attr-defined]


class _Coded(Exception):
    def __init__(self, sqlstate: str, message: str) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate


@pytest.mark.parametrize(
    ("orig", "unique"),
    [
        (_Coded("23505", "duplicate key"), True),  # by its SQLSTATE
        (Exception('duplicate key value violates UNIQUE constraint "pk"'), True),  # its text
        (_Coded("23502", 'null value in column "kind" violates not-null constraint'), False),
    ],
)
def test_postgres_knows_a_unique_violation_by_its_code_or_its_text(
    orig: Exception, unique: bool
) -> None:
    # Either alone: a driver's error may carry no SQLSTATE.
    failed = sa.exc.IntegrityError("INSERT …", {}, orig)
    assert dialect_for("postgresql://u@h/db").is_unique_violation(failed) is unique


async def test_sqlite_pools_one_writer_connection_and_patient_readers(tmp_path: Path) -> None:
    import threading

    writer, reader = dialect_for(f"sqlite:///{tmp_path / 'culm.db'}").create_engines()
    try:
        pool_size = await writer.run(lambda conn: conn.engine.pool.size())  # type: ignore[attr-defined]
        assert pool_size == 1
        # The writer's thread, by its name in thread dumps (py-spy).
        assert "culm-sqlite-writer" in {thread.name for thread in threading.enumerate()}
        # Many lagging subscribers read at once: a few connections, waited for, never given up.
        assert reader.pool.size() == 8  # type: ignore[attr-defined]
        assert reader.pool.timeout() == 3600  # type: ignore[attr-defined]
    finally:
        await writer.aclose()
        await reader.dispose()


async def test_sqlite_readers_keep_their_connections_across_bursts(tmp_path: Path) -> None:
    """Bursts of more readers than connections open the pool's eight once: none is opened for
    a burst and closed after it (each costs a thread, the file's open and its PRAGMAs)."""
    writer, reader = dialect_for(f"sqlite:///{tmp_path / 'culm.db'}").create_engines()
    opened: list[object] = []
    sa.event.listen(reader.sync_engine, "connect", lambda conn, _record: opened.append(conn))

    async def read() -> None:
        async with reader.connect() as conn:
            await conn.execute(sa.text("SELECT 1"))
            await asyncio.sleep(0.01)  # held while the others ask for theirs

    try:
        for _ in range(3):
            await asyncio.gather(*(read() for _ in range(20)))
        assert len(opened) == 8
    finally:
        await writer.aclose()
        await reader.dispose()
