"""Read transactions run whole: each one a synchronous function over a connection.

A read is ``fn(conn: sqlalchemy.Connection) -> T``, SQLAlchemy Core statements on a sync
connection inside one read transaction (one snapshot: what it reads is consistent). Where it
runs is the dialect's business:

* SQLite: on a small pool of threads, each with a connection of its own
  (:class:`ThreadReader`). The whole read is one hop from the event loop to a thread and one
  back. On the async reader engine (aiosqlite) every driver call is such a round trip (a
  statement is four: cursor, execute, fetchall, close), ~45 µs of CPU each: a run's start-up
  read of its session (three statements, BEGIN and ROLLBACK) took fourteen of them.
* PostgreSQL: on the async engine, through ``AsyncConnection.run_sync`` (:class:`AsyncReader`);
  asyncpg's statements cost no thread hop.

A read has no side effect, so a cancelled caller simply stops waiting for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from culm.errors import EngineClosedError
from culm.storage.writer import Job, settle

T = TypeVar("T")
Read = Callable[[sa.Connection], T]


class Reader(ABC):
    @abstractmethod
    async def run(self, fn: Read[T]) -> T:
        """Run ``fn`` in one read transaction and return what it returns."""

    @abstractmethod
    async def aclose(self) -> None:
        """Let the reads under way finish, then release the connections."""


class ThreadReader(Reader):
    """``size`` threads, started on first use, each with a connection of ``engine`` that only it
    uses; a read waits in line while all are busy."""

    def __init__(self, engine: sa.Engine, *, size: int, name: str) -> None:
        self._engine = engine
        self._queue: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._threads = [
            threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True)
            for i in range(size)
        ]
        self._started = False
        self._closed = False

    async def run(self, fn: Read[T]) -> T:
        if self._closed:
            raise EngineClosedError("the store is closed")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        if not self._started:
            self._started = True
            for thread in self._threads:
                thread.start()
        self._queue.put(Job(fn, future, loop))
        return await future

    def _work(self) -> None:
        conn: sa.Connection | None = None
        try:
            while (job := self._queue.get()) is not None:
                conn = self._serve(conn, job)
                del job  # not kept, with what it read, until the next read
        finally:
            if conn is not None:
                conn.close()

    def _serve(self, conn: sa.Connection | None, job: Job) -> sa.Connection | None:
        """Run ``job`` (on a new connection if there is none or it broke); the connection."""
        try:
            if conn is None or conn.invalidated:
                conn = self._engine.connect()
            with conn.begin():
                outcome: tuple[Job, Any, BaseException | None] = (job, job.fn(conn), None)
        except BaseException as exc:
            outcome = (job, None, exc)
        with contextlib.suppress(RuntimeError):  # its loop is closed: nobody waits
            job.loop.call_soon_threadsafe(settle, [outcome])
        return conn

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._started:
            for _ in self._threads:
                self._queue.put(None)
            await asyncio.to_thread(self._join)
        self._engine.dispose()

    def _join(self) -> None:
        for thread in self._threads:
            thread.join()


class AsyncReader(Reader):
    """Runs each read on an async engine (``run_sync``). It does not own the engine."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def run(self, fn: Read[T]) -> T:
        async with self._engine.connect() as conn, conn.begin():
            return await conn.run_sync(fn)

    async def aclose(self) -> None:
        pass
