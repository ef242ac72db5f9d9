"""Whole read transactions (``SqlStore.read``): on SQLite a pool of threads, each read one hop;
on PostgreSQL the async engine. What a read sees, what it raises, and how the pool ends."""

from __future__ import annotations

import asyncio
import gc
import threading
import weakref
from pathlib import Path

import aiosqlite
import pytest
import sqlalchemy as sa

from culm.domain.models import UserMessage
from culm.errors import EngineClosedError, StorageUnavailableError
from culm.storage.dialect import SqliteDialect
from culm.storage.schema import sessions
from culm.storage.sql import SqlStore
from tests.storage.queue_support import new_session
from tests.storage.test_compactions import a_compaction

READER = "culm-sqlite-reader"


def reader_threads() -> set[threading.Thread]:
    return {thread for thread in threading.enumerate() if thread.name.startswith(READER)}


class Gate:
    """A read that holds its thread (inside its transaction) until released."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()

    def __call__(self, conn: sa.Connection) -> int:
        count = conn.scalar(sa.select(sa.func.count()).select_from(sessions))
        self.entered.set()
        assert self.release.wait(timeout=10)
        # Still the transaction's snapshot: a session written meanwhile is not counted.
        again = conn.scalar(sa.select(sa.func.count()).select_from(sessions))
        assert again == count
        return int(count or 0)

    async def wait_entered(self) -> None:
        assert await asyncio.to_thread(self.entered.wait, 10)


async def test_a_read_returns_what_its_function_returns_and_raises_what_it_raises(
    store: SqlStore,
) -> None:
    session = await new_session(store)
    found = await store.read(lambda conn: conn.scalar(sa.select(sessions.c.session_id)))
    assert found == session.session_id

    def broken(conn: sa.Connection) -> None:
        raise LookupError("not here")

    with pytest.raises(LookupError, match="not here"):
        await store.read(broken)
    assert await store.read(lambda conn: conn.scalar(sa.text("SELECT 1"))) == 1


async def test_a_read_sees_one_snapshot_while_writes_commit(sqlite_store: SqlStore) -> None:
    """SQLite (WAL): the snapshot is taken at the read's first statement and kept to its end.
    (PostgreSQL reads at READ COMMITTED, as every read there always did.)"""
    store = sqlite_store
    await new_session(store)
    gate = Gate()
    read = asyncio.ensure_future(store.read(gate))
    await gate.wait_entered()
    await new_session(store)  # committed while the read is open
    gate.release.set()
    assert await read == 1
    count = sa.select(sa.func.count()).select_from(sessions)
    assert await store.read(lambda conn: conn.scalar(count)) == 2


async def test_the_session_state_reads_cost_no_async_driver_call(
    sqlite_store: SqlStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run's start-up read is one hop to a reader thread: none of aiosqlite's round trips
    (fourteen of them before, ~45 µs of CPU each)."""
    store = sqlite_store
    session_id = (await new_session(store)).session_id
    said = [UserMessage(content="hi"), UserMessage(content="again")]
    await store.append_messages(session_id, said, run_id=None)
    await store.add_compaction(a_compaction(session_id, summary="said hi"))
    calls: list[str] = []
    real = aiosqlite.Connection._execute

    async def counted(
        self: aiosqlite.Connection, fn: object, *args: object, **kw: object
    ) -> object:
        calls.append(getattr(fn, "__name__", repr(fn)))
        return await real(self, fn, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(aiosqlite.Connection, "_execute", counted)
    state = await store.get_session_state(session_id)
    assert state is not None and state.messages == said
    assert state.compaction is not None and state.compaction.summary == "said hi"
    assert await store.get_session(session_id) == state.session
    assert await store.get_messages(session_id) == said
    assert await store.get_compaction(session_id) == state.compaction
    assert await store.get_session_state("nobody") is None
    assert calls == []


async def test_reads_share_a_few_threads_and_wait_for_a_free_one(tmp_path: Path) -> None:
    before = reader_threads()
    store = SqlStore(f"sqlite+aiosqlite:///{tmp_path / 'culm.db'}")
    await store.start()
    try:
        size = SqliteDialect.read_threads
        gates = [Gate() for _ in range(size)]
        held = [asyncio.ensure_future(store.read(gate)) for gate in gates]
        for gate in gates:
            await gate.wait_entered()
        threads = reader_threads() - before
        assert len(threads) == size and all(thread.daemon for thread in threads)
        # Every thread is held: one more read waits in line, then runs on a freed thread.
        waiting = asyncio.ensure_future(store.read(lambda conn: threading.current_thread()))
        await asyncio.sleep(0.05)
        assert not waiting.done()
        gates[0].release.set()
        assert await waiting in threads
        for gate in gates[1:]:
            gate.release.set()
        assert await asyncio.gather(*held) == [0] * size
    finally:
        await store.aclose()
    assert not reader_threads() - before  # closing ends them


async def test_a_caller_that_stops_waiting_leaves_the_pool_working(sqlite_store: SqlStore) -> None:
    gate = Gate()
    read = asyncio.ensure_future(sqlite_store.read(gate))
    await gate.wait_entered()
    read.cancel()
    with pytest.raises(asyncio.CancelledError):
        await read
    gate.release.set()
    assert await sqlite_store.read(lambda conn: conn.scalar(sa.text("SELECT 2"))) == 2


async def test_a_closed_store_refuses_reads(tmp_path: Path) -> None:
    store = SqlStore(f"sqlite+aiosqlite:///{tmp_path / 'culm.db'}")
    await store.start()
    await store.aclose()
    with pytest.raises(EngineClosedError):
        await store.read(lambda conn: 1)


async def test_a_database_that_cannot_be_opened_is_storage_unavailable(tmp_path: Path) -> None:
    store = SqlStore(f"sqlite+aiosqlite:///{tmp_path / 'culm.db'}")
    await store.start()
    try:
        for name in ("culm.db", "culm.db-wal", "culm.db-shm"):  # gone before the first read
            (tmp_path / name).unlink(missing_ok=True)
        (tmp_path / "culm.db").mkdir()
        with pytest.raises(StorageUnavailableError):
            await store.read(lambda conn: conn.scalar(sa.select(sessions.c.session_id)))
    finally:
        await store.aclose()


async def test_a_reader_thread_keeps_nothing_of_a_read_once_it_is_answered(
    sqlite_store: SqlStore,
) -> None:
    class Found:
        pass

    answer = weakref.ref(await sqlite_store.read(lambda conn: Found()))
    for _ in range(200):  # the thread lets go of it right after answering
        gc.collect()
        if answer() is None:
            break
        await asyncio.sleep(0.01)
    assert answer() is None
