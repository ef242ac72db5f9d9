"""Edges of ``culm.runtime.streams`` the contract tests leave out: the store page a stream reads
when the runner's ring no longer holds its cursor, and which runs a lagging session subscriber
catches up on (the session's recent ones it did not see end before it subscribed; never other
sessions', never older ones)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator
from pathlib import Path

import pytest

import culm
from culm.domain.events import RunEvent, Token, is_terminal
from culm.errors import NotFoundError, StorageUnavailableError
from culm.runtime import streams
from culm.runtime.runner import RING_CAPACITY
from tests.contract.gate import held_run
from tests.support import collect, settings

pytestmark = pytest.mark.timeout(90)


async def test_a_cursor_the_ring_lost_reads_the_store_a_page_at_a_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(streams, "STORE_PAGE", 10)
    async with held_run(settings(tmp_path)) as (engine, run, runner, gate):
        while runner.last_seq < RING_CAPACITY + 30:  # the ring no longer holds seq 1
            runner.emit(Token(content=str(runner.last_seq)))
        await engine.batcher.flush()
        last = runner.last_seq
        batches = engine.streams.run_event_batches(run.run_id, after=0)
        got: list[list[int]] = []
        async with contextlib.aclosing(batches), asyncio.timeout(30):
            async for batch in batches:
                got.append([event.seq for event in batch])
                if batch[-1].seq >= last:
                    break
        assert got[0] == list(range(1, 11))  # one page, then the next from the store
        assert all(len(seqs) <= 10 for seqs in got[:-1])
        assert [seq for seqs in got for seq in seqs] == list(range(1, last + 1))


async def _until_terminal_of(stream: AsyncGenerator[RunEvent], run_id: str) -> list[RunEvent]:
    events: list[RunEvent] = []
    async with asyncio.timeout(30):
        async for event in stream:
            events.append(event)
            if event.run_id == run_id and is_terminal(event):
                return events
    raise AssertionError("the stream ended")


async def test_a_lagging_session_subscriber_catches_up_on_its_own_recent_runs_only(
    tmp_path: Path,
) -> None:
    async with culm.Engine(settings(tmp_path, scheduler=False, subscriber_queue_size=2)) as engine:
        session = await engine.create_session(model="scripted:echo")
        # More finished runs than a catch-up looks at: the older ones are history too.
        for i in range(streams.CATCH_UP_RUNS + 2):
            await engine.wait((await engine.start_run(session.session_id, f"old {i}")).run_id)
        # Another session's runs, the latest of all: never in this session's stream.
        other = await engine.create_session(model="scripted:echo")
        for i in range(streams.CATCH_UP_RUNS):
            await engine.wait((await engine.start_run(other.session_id, f"elsewhere {i}")).run_id)
        stream = engine.subscribe_session(session.session_id)
        async with contextlib.aclosing(stream):
            first = await anext(stream)  # the last run's replay cache begins
            run = await engine.start_run(session.session_id, "new")
            await engine.wait(run.run_id)  # far past a queue of two: the subscriber lags
            received = [first, *await _until_terminal_of(stream, run.run_id)]
            # Subscribed again after the lag: the next run comes too.
            then = await engine.start_run(session.session_id, "then")
            following = await _until_terminal_of(stream, then.run_id)
            # Only the new queue is registered: the lagged one was dropped.
            subscribers = engine.registry._session_subscribers[session.session_id]
            assert len(subscribers) == 1 and not next(iter(subscribers)).lagged
        assert session.session_id not in engine.registry._session_subscribers  # closed: gone
        new = await collect(engine.subscribe(run.run_id))
        later = await collect(engine.subscribe(then.run_id))
    assert {event.session_id for event in received} == {session.session_id}
    cached = [event for event in received if event.run_id != run.run_id]
    assert {event.run_id for event in cached} == {first.run_id}  # the cache of the last old run
    assert [e.seq for e in received if e.run_id == run.run_id] == [e.seq for e in new]
    assert [(e.run_id, e.seq) for e in following] == [(e.run_id, e.seq) for e in later]


async def test_a_stream_of_a_live_run_attaches_to_its_runner(tmp_path: Path) -> None:
    """Live events come from the runner's queue, not from polling the store."""
    async with held_run(settings(tmp_path)) as (engine, run, runner, gate):
        await engine.batcher.flush()
        stream = engine.subscribe(run.run_id)
        async with contextlib.aclosing(stream):
            await anext(stream)
            assert runner.subscriber_count == 1
            runner.emit(Token(content="live"))
            async with asyncio.timeout(30):
                while (event := await anext(stream)).type != "token":
                    pass
            assert event.content == "live"  # type: ignore[attr-defined]
        assert runner.subscriber_count == 0  # detached when the stream closed


async def test_an_unknown_run_or_session_says_which(tmp_path: Path) -> None:
    async with culm.Engine(settings(tmp_path, scheduler=False)) as engine:
        with pytest.raises(NotFoundError) as checked:
            await engine.streams.check_run("no-such-run")
        with pytest.raises(NotFoundError) as followed:
            await collect(engine.subscribe("no-such-run"))
        with pytest.raises(NotFoundError) as session:
            await anext(engine.subscribe_session("no-such-session"))
    for raised in (checked, followed):
        assert (raised.value.kind, raised.value.ident) == ("run", "no-such-run")
        assert str(raised.value) == "run 'no-such-run' not found"
    assert (session.value.kind, session.value.ident) == ("session", "no-such-session")


async def test_a_store_that_fails_a_moment_delays_a_finished_runs_stream_but_cuts_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with culm.Engine(settings(tmp_path, scheduler=False)) as engine:
        run = await engine.run("hello", model="scripted:echo")
        await engine.wait(run.run_id)
        stored = await engine.store.read_events(run.run_id)
        failures = [StorageUnavailableError("database unreachable")]
        get_run = engine.store.get_run

        async def flaky(run_id: str) -> culm.Run | None:
            if failures:
                raise failures.pop()
            return await get_run(run_id)

        monkeypatch.setattr(engine.store, "get_run", flaky)
        events = await collect(engine.subscribe(run.run_id))
    assert not failures
    assert [e.seq for e in events] == [e.seq for e in stored]
