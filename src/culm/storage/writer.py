"""Write transactions: each one a synchronous function over a connection, run as a whole.

A write is ``fn(conn: sqlalchemy.Connection) -> T``: the store's SQLAlchemy Core statements on a
sync connection, inside one transaction that commits when ``fn`` returns and rolls back when it
raises. Where it runs is the dialect's business:

* SQLite: on one dedicated thread with its own connection (:class:`ThreadWriter`). The whole
  transaction is one hop from the event loop to that thread, instead of a hop per statement;
  and the thread, running one transaction after another in the order they were asked for, is
  what serializes the process's writes (SQLite has one writer).
* PostgreSQL: on the async engine, through ``AsyncConnection.run_sync`` (:class:`AsyncWriter`).

Either way a write is never torn by its caller's cancellation: the caller gets its
``CancelledError`` at once, and the transaction still runs to its end (commit or rollback), so
no cancel can leave a half-written transaction or SQLite's write lock held.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from culm.errors import EngineClosedError

T = TypeVar("T")
Write = Callable[[sa.Connection], T]


class Writer(ABC):
    @abstractmethod
    async def run(self, fn: Write[T]) -> T:
        """Run ``fn`` as one write transaction and return what it returns."""

    @abstractmethod
    async def aclose(self) -> None:
        """Finish the writes already asked for, then release the connection."""


class ThreadWriter(Writer):
    """Runs every write transaction on one thread, one after another in the order they were
    asked for, over one connection of ``engine`` that only that thread opens and uses."""

    def __init__(self, engine: sa.Engine, *, name: str) -> None:
        self._engine = engine
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self._conn: sa.Connection | None = None  # the writer thread's, kept open
        self._closed = False

    async def run(self, fn: Write[T]) -> T:
        if self._closed:
            raise EngineClosedError("the store is closed")
        loop = asyncio.get_running_loop()
        # Shielded: a cancelled caller must not take a queued transaction out of the queue
        # (it runs anyway, as it would have had the caller waited), and one under way always
        # finishes on the thread.
        return await asyncio.shield(loop.run_in_executor(self._executor, self._transaction, fn))

    def _transaction(self, fn: Write[T]) -> T:
        if self._conn is None:
            self._conn = self._engine.connect()
        with self._conn.begin():
            return fn(self._conn)

    def _dispose(self) -> None:
        if self._conn is not None:
            self._conn.close()
        self._engine.dispose()

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        # After every write asked for so far (the thread takes them in order), on the thread
        # that opened the connection.
        disposed = asyncio.get_running_loop().run_in_executor(self._executor, self._dispose)
        try:
            await asyncio.shield(disposed)
        finally:
            # The thread ends once its queue is empty; join it unless we were cancelled.
            self._executor.shutdown(wait=disposed.done())


class AsyncWriter(Writer):
    """Runs each write transaction on an async engine (``run_sync``); the database serializes
    what must be. It does not own the engine."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def run(self, fn: Write[T]) -> T:
        return await asyncio.shield(self._transaction(fn))

    async def _transaction(self, fn: Write[T]) -> T:
        async with self._engine.begin() as conn:
            return await conn.run_sync(fn)

    async def aclose(self) -> None:
        pass
