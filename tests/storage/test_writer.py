"""SQLite's writer thread: one transaction per hop, in order, never torn by a cancel."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
import sqlalchemy as sa

from culm.domain.time import utc_now
from culm.errors import EngineClosedError
from culm.storage.schema import sessions
from culm.storage.sql import SqlStore
from culm.storage.writer import IN_SAVEPOINT, ThreadWriter

WRITER = "culm-sqlite-writer"


def writer_threads() -> set[threading.Thread]:
    return {thread for thread in threading.enumerate() if thread.name.startswith(WRITER)}


@pytest.fixture
def store(sqlite_store: SqlStore) -> SqlStore:
    """The writer thread is SQLite's: these tests run on SQLite alone."""
    return sqlite_store


def insert_session(session_id: str) -> sa.Insert:
    return sessions.insert().values(
        session_id=session_id,
        kind="root",
        model="m",
        tools=[],
        workspace="/w",
        metadata={},
        created_at=utc_now(),
    )


async def session_ids(store: SqlStore) -> list[str]:
    async with store.read_connection() as conn:
        return list(await conn.scalars(sa.select(sessions.c.session_id).order_by("session_id")))


class Blocker:
    """A write that holds the writer thread (inside its transaction) until released."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()

    def __call__(self, conn: sa.Connection) -> None:
        conn.execute(insert_session("blocker"))
        self.entered.set()
        assert self.release.wait(timeout=10)

    async def wait_entered(self) -> None:
        assert await asyncio.to_thread(self.entered.wait, 10)


async def test_writes_run_on_one_thread_that_ends_on_close(tmp_path: Path) -> None:
    before = writer_threads()
    store = SqlStore(f"sqlite+aiosqlite:///{tmp_path / 'culm.db'}")
    await store.start()
    threads = {await store.write(lambda conn: threading.current_thread()) for _ in range(5)}
    assert len(threads) == 1 and threads <= writer_threads() - before
    # A daemon: a program that never closes its store still exits (the thread waits on its
    # queue for ever otherwise, and the interpreter waits for it at exit).
    assert all(thread.daemon for thread in threads)

    blocker = Blocker()
    blocked = asyncio.ensure_future(store.write(blocker))
    queued = asyncio.ensure_future(store.write(lambda conn: conn.execute(insert_session("q"))))
    await blocker.wait_entered()
    closing = asyncio.ensure_future(store.aclose())
    await asyncio.sleep(0.05)
    assert not closing.done()  # it waits for the writes already asked for
    blocker.release.set()
    await closing

    assert blocked.done() and queued.done()
    assert writer_threads() == before
    with pytest.raises(EngineClosedError, match="^the store is closed$"):
        await store.write(lambda conn: None)
    await store.aclose()  # again: nothing to do


async def test_a_cancelled_caller_leaves_its_queued_write_in_the_queue(store: SqlStore) -> None:
    blocker = Blocker()
    blocked = asyncio.ensure_future(store.write(blocker))
    await blocker.wait_entered()
    queued = asyncio.ensure_future(store.write(lambda conn: conn.execute(insert_session("q"))))
    await asyncio.sleep(0)
    queued.cancel()
    with pytest.raises(asyncio.CancelledError):
        await queued
    blocker.release.set()
    await blocked

    await store.write(lambda conn: None)  # after every write asked before it
    assert await session_ids(store) == ["blocker", "q"]


async def test_a_cancel_during_a_write_never_leaves_the_lock_held(
    store: SqlStore, tmp_path: Path
) -> None:
    blocker = Blocker()
    write = asyncio.ensure_future(store.write(blocker))
    await blocker.wait_entered()
    write.cancel()
    with pytest.raises(asyncio.CancelledError):
        await write
    blocker.release.set()

    def take_the_lock() -> None:
        other = sqlite3.connect(tmp_path / "culm.db", timeout=10, isolation_level=None)
        try:
            other.execute("BEGIN IMMEDIATE")
            other.execute("ROLLBACK")
        finally:
            other.close()

    await asyncio.to_thread(take_the_lock)  # another process's writer gets in
    assert await session_ids(store) == ["blocker"]  # and the cancelled write was committed


async def test_a_failing_write_rolls_back_and_the_next_one_runs(store: SqlStore) -> None:
    def half_then_fail(conn: sa.Connection) -> None:
        conn.execute(insert_session("half"))
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        await store.write(half_then_fail)
    await store.write(lambda conn: conn.execute(insert_session("next")))

    assert await session_ids(store) == ["next"]


async def test_writes_queued_behind_a_busy_writer_share_one_commit(store: SqlStore) -> None:
    """Group commit: each queued write runs in its own savepoint of one transaction, so one
    that fails is rolled back alone and its caller alone gets the error."""
    blocker = Blocker()
    blocked = asyncio.ensure_future(store.write(blocker))
    await blocker.wait_entered()

    def insert(session_id: str) -> Callable[[sa.Connection], bool]:
        def write(conn: sa.Connection) -> bool:
            conn.execute(insert_session(session_id))
            return bool(conn.info.get(IN_SAVEPOINT))

        return write

    def half_then_fail(conn: sa.Connection) -> None:
        conn.execute(insert_session("half"))
        raise ValueError("boom")

    first = asyncio.ensure_future(store.write(insert("a")))
    failing = asyncio.ensure_future(store.write(half_then_fail))
    last = asyncio.ensure_future(store.write(insert("b")))
    await asyncio.sleep(0)  # the three tasks ran up to their first await: queued in order
    blocker.release.set()
    await blocked

    assert await first is True and await last is True  # grouped: inside savepoints
    with pytest.raises(ValueError, match="boom"):
        await failing
    assert await session_ids(store) == ["a", "b", "blocker"]
    assert await store.write(insert("alone")) is False  # a group of one: no savepoint


async def test_close_closes_the_writer_threads_connection(tmp_path: Path) -> None:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'w.db'}")
    opened: list[object] = []
    closed: list[object] = []
    sa.event.listen(engine, "connect", lambda dbapi, record: opened.append(dbapi))
    sa.event.listen(engine, "close", lambda dbapi, record: closed.append(dbapi))
    writer = ThreadWriter(engine, name=f"{WRITER}-test")
    assert await writer.run(lambda conn: conn.scalar(sa.text("SELECT 1"))) == 1
    await writer.aclose()
    assert len(opened) == 1
    assert closed == opened  # no SQLite connection (nor its file handle) left open


async def test_a_group_of_two_writes_puts_each_in_a_savepoint(store: SqlStore) -> None:
    """The smallest group: its failing write is rolled back alone, the other one commits."""
    blocker = Blocker()
    blocked = asyncio.ensure_future(store.write(blocker))
    await blocker.wait_entered()

    def half_then_fail(conn: sa.Connection) -> None:
        conn.execute(insert_session("half"))
        raise ValueError("boom")

    failing = asyncio.ensure_future(store.write(half_then_fail))
    kept = asyncio.ensure_future(store.write(lambda conn: conn.execute(insert_session("kept"))))
    await asyncio.sleep(0)  # both queued behind the blocker: one group of two
    blocker.release.set()
    await blocked

    with pytest.raises(ValueError, match="boom"):
        await failing
    await kept
    assert await session_ids(store) == ["blocker", "kept"]


async def test_a_write_whose_loop_closed_meanwhile_does_not_stop_the_writer(
    tmp_path: Path,
) -> None:
    """A loop that asked for a write and closed before it ended (nobody waits for the answer):
    the writer thread goes on serving the others."""
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'w.db'}")
    sessions.create(engine)  # the blocker's insert goes there
    writer = ThreadWriter(engine, name=f"{WRITER}-x")
    blocker = Blocker()

    def from_another_loop() -> None:
        loop = asyncio.new_event_loop()
        try:
            task = loop.create_task(writer.run(blocker))
            loop.run_until_complete(asyncio.to_thread(blocker.entered.wait, 10))
            task.cancel()  # its caller gives up; the write itself stays queued (shielded)
            with contextlib.suppress(asyncio.CancelledError):
                loop.run_until_complete(task)
        finally:
            loop.close()

    await asyncio.to_thread(from_another_loop)
    blocker.release.set()  # the writer now answers a closed loop
    try:
        async with asyncio.timeout(10):
            assert await writer.run(lambda conn: conn.scalar(sa.text("SELECT 1"))) == 1
    finally:
        await writer.aclose()
