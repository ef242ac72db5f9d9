"""Session streams: the replay cache first, then live events of every run of the session."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import culm
from culm.domain.events import RunEvent, SubAgentStarted, is_terminal
from tests.contract.gate import held_run
from tests.support import collect, settings

CRITICAL = 32  # docs/ARCHITECTURE.md: "the last ≤ 32 critical events" (the contract's number)


async def _take(stream: object, count: int) -> list[RunEvent]:
    events = []
    async with asyncio.timeout(10):
        async for event in stream:  # type: ignore[attr-defined]
            events.append(event)
            if len(events) == count:
                break
    return events


async def _take_runs(stream: object, runs: int) -> list[RunEvent]:
    """Every event until ``runs`` runs have ended (however many events a run emits)."""
    events: list[RunEvent] = []
    async with asyncio.timeout(10):
        async for event in stream:  # type: ignore[attr-defined]
            events.append(event)
            if sum(is_terminal(e) for e in events) == runs:
                break
    return events


async def test_live_events_of_every_run_of_the_session(tmp_path: Path) -> None:
    async with culm.Engine(settings(tmp_path)) as engine:
        session = await engine.create_session(model="scripted:echo")
        stream = engine.subscribe_session(session.session_id)
        reader = asyncio.create_task(_take_runs(stream, 2))
        await asyncio.sleep(0.05)
        first = await engine.start_run(session.session_id, "one")
        await engine.wait(first.run_id)
        second = await engine.start_run(session.session_id, "two")
        await engine.wait(second.run_id)
        events = await reader
        expected = [
            *await collect(engine.subscribe(first.run_id)),
            *await collect(engine.subscribe(second.run_id)),
        ]
    assert events == expected


async def test_a_late_session_subscriber_gets_the_replay_cache_first(tmp_path: Path) -> None:
    # The run waits inside a tool until the gate opens (not for a delay: under load a delay
    # ran out before the test subscribed, and live events mixed into what it took for the cache).
    async with held_run(settings(tmp_path)) as (engine, run, runner, gate):
        for i in range(CRITICAL + 5):
            runner.emit(SubAgentStarted(child_session_id=f"s{i}", child_run_id=f"r{i}"))
        await engine.batcher.flush()  # published to the runner once stored
        budget = runner.last_budget_event is not None  # the cache also holds the last budget
        stream = engine.subscribe_session(run.session_id)
        async with contextlib.aclosing(stream):
            late = await _take(stream, CRITICAL + budget)
            gate.release.set()
            live = await _take(stream, 1)
    cached = [e for e in late if e.type != "token_budget_updated"]
    # The oldest critical events (execution_started, the first sub-agents) were evicted.
    assert [e.child_session_id for e in cached] == [  # type: ignore[union-attr]
        f"s{i}" for i in range(5, CRITICAL + 5)
    ]
    assert live[0].seq > late[-1].seq  # then live events follow


async def test_a_session_with_a_finished_run_replays_its_critical_events(tmp_path: Path) -> None:
    async with culm.Engine(settings(tmp_path)) as engine:
        run = await engine.run("hi", model="scripted:echo")
        await engine.wait(run.run_id)
        cached = await _take(engine.subscribe_session(run.session_id), 3)
    assert [e.type for e in cached] == ["execution_started", "token_budget_updated", "complete"]


async def test_unknown_session_stream_raises(tmp_path: Path) -> None:
    async with culm.Engine(settings(tmp_path)) as engine:
        try:
            await _take(engine.subscribe_session("missing"), 1)
        except culm.NotFoundError:
            return
    raise AssertionError("expected NotFoundError")


async def test_the_cache_is_the_active_runs_even_with_a_later_run_queued(tmp_path: Path) -> None:
    # The session's latest run in the store is the queued one (nothing stored yet): the cache
    # must come from the run executing, whatever the store lists first.
    async with held_run(settings(tmp_path)) as (engine, run, runner, gate):
        later = await engine.start_run(run.session_id, "later", multitask="enqueue")
        await engine.batcher.flush()
        expected = runner.replay_cache()
        stream = engine.subscribe_session(run.session_id)
        async with contextlib.aclosing(stream):
            cached = await _take(stream, len(expected))
        await engine.cancel(later.run_id)
    assert cached == expected
    assert cached[0].type == "execution_started" and cached[0].run_id == run.run_id
