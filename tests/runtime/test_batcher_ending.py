"""A run's end written by the batcher with its terminal event (``end_with`` / ``ended``): in the
write that holds that event, never before it, not for a run the store refused, and forgotten
with the attempt."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping, Sequence

import pytest
import sqlalchemy as sa

from culm.domain.events import Complete, RunEvent, Token
from culm.domain.models import AssistantMessage, Run, RunStatus, Session, Usage
from culm.domain.time import utc_now
from culm.runtime.batcher import Attempt, EventBatcher
from culm.storage.base import Ending, Fence
from culm.storage.schema import runs
from culm.storage.sql import SqlStore
from tests.storage.queue_support import raw_rows

USAGE = Usage(prompt_tokens=3, completion_tokens=5)


class WatchedStore(SqlStore):
    """Records the endings each write of events carries (run_ids), and refuses (a value the
    database refuses: not a store failure) every write that holds an event of run "bad"."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.writes: list[tuple[list[str], list[str]]] = []  # (events' run_ids, endings)
        self.writing = asyncio.Event()  # set once a write began
        self.go_on = asyncio.Event()  # writes wait for it (set: at once)
        self.go_on.set()

    async def append_events(
        self,
        events: Sequence[RunEvent],
        *,
        fences: Mapping[str, Fence] | None = None,
        reserve: int = 0,
        endings: Mapping[str, Ending] | None = None,
    ) -> set[str]:
        self.writes.append(([e.run_id for e in events], sorted(endings or {})))
        self.writing.set()
        await self.go_on.wait()
        if any(event.run_id == "bad" for event in events):
            raise ValueError("value out of range")
        return await super().append_events(events, fences=fences, reserve=reserve, endings=endings)


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[WatchedStore]:
    store = WatchedStore(database_url)
    await store.start()
    yield store
    await store.aclose()


async def _claimed(store: SqlStore, *run_ids: str) -> None:
    """Runs ``run_ids``, each on a session of its own, claimed by "w1" (epoch 1; pending
    until they end)."""
    for run_id in run_ids:
        session = Session(session_id=f"s-{run_id}", model="m", workspace="/w")
        await store.create_session(session)
        run = Run(run_id=run_id, session_id=session.session_id, model="m")
        reserved = await store.reserve_run(run, queue=False, owner="w1", lease_seconds=60)
        assert reserved.run.epoch == 1


def _token(run_id: str, seq: int) -> RunEvent:
    return Token(content="x").stamped(
        seq=seq, run_id=run_id, session_id=f"s-{run_id}", ts=utc_now()
    )


def _complete(run_id: str, seq: int) -> RunEvent:
    complete = Complete(usage=USAGE, final_message=f"{run_id} done")
    return complete.stamped(seq=seq, run_id=run_id, session_id=f"s-{run_id}", ts=utc_now())


def _ending(run_id: str) -> Ending:
    message = AssistantMessage(content=f"{run_id} done")
    return Ending(f"s-{run_id}", RunStatus.COMPLETED, None, USAGE, (message,))


async def _status(store: SqlStore, run_id: str) -> RunStatus:
    run = await store.get_run(run_id)
    assert run is not None
    return run.status


async def _said(store: SqlStore, run_id: str) -> list[str | None]:
    return [m.content for m in await store.get_messages(f"s-{run_id}")]


async def test_an_ending_waits_for_the_write_of_its_terminal_event(store: WatchedStore) -> None:
    await _claimed(store, "a", "b")
    batcher = EventBatcher(store, publish=lambda _: None, linger=0, max_batch=1000)
    batcher.add(_token("a", 1), fence=("w1", 1))
    batcher.end_with("a", 1, _ending("a"))  # early: its terminal event is not added yet
    batcher.add(_token("b", 1), fence=("w1", 1))
    await batcher.flush()
    assert store.writes == [(["a", "b"], [])]
    assert await _status(store, "a") is RunStatus.PENDING
    assert not batcher.ended("a", 1)
    batcher.add(_complete("a", 2), fence=("w1", 1))
    batcher.add(_complete("b", 2), fence=("w1", 1))  # a terminal event without an ending
    await batcher.flush()
    assert store.writes[1] == (["a", "b"], ["a"])
    assert await _status(store, "a") is RunStatus.COMPLETED
    assert await _said(store, "a") == ["a done"]
    assert batcher.ended("a", 1)
    assert not batcher.ended("a", 2) and not batcher.ended("a", None)  # not another attempt's
    assert await _status(store, "b") is RunStatus.PENDING and not batcher.ended("b", 1)
    # Written once: a later terminal event of the attempt (none would follow; a test's) is
    # written without it (and refused: the run is no longer w1's).
    batcher.add(_complete("a", 3), fence=("w1", 1))
    await batcher.flush()
    assert store.writes[2] == (["a"], [])
    batcher.forget([("a", 1)])  # the attempt ended here
    assert not batcher.ended("a", 1)
    await batcher.aclose()


async def test_an_unfenced_run_ends_with_its_terminal_event(store: WatchedStore) -> None:
    await _claimed(store, "u")
    batcher = EventBatcher(store, publish=lambda _: None, linger=0, max_batch=1000)
    batcher.add(_complete("u", 1))
    batcher.end_with("u", None, _ending("u"))
    await batcher.flush()
    assert store.writes == [(["u"], ["u"])]
    assert await _status(store, "u") is RunStatus.COMPLETED
    assert batcher.ended("u", None) and not batcher.ended("u", 1)
    # Like every write of the batcher's, it reserved 256 seqs past the run's last stored one.
    [reserved] = await raw_rows(store, sa.select(runs.c.seq_reserved).where(runs.c.run_id == "u"))
    assert reserved[0] == 1 + 256
    await batcher.aclose()


async def test_a_run_the_store_refuses_is_not_ended_and_the_others_are(store: WatchedStore) -> None:
    await _claimed(store, "ours", "lost")
    rejected: list[set[Attempt]] = []
    batcher = EventBatcher(
        store, publish=lambda _: None, linger=0, max_batch=1000, on_rejected=rejected.append
    )
    batcher.add(_complete("lost", 1), fence=("w1", 0))  # a stale epoch: no longer ours
    batcher.end_with("lost", 0, _ending("lost"))
    batcher.add(_complete("ours", 1), fence=("w1", 1))
    batcher.end_with("ours", 1, _ending("ours"))
    await batcher.flush()
    assert rejected == [{("lost", 0)}]
    assert store.writes == [(["lost", "ours"], ["lost", "ours"])]
    assert batcher.ended("ours", 1) and await _status(store, "ours") is RunStatus.COMPLETED
    assert not batcher.ended("lost", 0) and await _status(store, "lost") is RunStatus.PENDING
    assert await _said(store, "lost") == []
    await batcher.aclose()


async def test_a_refused_batch_written_run_by_run_ends_each_run_in_its_own_write(
    store: WatchedStore,
) -> None:
    await _claimed(store, "bad", "good")
    rejected: list[set[Attempt]] = []
    batcher = EventBatcher(
        store, publish=lambda _: None, linger=0, max_batch=1000, on_rejected=rejected.append
    )
    batcher.add(_complete("bad", 1), fence=("w1", 1))
    batcher.end_with("bad", 1, _ending("bad"))
    batcher.add(_complete("good", 1), fence=("w1", 1))
    batcher.end_with("good", 1, _ending("good"))
    await batcher.flush()
    assert store.writes == [
        (["bad", "good"], ["bad", "good"]),
        (["bad"], ["bad"]),
        (["good"], ["good"]),
    ]
    assert rejected == [{("bad", 1)}]
    assert batcher.ended("good", 1) and await _status(store, "good") is RunStatus.COMPLETED
    assert not batcher.ended("bad", 1)
    await batcher.aclose()


async def test_a_refused_write_of_one_run_is_not_tried_again(store: WatchedStore) -> None:
    await _claimed(store, "bad")
    rejected: list[set[Attempt]] = []
    batcher = EventBatcher(
        store, publish=lambda _: None, linger=0, max_batch=1000, on_rejected=rejected.append
    )
    batcher.add(_token("bad", 1), fence=("w1", 1))
    batcher.add(_complete("bad", 2), fence=("w1", 1))
    batcher.end_with("bad", 1, _ending("bad"))
    await batcher.flush()
    assert store.writes == [(["bad", "bad"], ["bad"])]  # nothing to split: isolated at once
    assert rejected == [{("bad", 1)}] and not batcher.ended("bad", 1)
    await batcher.aclose()


async def test_an_attempt_forgotten_before_its_end_is_written_ends_apart(
    store: WatchedStore,
) -> None:
    # A lost lease ends the attempt without a flush: what it asked to write with its terminal
    # event goes with it (its events are still written, fenced, like any buffered ones).
    await _claimed(store, "r")
    batcher = EventBatcher(store, publish=lambda _: None, linger=0, max_batch=1000)
    batcher.add(_complete("r", 1), fence=("w1", 1))
    batcher.end_with("r", 1, _ending("r"))
    batcher.forget([("r", 1)])
    await batcher.flush()
    assert store.writes == [(["r"], [])]
    assert await _status(store, "r") is RunStatus.PENDING
    assert not batcher.ended("r", 1)
    await batcher.aclose()


async def test_an_attempt_forgotten_while_its_end_is_being_written_is_not_remembered(
    store: WatchedStore,
) -> None:
    # A lost lease ends the attempt while the write that holds its end is under way: once
    # written, nothing of the attempt stays behind (no growth per loss).
    await _claimed(store, "r")
    batcher = EventBatcher(store, publish=lambda _: None, linger=0, max_batch=1000)
    batcher.add(_complete("r", 1), fence=("w1", 1))
    batcher.end_with("r", 1, _ending("r"))
    store.go_on.clear()
    flushing = asyncio.create_task(batcher.flush())
    await store.writing.wait()
    batcher.forget([("r", 1)])
    store.go_on.set()
    await flushing
    assert await _status(store, "r") is RunStatus.COMPLETED
    assert not batcher.ended("r", 1)
    await batcher.aclose()
