"""Shared store reads (``culm.runtime.reads``) on their own, against a real store: who joins a
read, from which cursor it reads, what each caller gets, and what a failure does."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

import culm
from culm.errors import StorageUnavailableError
from culm.runtime.reads import SharedReads, Stored
from culm.runtime.roles import Role
from tests.support import settings

pytestmark = pytest.mark.timeout(60)


class Counted:
    """The engine's store, its reads counted (and ``get_run`` held while ``hold`` is set)."""

    def __init__(self, engine: culm.Engine) -> None:
        self.store = engine.store
        self.calls: list[tuple[str, Any]] = []
        self.hold: asyncio.Event | None = None
        self.entered = asyncio.Event()

    async def get_run(self, run_id: str) -> culm.Run | None:
        self.calls.append(("get_run", run_id))
        self.entered.set()
        if self.hold is not None:
            await self.hold.wait()
        return await self.store.get_run(run_id)

    async def read_events(self, run_id: str, *, after: int, limit: int) -> list[Any]:
        self.calls.append(("read_events", after))
        return await self.store.read_events(run_id, after=after, limit=limit)


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[culm.Engine]:
    async with culm.Engine(settings(tmp_path, scheduler=False)) as engine:
        yield engine


async def _finished(engine: culm.Engine) -> culm.Run:
    run = await engine.run("hello", model="scripted:echo")
    await engine.wait(run.run_id)
    stored = await engine.store.get_run(run.run_id)
    assert stored is not None and stored.last_seq >= 6
    return stored


def _reads(store: Counted, *, page: int = 1000, at_once: int = 1) -> SharedReads:
    return SharedReads(store, asyncio.Semaphore(at_once), page=page)  # type: ignore[arg-type]


async def test_a_read_gives_the_run_and_its_events_after_the_cursor(engine: culm.Engine) -> None:
    run = await _finished(engine)
    store = Counted(engine)
    reads = _reads(store)
    got = await reads.read(run.run_id, 2)
    assert got.run == run
    assert [e.seq for e in got.events] == list(range(3, run.last_seq + 1))
    assert got.complete
    assert store.calls == [("get_run", run.run_id), ("read_events", 2)]
    assert reads.count == 2
    # A page cut short is not complete; the page is the store's limit.
    paged = await _reads(store, page=3).read(run.run_id, 1)
    assert [e.seq for e in paged.events] == [2, 3, 4] and not paged.complete
    last = await _reads(store, page=3).read(run.run_id, run.last_seq - 2)
    assert len(last.events) == 2 and last.complete


async def test_an_unknown_run_or_the_run_alone_costs_one_read(engine: culm.Engine) -> None:
    run = await _finished(engine)
    store = Counted(engine)
    reads = _reads(store)
    assert await reads.read("no-such-run", 0) == Stored(None, [], complete=True)
    assert await reads.run(run.run_id) == run
    assert store.calls == [("get_run", "no-such-run"), ("get_run", run.run_id)]
    assert reads.count == 2


async def test_a_queued_run_with_nothing_after_the_cursor_reads_no_events(tmp_path: Path) -> None:
    async with culm.Engine(settings(tmp_path, scheduler=False), role=Role.API) as api:
        session = await api.create_session(model="scripted:echo")
        queued = await api.start_run(session.session_id, "nobody runs it")
        store = Counted(api)
        got = await _reads(store).read(queued.run_id, 0)
    assert got.run is not None and got.run.status is culm.RunStatus.PENDING
    assert got.events == [] and store.calls == [("get_run", queued.run_id)]


async def test_callers_waiting_together_share_one_read_from_the_lowest_cursor(
    engine: culm.Engine,
) -> None:
    run = await _finished(engine)
    store = Counted(engine)
    busy = asyncio.Semaphore(1)
    reads = SharedReads(store, busy, page=1000)  # type: ignore[arg-type]
    await busy.acquire()  # every read waits for its turn
    alone = asyncio.create_task(reads.run(run.run_id))
    high = asyncio.create_task(reads.read(run.run_id, 4))
    low = asyncio.create_task(reads.read(run.run_id, 1))
    also_alone = asyncio.create_task(reads.run(run.run_id))
    await asyncio.sleep(0)
    busy.release()
    assert await alone == run and await also_alone == run
    assert [e.seq for e in (await high).events] == list(range(5, run.last_seq + 1))
    assert [e.seq for e in (await low).events] == list(range(2, run.last_seq + 1))
    assert store.calls == [("get_run", run.run_id), ("read_events", 1)]


async def test_a_read_under_way_is_not_joined(engine: culm.Engine) -> None:
    run = await _finished(engine)
    store = Counted(engine)
    store.hold = asyncio.Event()
    reads = _reads(store, at_once=2)
    first = asyncio.create_task(reads.read(run.run_id, 0))
    await store.entered.wait()  # the first read is under way: it may miss what came since
    second = asyncio.create_task(reads.read(run.run_id, 3))
    third = asyncio.create_task(reads.read(run.run_id, 5))  # joins the second
    await asyncio.sleep(0)
    store.hold.set()
    assert len((await first).events) == run.last_seq
    assert (await second).events[0].seq == 4 and (await third).events[0].seq == 6
    assert sorted(call for call in store.calls if call[0] == "read_events") == [
        ("read_events", 0),
        ("read_events", 3),
    ]


async def test_a_failed_read_fails_its_callers_and_the_next_read_starts_afresh(
    engine: culm.Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = await _finished(engine)
    store = Counted(engine)
    busy = asyncio.Semaphore(1)
    reads = SharedReads(store, busy, page=1000)  # type: ignore[arg-type]
    failing = [StorageUnavailableError("database unreachable")]
    get_run = store.get_run

    async def flaky(run_id: str) -> culm.Run | None:
        if failing:
            raise failing.pop()
        return await get_run(run_id)

    monkeypatch.setattr(store, "get_run", flaky)
    await busy.acquire()
    callers = [asyncio.create_task(reads.read(run.run_id, 0)) for _ in range(2)]
    await asyncio.sleep(0)
    busy.release()
    for caller in callers:
        with pytest.raises(StorageUnavailableError):
            await caller
    assert reads.count == 0
    assert len((await reads.read(run.run_id, 0)).events) == run.last_seq


async def test_a_caller_that_leaves_ends_no_one_elses_read(engine: culm.Engine) -> None:
    run = await _finished(engine)
    store = Counted(engine)
    store.hold = asyncio.Event()
    reads = _reads(store)
    leaving = asyncio.create_task(reads.read(run.run_id, 0))
    staying = asyncio.create_task(reads.read(run.run_id, 0))
    await store.entered.wait()
    leaving.cancel()
    store.hold.set()
    assert len((await staying).events) == run.last_seq
    assert leaving.cancelled()


async def test_closing_cancels_the_reads_under_way(engine: culm.Engine) -> None:
    run = await _finished(engine)
    store = Counted(engine)
    store.hold = asyncio.Event()
    reads = _reads(store)
    caller = asyncio.create_task(reads.read(run.run_id, 0))
    await store.entered.wait()
    under_way = [t for t in asyncio.all_tasks() if t.get_name() == "shared-store-read"]
    assert len(under_way) == 1
    await reads.aclose()
    assert under_way[0].cancelled()  # ended before aclose returns, not merely asked to
    with pytest.raises(asyncio.CancelledError):
        await caller
    # The run's next read is a new one, not the cancelled read.
    store.hold.set()
    assert len((await reads.read(run.run_id, 0)).events) == run.last_seq


async def test_a_run_handed_back_to_the_queue_still_gives_its_stored_events(
    tmp_path: Path,
) -> None:
    """Pending, but not new: a run handed back by a stopping worker has events stored."""
    config = settings(tmp_path, shutdown_policy="recover", max_attempts=3, scheduler=False)
    async with culm.Engine(config) as worker:
        worker.scripts.register("stuck", {"turns": [[{"text": "working"}, {"delay": 3600}]]})
        run = await worker.run("go", model="scripted:stuck")
        async with asyncio.timeout(30):
            while not (await worker.store.read_events(run.run_id)):
                await asyncio.sleep(0.01)
    async with culm.Engine(settings(tmp_path, scheduler=False), role=Role.API) as api:
        store = Counted(api)
        reads = _reads(store)
        got = await reads.read(run.run_id, 0)
        stored = await api.store.read_events(run.run_id)
    assert got.run is not None and got.run.status is culm.RunStatus.PENDING
    assert stored and [e.seq for e in got.events] == [e.seq for e in stored]
    assert not reads._tasks  # a finished read is not kept


async def test_a_read_closed_while_waiting_for_its_turn_is_not_joined_later(
    engine: culm.Engine,
) -> None:
    run = await _finished(engine)
    store = Counted(engine)
    busy = asyncio.Semaphore(1)
    reads = SharedReads(store, busy, page=1000)  # type: ignore[arg-type]
    await busy.acquire()  # the read waits for its turn
    caller = asyncio.create_task(reads.read(run.run_id, 0))
    await asyncio.sleep(0)  # the caller asked; the read's task has not begun
    await reads.aclose()
    with pytest.raises(asyncio.CancelledError):
        async with asyncio.timeout(10):  # the caller used to wait for ever here
            await caller
    busy.release()
    assert len((await reads.read(run.run_id, 0)).events) == run.last_seq  # a new read
