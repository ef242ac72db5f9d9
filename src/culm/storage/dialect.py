"""The dialect seam: everything that differs between SQLite and PostgreSQL.

The store speaks portable SQLAlchemy Core; it asks its :class:`Dialect` for the reader engine
and for the :class:`~culm.storage.writer.Writer` that runs its write transactions (and so how
they begin and whether they are serialized), and for what a unique-constraint violation looks
like.

Both dialects store text the same way: every string written through SQLAlchemy (a column's
value, and every string inside a JSON value) goes through :func:`culm.domain.text.storable`,
which replaces NUL and lone surrogates with U+FFFD. PostgreSQL would refuse the first, any
UTF-8 database the second; a model's or a tool's text must never make a write fail. (Requests
with them are refused before they get here; run event bodies are JSON text, whose escapes
hold a NUL faithfully.)
"""

from __future__ import annotations

import json
import time
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from culm.domain.text import storable_parameters, storable_value
from culm.errors import ConfigError
from culm.storage.reader import AsyncReader, Reader, ThreadReader
from culm.storage.writer import AsyncWriter, ThreadWriter, Writer

WAL_CHECKPOINT_PAGES = 2000
WAL_SIZE_LIMIT = 4 * 1024 * 1024


class Dialect(ABC):
    name: str

    def __init__(self, url: sa.URL) -> None:
        self.url = url  # with the async driver

    @abstractmethod
    def create_engines(self) -> tuple[Writer, AsyncEngine]:
        """The writer, and the engine for reads."""

    @abstractmethod
    def reads(self, reader: AsyncEngine) -> Reader:
        """What runs whole read transactions (``reader``: the engine for reads)."""

    @abstractmethod
    def is_unique_violation(self, exc: sa.exc.IntegrityError) -> bool: ...


class SqliteDialect(Dialect):
    """SQLite in WAL mode with a busy timeout.

    Writes take the write lock up front (``BEGIN IMMEDIATE``) so two transactions can never
    both hold a read lock and wait for each other to upgrade. In one process they run one
    after another on the writer's thread (one sync connection: a transaction is one hop from
    the event loop, not one per statement); across processes the busy timeout makes them
    queue. Reads keep the async driver, on a pool of their own; the hottest ones, whole read
    transactions, run on threads of their own (:class:`ThreadReader`).
    """

    name = "sqlite"
    busy_timeout_ms = 30_000
    read_threads = 4

    def create_engines(self) -> tuple[Writer, AsyncEngine]:
        database = self.url.database
        if not database or database == ":memory:":
            raise ConfigError("CULM_DATABASE_URL: SQLite needs a file path (WAL mode)")
        Path(database).parent.mkdir(parents=True, exist_ok=True)
        writes = sa.create_engine(
            self.url.set(drivername="sqlite+pysqlite"),
            pool_size=1,
            max_overflow=0,
            json_serializer=json_dumps,
        )
        # Many lagging subscribers may read at once: they queue for a connection, never give up.
        # Eight kept open, none beyond: a connection opened for a burst and closed after it
        # (an overflow) costs its own thread, the file's open and the PRAGMAs below each time.
        reader = create_async_engine(self.url, pool_size=8, max_overflow=0, pool_timeout=3600)
        storable_writes(writes)
        self._configure(writes, "BEGIN IMMEDIATE", raw=True)
        self._configure(reader.sync_engine, "BEGIN")
        return ThreadWriter(writes, name="culm-sqlite-writer"), reader

    def reads(self, reader: AsyncEngine) -> Reader:
        size = self.read_threads
        engine = sa.create_engine(
            self.url.set(drivername="sqlite+pysqlite"), pool_size=size, max_overflow=0
        )
        self._configure(engine, "BEGIN", raw=True)
        return ThreadReader(engine, size=size, name="culm-sqlite-reader")

    def _configure(self, engine: sa.Engine, begin: str, *, raw: bool = False) -> None:
        """``raw``: the engine's connections are plain ``sqlite3`` ones (the writer's)."""
        busy = self.busy_timeout_ms

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_connection: Any, _record: Any) -> None:
            # Let SQLAlchemy (not the driver) decide when transactions begin.
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            cursor.execute(f"PRAGMA busy_timeout = {busy}")
            cursor.execute("PRAGMA journal_mode = WAL")
            cursor.execute("PRAGMA synchronous = NORMAL")
            cursor.execute("PRAGMA foreign_keys = ON")
            # Checkpoint the WAL every ~8 MB instead of ~4 MB: under a heavy write load (the
            # metrics' batches) a page changed by many commits is copied back fewer times. After
            # a checkpoint the file is cut back to WAL_SIZE_LIMIT, so it stays bounded (without
            # the limit, one long run left a 16 MB WAL behind for good).
            cursor.execute(f"PRAGMA wal_autocheckpoint = {WAL_CHECKPOINT_PAGES}")
            cursor.execute(f"PRAGMA journal_size_limit = {WAL_SIZE_LIMIT}")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _on_begin(conn: sa.Connection) -> None:
            if raw:  # straight to the driver: a tenth of what exec_driver_sql costs
                conn.connection.dbapi_connection.execute(begin)  # type: ignore[union-attr]
            else:
                conn.exec_driver_sql(begin)

    def is_unique_violation(self, exc: sa.exc.IntegrityError) -> bool:
        return "UNIQUE constraint failed" in str(exc.orig)


# A session idle inside a transaction for longer than this is ended by the server. culm's
# transactions do not wait on anything between their statements, so such a session belongs to a
# process that stalled mid-transaction (SIGSTOP, a VM pause, a partition): the row locks it holds
# would hide its runs from every sweeper (FOR UPDATE SKIP LOCKED) for as long as the stall lasts.
# Under the default lease (10 s), so its runs are taken over once their leases expire; not much
# shorter, because a busy event loop (or a loaded machine) can leave a live transaction idle for
# a while between two statements: 2 s ended a migration under CI load once.
IDLE_IN_TRANSACTION_TIMEOUT_MS = 5000
# A pooled connection idle for longer than this is pinged at checkout (``skip_closed``).
PING_IDLE_SECONDS = 1.0


class PostgresDialect(Dialect):
    name = "postgresql"

    def create_engines(self) -> tuple[Writer, AsyncEngine]:
        timeout = str(IDLE_IN_TRANSACTION_TIMEOUT_MS)
        engine = create_async_engine(
            self.url,
            pool_size=10,
            max_overflow=10,
            pool_use_lifo=True,
            json_serializer=json_dumps,
            connect_args={"server_settings": {"idle_in_transaction_session_timeout": timeout}},
        )
        storable_writes(engine.sync_engine)
        skip_closed(engine.sync_engine)
        return AsyncWriter(engine), engine

    def reads(self, reader: AsyncEngine) -> Reader:
        return AsyncReader(reader)

    def is_unique_violation(self, exc: sa.exc.IntegrityError) -> bool:
        return getattr(exc.orig, "sqlstate", None) == "23505" or "unique" in str(exc.orig).lower()


def skip_closed(engine: sa.Engine) -> None:
    """Replace a pooled connection that is closed at checkout (the server restarted, or ended
    the session) by a new one, asking the server only about a connection idle for longer than
    ``PING_IDLE_SECONDS``.

    SQLAlchemy's ``pool_pre_ping`` asks before every transaction: on asyncpg three round trips
    (``BEGIN``, an empty query, ``ROLLBACK``), a large part of a run's reservation and of its
    claim on a loaded machine. A connection in steady use is checked without a round trip:
    asyncpg marks it closed as soon as the event loop has seen its socket close. One that broke
    unseen fails its statement, which invalidates the pool's older connections. The pool is
    LIFO, so the connections a busy process uses stay few and recent."""

    @event.listens_for(engine, "checkin")
    def _checkin(_dbapi_connection: Any, record: Any) -> None:
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _checkout(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        if dbapi_connection.driver_connection.is_closed():
            raise sa.exc.DisconnectionError("the connection was closed")
        idle_since = record.info.get("idle_since", time.monotonic())
        if time.monotonic() - idle_since > PING_IDLE_SECONDS:
            try:
                engine.dialect.do_ping(dbapi_connection)
            except Exception as exc:
                raise sa.exc.DisconnectionError(f"the connection failed a ping: {exc}") from exc


def json_dumps(value: Any) -> str:
    """SQLAlchemy's JSON serializer (``json.dumps``), with every string made storable. The
    escapes it writes for NUL and surrogates are looked for first: most values have none."""
    text = json.dumps(value)
    if "\\u0000" in text or "\\ud" in text:  # \ud also starts a valid pair: then nothing changes
        text = json.dumps(storable_value(value))
    return text


def storable_writes(engine: sa.Engine) -> None:
    """Make every string parameter of ``engine``'s statements storable."""

    @event.listens_for(engine, "before_cursor_execute", retval=True)
    def _storable(
        conn: sa.Connection,
        cursor: Any,
        statement: str,
        parameters: Any,
        context: Any,
        executemany: bool,
    ) -> tuple[str, Any]:
        return statement, storable_parameters(parameters)


def dialect_for(url: str) -> Dialect:
    parsed = sa.make_url(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        if parsed.drivername != "sqlite+aiosqlite":
            parsed = parsed.set(drivername="sqlite+aiosqlite")
        return SqliteDialect(parsed)
    if backend == "postgresql":
        if parsed.drivername != "postgresql+asyncpg":
            parsed = parsed.set(drivername="postgresql+asyncpg")
        return PostgresDialect(parsed)
    raise ConfigError(f"CULM_DATABASE_URL: unsupported database {backend!r} (sqlite, postgresql)")
