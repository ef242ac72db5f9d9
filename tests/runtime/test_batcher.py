"""The batched event writer: timely, complete, and patient with a failing store."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest

from culm.domain.events import RunEvent, Token, ToolStart
from culm.domain.models import Run, Session
from culm.domain.time import utc_now
from culm.errors import StorageUnavailableError
from culm.runtime.batcher import Attempt, EventBatcher
from culm.storage.base import Ending, Fence, SweepPolicy
from culm.storage.sql import SqlStore


class FlakyStore(SqlStore):
    """Fails the first ``failures`` writes of events."""

    def __init__(self, url: str, failures: int) -> None:
        super().__init__(url)
        self.failures = failures
        self.failed = asyncio.Event()  # set at the first failure
        self.batches: list[int] = []

    async def append_events(
        self,
        events: Sequence[RunEvent],
        *,
        fences: Mapping[str, Fence] | None = None,
        reserve: int = 0,
        endings: Mapping[str, Ending] | None = None,
    ) -> set[str]:
        if self.failures:
            self.failures -= 1
            self.failed.set()
            raise StorageUnavailableError("the store is unavailable: disk on fire")
        self.batches.append(len(events))
        return await super().append_events(events, fences=fences, reserve=reserve, endings=endings)


async def _store(tmp_path: Path, failures: int = 0) -> FlakyStore:
    store = FlakyStore(f"sqlite+aiosqlite:///{tmp_path}/b.db", failures)
    await store.start()
    await store.create_session(Session(session_id="s", model="m", workspace=str(tmp_path)))
    return store


def _events(count: int, start: int = 1) -> list[RunEvent]:
    now = utc_now()
    return [
        Token(content="x").stamped(seq=seq, run_id="r", session_id="s", ts=now)
        for seq in range(start, start + count)
    ]


async def test_events_are_stored_within_the_interval_without_a_flush(tmp_path: Path) -> None:
    store = await _store(tmp_path)
    published = asyncio.Queue[list[RunEvent]]()
    batcher = EventBatcher(
        store, publish=lambda batch: published.put_nowait(list(batch)), linger=0.05, max_batch=1000
    )
    batcher.start()
    for event in _events(10):
        batcher.add(event)
    batch = await published.get()  # nobody flushes: the writer stores them by itself
    assert [e.seq for e in batch] == list(range(1, 11))
    assert await store.last_event_seq("r") == 10
    assert store.batches == [10]  # one transaction for the burst
    await batcher.aclose()
    await store.aclose()


async def test_events_added_before_the_start_are_stored_after_the_interval(
    tmp_path: Path,
) -> None:
    store = await _store(tmp_path)
    published = asyncio.Queue[list[RunEvent]]()
    batcher = EventBatcher(
        store, publish=lambda batch: published.put_nowait(list(batch)), linger=0.01, max_batch=1000
    )
    for event in _events(3):
        batcher.add(event)
    batcher.start()
    async with asyncio.timeout(5):  # nobody flushes: the linger's timer is armed at the start
        batch = await published.get()
    assert [e.seq for e in batch] == [1, 2, 3]
    for event in _events(2, start=4):  # and again for the next burst, once the buffer emptied
        batcher.add(event)
    async with asyncio.timeout(5):
        batch = await published.get()
    assert [e.seq for e in batch] == [4, 5]
    await batcher.aclose()
    await store.aclose()


async def test_flush_returns_once_everything_added_is_stored(tmp_path: Path) -> None:
    store = await _store(tmp_path)
    published: list[RunEvent] = []
    batcher = EventBatcher(store, publish=published.extend, linger=10, max_batch=100)
    batcher.start()
    for event in _events(250):
        batcher.add(event)
    await batcher.flush()
    assert [e.seq for e in await store.read_events("r")] == list(range(1, 251))
    assert [e.seq for e in published] == list(range(1, 251))  # published once stored
    await batcher.aclose()
    await store.aclose()


async def test_a_failing_store_is_retried_and_nothing_is_lost(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = await _store(tmp_path, failures=3)
    published: list[RunEvent] = []
    batcher = EventBatcher(store, publish=published.extend, linger=0.01, max_batch=1000)
    batcher.start()
    for event in _events(5):
        batcher.add(event)
    await store.failed.wait()  # more events come while the store is failing
    for event in _events(5, start=6):
        batcher.add(event)
    async with asyncio.timeout(5):
        await batcher.flush()
    assert [e.seq for e in await store.read_events("r")] == list(range(1, 11))
    assert [e.seq for e in published] == list(range(1, 11))  # nothing published unstored
    logged = [r.getMessage() for r in caplog.records if r.name == "culm.runtime.batcher"]
    assert len(logged) == 3
    assert logged[0] == (
        "storing run events failed; retrying error=the store is unavailable: disk on fire events=5"
    )
    await batcher.aclose()
    await store.aclose()


async def test_close_stores_what_is_still_buffered(tmp_path: Path) -> None:
    store = await _store(tmp_path)
    published: list[RunEvent] = []
    batcher = EventBatcher(store, publish=published.extend, linger=10, max_batch=1000)
    batcher.start()
    for event in _events(7):
        batcher.add(event)
    await batcher.aclose()
    assert await store.last_event_seq("r") == 7
    assert batcher.backlog == 0
    await store.aclose()


def test_run_model_has_every_field_of_the_contract() -> None:
    contract = {
        "run_id", "session_id", "parent_run_id", "status", "error", "created_at", "started_at",
        "completed_at", "round_count", "last_tool_name", "last_tool_phase", "last_event_at",
        "last_seq", "usage", "model", "trigger", "attempt",
    }  # fmt: skip
    assert contract <= set(Run.model_fields)


class SlowStore(FlakyStore):
    """Stores each batch only when the test lets it."""

    def __init__(self, url: str) -> None:
        super().__init__(url, failures=0)
        self.gate = asyncio.Event()
        self.arrived = asyncio.Queue[int]()  # the size of each batch that reaches the gate

    async def append_events(
        self,
        events: Sequence[RunEvent],
        *,
        fences: Mapping[str, Fence] | None = None,
        reserve: int = 0,
        endings: Mapping[str, Ending] | None = None,
    ) -> set[str]:
        self.arrived.put_nowait(len(events))
        await self.gate.wait()
        self.gate.clear()
        return await super().append_events(events, fences=fences, reserve=reserve, endings=endings)


async def test_a_producer_waits_for_room_until_half_the_backlog_is_stored(
    tmp_path: Path,
) -> None:
    store = SlowStore(f"sqlite+aiosqlite:///{tmp_path}/b.db")
    await store.start()
    batcher = EventBatcher(
        store, publish=lambda _: None, linger=0, max_batch=1000, backlog_limit=10
    )
    batcher.start()
    events = iter(_events(11))
    for event in [next(events) for _ in range(4)]:
        batcher.add(event)
    assert await store.arrived.get() == 4  # the writer took these 4 and waits at the gate
    for event in [next(events) for _ in range(6)]:
        batcher.add(event)
    assert not batcher.congested()  # 10 waiting: at the limit, not over it
    batcher.add(next(events))
    assert batcher.congested()
    room = asyncio.create_task(batcher.room())
    await asyncio.sleep(0)  # room() is waiting now
    assert not room.done()
    store.gate.set()  # the 4 are stored; 7 still wait, more than half the limit
    assert await store.arrived.get() == 7
    assert not room.done() and batcher.backlog == 7
    store.gate.set()
    async with asyncio.timeout(2):
        await room
    assert batcher.backlog == 0 and not batcher.congested()
    await batcher.aclose()
    await store.aclose()


async def test_room_does_not_wait_when_nothing_is_writing(tmp_path: Path) -> None:
    store = await _store(tmp_path)
    batcher = EventBatcher(store, publish=lambda _: None, linger=0, max_batch=1000, backlog_limit=2)
    for event in _events(5):  # not started: nothing stores these until flush or close
        batcher.add(event)
    assert batcher.congested()
    async with asyncio.timeout(1):
        await batcher.room()
    await batcher.aclose()
    assert await store.last_event_seq("r") == 5
    await store.aclose()


async def test_a_store_failing_past_the_window_reports_the_runs_it_cannot_take(
    tmp_path: Path,
) -> None:
    store = await _store(tmp_path, failures=10**6)
    reported: list[set[str]] = []
    errors: list[BaseException] = []
    published: list[RunEvent] = []
    batcher = EventBatcher(
        store,
        publish=published.extend,
        linger=0,
        max_batch=1000,
        retry_window=0.3,
        on_unavailable=lambda run_ids, exc: (reported.append(run_ids), errors.append(exc)),
    )
    batcher.start()
    for event in _events(3):
        batcher.add(event)
    async with asyncio.timeout(5):
        while not batcher.failing:
            await asyncio.sleep(0.01)
    assert reported == []  # within the window: only retried
    async with asyncio.timeout(10):
        while not reported:
            await asyncio.sleep(0.01)
    assert reported[0] == {"r"}
    assert isinstance(errors[0], StorageUnavailableError), "the store's error, to end runs with"
    store.failures = 0  # the store works again: everything is stored, then published
    await batcher.flush()
    assert not batcher.failing
    assert [e.seq for e in published] == [1, 2, 3]
    await batcher.aclose()
    await store.aclose()


async def test_giving_up_on_a_failing_store_drops_what_it_cannot_take(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = await _store(tmp_path, failures=10**6)
    published: list[RunEvent] = []
    batcher = EventBatcher(store, publish=published.extend, linger=0, max_batch=1000)
    batcher.start()
    for event in _events(3):
        batcher.add(event)
    async with asyncio.timeout(5):
        while not batcher.failing:
            await asyncio.sleep(0.01)
    batcher.give_up()
    async with asyncio.timeout(5):
        await batcher.flush()  # returns: nothing is left to wait for
        await batcher.aclose()
    assert published == []  # never published, so no client saw a seq the store lacks
    last = [r.getMessage() for r in caplog.records if r.name == "culm.runtime.batcher"][-1]
    assert last == "the store keeps failing; run events dropped at stop events=3"
    assert await store.last_event_seq("r") == 0
    await store.aclose()


async def _owned_runs(store: SqlStore, tmp_path: Path, *run_ids: str) -> None:
    """Runs ``run_ids``, each on a session of its own, claimed by worker "w1" (epoch 1)."""
    for run_id in run_ids:
        session = Session(session_id=f"s-{run_id}", model="m", workspace=str(tmp_path))
        await store.create_session(session)
        run = Run(run_id=run_id, session_id=session.session_id, model="m")
        reserved = await store.reserve_run(run, queue=False, owner="w1", lease_seconds=60)
        assert reserved.run.epoch == 1


def _run_events(run_id: str, seqs: range) -> list[RunEvent]:
    now = utc_now()
    return [
        Token(content="x").stamped(seq=seq, run_id=run_id, session_id=f"s-{run_id}", ts=now)
        for seq in seqs
    ]


async def test_a_run_whose_fence_fails_is_isolated_and_the_others_are_stored(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = await _store(tmp_path)
    await _owned_runs(store, tmp_path, "ours", "lost")
    rejected: list[set[Attempt]] = []
    published: list[RunEvent] = []
    batcher = EventBatcher(
        store, publish=published.extend, linger=0, max_batch=1000, on_rejected=rejected.append
    )
    batcher.start()
    for event in _run_events("ours", range(1, 4)):
        batcher.add(event, fence=("w1", 1))
    for event in _run_events("lost", range(1, 4)):
        batcher.add(event, fence=("w1", 0))  # a stale epoch: the run is no longer ours so
    await batcher.flush()
    assert rejected == [{("lost", 0)}]
    assert [r.getMessage() for r in caplog.records if r.name == "culm.runtime.batcher"] == [
        "the store refused a run's events: isolating it runs=[('lost', 0)]"
    ]
    assert batcher.isolated("lost", 0) and not batcher.isolated("ours", 1)
    assert [(e.run_id, e.seq) for e in published] == [("ours", 1), ("ours", 2), ("ours", 3)]
    assert await store.last_event_seq("lost") == 0
    # Later events of the isolated attempt are dropped: storing them would leave a gap in its
    # seqs.
    batcher.add(_run_events("lost", range(4, 5))[0], fence=("w1", 0))
    batcher.add(_run_events("ours", range(4, 5))[0], fence=("w1", 1))
    await batcher.flush()
    assert await store.last_event_seq("lost") == 0
    assert await store.last_event_seq("ours") == 4
    assert rejected == [{("lost", 0)}]
    batcher.add(_events(1)[0])  # unfenced, while an attempt is isolated
    await batcher.flush()
    assert await store.last_event_seq("r") == 1
    batcher.add(_run_events("ours", range(5, 6))[0], fence=("w1", 0))  # fenced still, refused
    await batcher.flush()
    assert await store.last_event_seq("ours") == 4
    assert rejected == [{("lost", 0)}, {("ours", 0)}]
    await batcher.aclose()
    await store.aclose()


async def test_an_attempt_that_ends_with_events_still_buffered_is_not_remembered(
    tmp_path: Path,
) -> None:
    """A run whose lease is lost ends without a flush: its buffered events are refused after
    it was forgotten, and what is remembered about it must still go (no growth per loss)."""
    store = await _store(tmp_path)
    await _owned_runs(store, tmp_path, "lost")
    rejected: list[set[Attempt]] = []
    batcher = EventBatcher(
        store, publish=lambda _: None, linger=0, max_batch=1000, on_rejected=rejected.append
    )
    for event in _run_events("lost", range(1, 3)):
        batcher.add(event, fence=("w1", 0))  # a stale epoch, written after the forget below
    batcher.forget([("lost", 0)])
    await batcher.flush()
    assert rejected == [{("lost", 0)}]
    assert not batcher.isolated("lost", 0)
    await batcher.aclose()
    await store.aclose()


async def test_a_run_breaking_a_constraint_is_isolated_without_blocking_the_others(
    tmp_path: Path,
) -> None:
    store = await _store(tmp_path)
    await _owned_runs(store, tmp_path, "dup", "fine")
    await store.append_events(_run_events("dup", range(1, 3)), fences={"dup": ("w1", 1)})
    rejected: list[set[Attempt]] = []
    published: list[RunEvent] = []
    batcher = EventBatcher(
        store, publish=published.extend, linger=0, max_batch=1000, on_rejected=rejected.append
    )
    batcher.start()
    batcher.add(_run_events("dup", range(2, 3))[0], fence=("w1", 1))  # seq 2 is stored already
    for event in _run_events("fine", range(1, 3)):
        batcher.add(event, fence=("w1", 1))
    async with asyncio.timeout(10):  # not retried forever: the batch is stored without "dup"
        await batcher.flush()
    assert rejected == [{("dup", 1)}]
    assert not batcher.failing
    assert [(e.run_id, e.seq) for e in published] == [("fine", 1), ("fine", 2)]
    assert await store.last_event_seq("fine") == 2
    assert await store.last_event_seq("dup") == 2
    await batcher.aclose()
    await store.aclose()


async def test_an_event_the_database_refuses_isolates_its_run_and_is_not_retried(
    tmp_path: Path, postgres_store: SqlStore
) -> None:
    # A tool name longer than runs.last_tool_name (200) is refused by PostgreSQL (a DataError,
    # not a unique violation, not a store failure): retrying it would fail forever, and the
    # batcher would look like a failing store (no lease renewed here for any run).
    store = postgres_store
    await _owned_runs(store, tmp_path, "bad", "good")
    rejected: list[set[Attempt]] = []
    published: list[RunEvent] = []
    batcher = EventBatcher(
        store, publish=published.extend, linger=0, max_batch=1000, on_rejected=rejected.append
    )
    batcher.start()
    for event in _run_events("good", range(1, 3)):
        batcher.add(event, fence=("w1", 1))
    bad = ToolStart(tool_call_id="c", tool_name="t" * 300, arguments={})
    batcher.add(bad.stamped(seq=1, run_id="bad", session_id="s-bad", ts=utc_now()), fence=("w1", 1))
    batcher.add(_run_events("good", range(3, 4))[0], fence=("w1", 1))
    async with asyncio.timeout(10):  # without isolation: retried forever
        await batcher.flush()
    assert rejected == [{("bad", 1)}]
    assert batcher.isolated("bad", 1) and not batcher.isolated("good", 1)
    assert not batcher.failing and batcher.failing_for() == 0
    assert [(e.run_id, e.seq) for e in published] == [("good", 1), ("good", 2), ("good", 3)]
    assert await store.last_event_seq("good") == 3
    assert await store.last_event_seq("bad") == 0
    await batcher.aclose()


async def test_two_attempts_of_one_run_here_are_fenced_apart(tmp_path: Path) -> None:
    # This process lost attempt 1 of "r" (taken over, re-queued) and claimed it again
    # (attempt at epoch 3) while attempt 1's last events still wait to be written: those are
    # refused for attempt 1 only; attempt 3's are stored, and it is never told its lease is lost.
    store = await _store(tmp_path)
    await _owned_runs(store, tmp_path, "r")
    requeue = SweepPolicy(requeue=True, max_attempts=3, lease_seconds=10.0)
    assert [run.epoch for run in await store.sweep("w2", requeue, dead_owners=["w1"])] == [2]
    [again] = await store.claim_runs("w1", limit=1, lease_seconds=60)
    assert (again.epoch, again.last_seq) == (3, 1)  # seq 1: its run_recovered event
    rejected: list[set[Attempt]] = []
    published: list[RunEvent] = []
    batcher = EventBatcher(
        store, publish=published.extend, linger=0, max_batch=1000, on_rejected=rejected.append
    )
    for event in _run_events("r", range(1, 3)):
        batcher.add(event, fence=("w1", 1))
    for event in _run_events("r", range(2, 4)):
        batcher.add(event, fence=("w1", 3))
    await batcher.flush()  # one batch holds both attempts' events
    assert rejected == [{("r", 1)}]
    assert batcher.isolated("r", 1) and not batcher.isolated("r", 3)
    assert [e.seq for e in published] == [2, 3]
    assert [e.type for e in await store.read_events("r")] == ["run_recovered", "token", "token"]
    batcher.forget([("r", 1)])  # attempt 1 ends here: attempt 3 goes on
    batcher.add(_run_events("r", range(4, 5))[0], fence=("w1", 3))
    await batcher.flush()
    assert await store.last_event_seq("r") == 4
    await batcher.aclose()
    await store.aclose()


async def test_a_late_event_of_an_earlier_attempt_is_refused_whatever_the_order(
    tmp_path: Path,
) -> None:
    # As above, but attempt 3's events are buffered first and attempt 1's (winding down) after.
    store = await _store(tmp_path)
    await _owned_runs(store, tmp_path, "r")
    requeue = SweepPolicy(requeue=True, max_attempts=3, lease_seconds=10.0)
    await store.sweep("w2", requeue, dead_owners=["w1"])
    await store.claim_runs("w1", limit=1, lease_seconds=60)
    rejected: list[set[Attempt]] = []
    published: list[RunEvent] = []
    batcher = EventBatcher(
        store, publish=published.extend, linger=0, max_batch=1000, on_rejected=rejected.append
    )
    for event in _run_events("r", range(2, 4)):
        batcher.add(event, fence=("w1", 3))
    for event in _run_events("r", range(4, 6)):
        batcher.add(event, fence=("w1", 1))
    await batcher.flush()
    assert rejected == [{("r", 1)}]
    assert [e.seq for e in published] == [2, 3]
    assert await store.last_event_seq("r") == 3
    await batcher.aclose()
    await store.aclose()


async def test_failing_for_counts_from_the_first_failure(tmp_path: Path) -> None:
    store = await _store(tmp_path, failures=10**6)
    batcher = EventBatcher(store, publish=lambda _: None, linger=0, max_batch=1000)
    before = time.monotonic()
    batcher.start()
    batcher.add(_events(1)[0])
    async with asyncio.timeout(5):
        await store.failed.wait()
    assert batcher.failing
    assert 0 <= batcher.failing_for() <= time.monotonic() - before
    batcher.give_up()
    await batcher.aclose()
    await store.aclose()


async def test_attempts_forgotten_one_by_one_while_their_events_wait_are_all_let_go(
    tmp_path: Path,
) -> None:
    store = SlowStore(f"sqlite+aiosqlite:///{tmp_path}/b.db")
    await store.start()
    await _owned_runs(store, tmp_path, "first", "second")
    batcher = EventBatcher(store, publish=lambda _: None, linger=0, max_batch=1000)
    batcher.start()
    batcher.add(_run_events("first", range(1, 2))[0], fence=("w1", 0))  # stale: refused
    assert await store.arrived.get() == 1  # being written
    batcher.add(_run_events("second", range(1, 2))[0], fence=("w1", 0))  # waits for the next
    batcher.forget([("first", 0)])
    batcher.forget([("second", 0)])
    store.gate.set()
    assert await store.arrived.get() == 1  # the first is refused and let go; now the second
    assert not batcher.isolated("first", 0)
    store.gate.set()
    await batcher.flush()
    assert not batcher.isolated("first", 0) and not batcher.isolated("second", 0)
    await batcher.aclose()
    await store.aclose()


async def test_room_is_there_at_half_the_backlog(tmp_path: Path) -> None:
    store = SlowStore(f"sqlite+aiosqlite:///{tmp_path}/b.db")
    await store.start()
    await store.create_session(Session(session_id="s", model="m", workspace=str(tmp_path)))
    batcher = EventBatcher(
        store, publish=lambda _: None, linger=0, max_batch=1000, backlog_limit=10
    )
    batcher.start()
    for event in _events(5):
        batcher.add(event)
    assert await store.arrived.get() == 5  # being written: 5 await storage, half the limit
    room = asyncio.create_task(batcher.room())
    await asyncio.sleep(0)
    assert room.done()
    store.gate.set()
    await batcher.aclose()
    await store.aclose()


class RefusingStore(FlakyStore):
    """Raises a non-transient error (a value the database refuses) for a batch holding an
    event of run "bad"; records the runs of each write."""

    def __init__(self, url: str) -> None:
        super().__init__(url, failures=0)
        self.writes: list[list[str]] = []

    async def append_events(
        self,
        events: Sequence[RunEvent],
        *,
        fences: Mapping[str, Fence] | None = None,
        reserve: int = 0,
        endings: Mapping[str, Ending] | None = None,
    ) -> set[str]:
        self.writes.append([event.run_id for event in events])
        if any(event.run_id == "bad" for event in events):
            raise ValueError("value out of range")
        return await super().append_events(events, fences=fences, reserve=reserve, endings=endings)


async def test_a_refused_batch_is_written_again_one_run_at_a_time_in_order(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = RefusingStore(f"sqlite+aiosqlite:///{tmp_path}/b.db")
    await store.start()
    await _owned_runs(store, tmp_path, "bad", "good")
    rejected: list[set[Attempt]] = []
    published: list[RunEvent] = []
    batcher = EventBatcher(
        store, publish=published.extend, linger=0, max_batch=1000, on_rejected=rejected.append
    )
    batcher.add(_run_events("bad", range(1, 2))[0], fence=("w1", 1))
    for event in _run_events("good", range(1, 3)):
        batcher.add(event, fence=("w1", 1))
    await batcher.flush()
    assert store.writes == [["bad", "good", "good"], ["bad"], ["good", "good"]]
    assert rejected == [{("bad", 1)}]
    assert [r.getMessage() for r in caplog.records if r.name == "culm.runtime.batcher"][0] == (
        "the store refused a run's events run_id=bad error=value out of range"
    )
    assert [(e.run_id, e.seq) for e in published] == [("good", 1), ("good", 2)]
    await batcher.aclose()
    await store.aclose()


async def test_the_writer_lingers_for_more_events_unless_a_batch_is_full(tmp_path: Path) -> None:
    store = await _store(tmp_path)
    batcher = EventBatcher(store, publish=lambda _: None, linger=0.5, max_batch=3)
    batcher.start()
    first, second, *full = _events(5)
    batcher.add(first)
    for _ in range(5):
        await asyncio.sleep(0)  # the writer is lingering now
    batcher.add(second)
    await batcher.flush()  # cuts the linger short
    assert store.batches == [2], "the first event waited for the second"
    await batcher.aclose()
    batcher = EventBatcher(store, publish=lambda _: None, linger=3600, max_batch=3)
    batcher.start()
    for event in full:
        batcher.add(event)
    async with asyncio.timeout(10):  # a full batch is written at once, not after an hour
        while store.batches == [2]:
            await asyncio.sleep(0.01)
    assert store.batches == [2, 3]
    await batcher.aclose()
    await store.aclose()


async def test_a_failing_publish_is_logged_and_the_events_stay_stored(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = await _store(tmp_path)

    def publish(_: Sequence[RunEvent]) -> None:
        raise RuntimeError("the bus is gone")

    batcher = EventBatcher(store, publish=publish, linger=0, max_batch=1000)
    for event in _events(2):
        batcher.add(event)
    await batcher.flush()
    assert await store.last_event_seq("r") == 2
    assert [r.getMessage() for r in caplog.records if r.name == "culm.runtime.batcher"] == [
        "publishing stored run events failed"
    ]
    await batcher.aclose()
    await store.aclose()
