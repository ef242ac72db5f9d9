"""Session streams: the replay cache first, then live events of every run of the session."""

from __future__ import annotations

import asyncio
from pathlib import Path

import culm
from culm.domain.events import RunEvent, SubAgentStarted
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


async def test_live_events_of_every_run_of_the_session(tmp_path: Path) -> None:
    async with culm.Engine(settings(tmp_path)) as engine:
        session = await engine.create_session(model="scripted:echo")
        stream = engine.subscribe_session(session.session_id)
        reader = asyncio.create_task(_take(stream, 2 * 6))  # an echo run emits six events
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
    script = {"turns": [[{"text": "a"}, {"delay": 0.3}, {"text": "b"}]]}
    async with culm.Engine(settings(tmp_path)) as engine:
        engine.scripts.register("pause", script)
        session = await engine.create_session(model="scripted:pause")
        run = await engine.start_run(session.session_id, "go")
        async for event in engine.subscribe(run.run_id):
            if event.type == "token":
                break
        runner = engine.registry.get(run.run_id)
        assert runner is not None
        for i in range(CRITICAL + 5):
            runner.emit(SubAgentStarted(child_session_id=f"s{i}", child_run_id=f"r{i}"))
        await engine.batcher.flush()  # published to the runner once stored
        late = await _take(engine.subscribe_session(session.session_id), CRITICAL + 1)
        await engine.wait(run.run_id)
    cached = late[:CRITICAL]
    # The oldest critical events (execution_started, the first sub-agents) were evicted.
    assert [e.child_session_id for e in cached] == [  # type: ignore[union-attr]
        f"s{i}" for i in range(5, CRITICAL + 5)
    ]
    assert late[-1].type in {"token", "round_completed"}  # then live events follow


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
