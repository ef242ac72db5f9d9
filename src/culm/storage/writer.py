"""Write transactions: each one a synchronous function over a connection, run as a whole.

A write is ``fn(conn: sqlalchemy.Connection) -> T``: the store's SQLAlchemy Core statements on a
sync connection, inside one transaction that commits when ``fn`` returns and rolls back when it
raises. Where it runs is the dialect's business:

* SQLite: on one dedicated thread with its own connection (:class:`ThreadWriter`). The whole
  transaction is one hop from the event loop to that thread, instead of a hop per statement;
  the thread, running the writes in the order they were asked for, is what serializes the
  process's writes (SQLite has one writer); and the writes that queue up while it is busy share
  one commit (each in its own savepoint).
* PostgreSQL: on the async engine, through ``AsyncConnection.run_sync`` (:class:`AsyncWriter`).

Either way a write is never torn by its caller's cancellation: the caller gets its
``CancelledError`` at once, and the transaction still runs to its end (commit or rollback), so
no cancel can leave a half-written transaction or SQLite's write lock held.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from culm.errors import EngineClosedError

T = TypeVar("T")
Write = Callable[[sa.Connection], T]
# In ``conn.info`` while a write runs: True when it runs in a savepoint of a group commit.
IN_SAVEPOINT = "culm.in_savepoint"


class Writer(ABC):
    @abstractmethod
    async def run(self, fn: Write[T]) -> T:
        """Run ``fn`` as one write transaction and return what it returns."""

    @abstractmethod
    async def aclose(self) -> None:
        """Finish the writes already asked for, then release the connection."""


class ThreadWriter(Writer):
    """Runs every write on one thread, over one connection of ``engine`` that only that thread
    opens and uses, in the order the writes were asked for.

    Group commit: the writes that queued up while the thread was busy run together in one
    transaction, each inside its own savepoint. A write that raises is rolled back to its
    savepoint alone (its caller gets the exception, the others are unaffected, as if each had
    its own transaction); one commit, one hop back to the event loop, for the whole group. If
    the commit itself fails, every write of the group gets that error (nothing was written).
    Under load this turns many small transactions into few larger ones; alone, a write is a
    group of one.
    """

    def __init__(self, engine: sa.Engine, *, name: str) -> None:
        self._engine = engine
        self._queue: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)
        self._conn: sa.Connection | None = None  # the writer thread's, kept open
        self._closed = False
        self._done: asyncio.Future[None] | None = None

    async def run(self, fn: Write[T]) -> T:
        if self._closed:
            raise EngineClosedError("the store is closed")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        if not self._thread.is_alive():
            self._thread.start()
        self._queue.put(Job(fn, future, loop))
        # Shielded: a cancelled caller must not take a queued write out of the queue (it runs
        # anyway, as it would have had the caller waited), and one under way always finishes.
        return await asyncio.shield(future)

    def _work(self) -> None:
        while True:
            job = self._queue.get()
            group: list[Job] = []
            while job is not None:
                group.append(job)
                try:
                    job = self._queue.get_nowait()
                except queue.Empty:
                    break
            if group:
                self._run_group(group)
            if job is None:  # close() asked: every write before it has run
                self._dispose()
                return

    def _run_group(self, group: list[Job]) -> None:
        outcomes: list[tuple[Job, Any, BaseException | None]] = []
        try:
            if self._conn is None:
                self._conn = self._engine.connect()
            conn = self._conn
            with conn.begin():
                # Savepoints straight to the driver: SQLAlchemy's cost ~50 µs each, these ~1 µs.
                raw = conn.connection.dbapi_connection if len(group) > 1 else None
                conn.info[IN_SAVEPOINT] = raw is not None
                for job in group:
                    if raw is not None:
                        raw.execute("SAVEPOINT culm_write")
                    try:
                        result = job.fn(conn)
                    except BaseException as exc:
                        if raw is None:
                            raise
                        raw.execute("ROLLBACK TO culm_write")
                        raw.execute("RELEASE culm_write")
                        outcomes.append((job, None, exc))
                    else:
                        if raw is not None:
                            raw.execute("RELEASE culm_write")
                        outcomes.append((job, result, None))
        except BaseException as exc:  # BEGIN or COMMIT failed (or a lone write raised)
            outcomes = [(job, None, exc) for job in group]
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[Job, Any, BaseException | None]]]
        by_loop = {}
        for outcome in outcomes:
            by_loop.setdefault(outcome[0].loop, []).append(outcome)
        for loop, settled in by_loop.items():  # one wake-up of each loop per group
            with contextlib.suppress(RuntimeError):  # that loop is closed: nobody waits
                loop.call_soon_threadsafe(settle, settled)

    def _dispose(self) -> None:
        try:
            if self._conn is not None:
                self._conn.close()
            self._engine.dispose()
        finally:
            if self._done is not None:
                done = self._done
                with contextlib.suppress(RuntimeError):
                    done.get_loop().call_soon_threadsafe(_resolve, done)

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        if not self._thread.is_alive():
            self._engine.dispose()
            return
        # After every write asked for so far (the thread takes them in order), on the thread
        # that opened the connection.
        self._done = asyncio.get_running_loop().create_future()
        self._queue.put(None)
        await asyncio.shield(self._done)
        self._thread.join()


@dataclass(frozen=True, slots=True)
class Job:
    """A transaction asked for: the function, and where its caller waits for the outcome."""

    fn: Callable[[sa.Connection], Any]
    future: asyncio.Future[Any]
    loop: asyncio.AbstractEventLoop


def settle(settled: list[tuple[Job, Any, BaseException | None]]) -> None:
    """On the caller's event loop: hand each job its result or exception (unless its caller
    stopped waiting)."""
    for job, result, exc in settled:
        if job.future.done():
            continue
        if exc is None:
            job.future.set_result(result)
        else:
            job.future.set_exception(exc)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


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
