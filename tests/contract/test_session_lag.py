"""A lagging session subscriber is resumed from the store, never silently skipped.

The contract (docs/ARCHITECTURE.md, "Late and reconnecting subscribers"): each subscriber has a
bounded queue; a slow subscriber never slows the run or other subscribers; if it falls behind
past its queue it is resumed from the store, never silently skipped. Here the queue holds 2
events and the subscriber reads nothing while dozens arrive, in one run and across runs.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator
from pathlib import Path

from culm.domain.events import RunEvent, Token, is_terminal
from tests.contract.gate import held_run
from tests.support import collect
from tests.support import settings as engine_settings

QUEUE = 2


async def _until_terminal_of(stream: AsyncGenerator[RunEvent], run_id: str) -> list[RunEvent]:
    events: list[RunEvent] = []
    async with asyncio.timeout(20):
        async for event in stream:
            events.append(event)
            if event.run_id == run_id and is_terminal(event):
                return events
    raise AssertionError("the stream ended")


async def test_a_session_subscriber_whose_queue_overflows_gets_every_event_once(
    tmp_path: Path,
) -> None:
    home = engine_settings(tmp_path, subscriber_queue_size=QUEUE)
    async with held_run(home) as (engine, run, runner, gate):
        await engine.batcher.flush()  # what the run emitted so far is published
        cache = runner.replay_cache()  # what the stream starts with (the run waits at the gate)
        stream = engine.subscribe_session(run.session_id)
        async with contextlib.aclosing(stream):
            first = await anext(stream)  # subscribed; now it reads nothing for a while
            for i in range(50):
                runner.emit(Token(content=str(i)))
            await engine.batcher.flush()  # 50 stored and published: far past the queue
            gate.release.set()
            await engine.wait(run.run_id)
            received = [first, *await _until_terminal_of(stream, run.run_id)]
        stored = await collect(engine.subscribe(run.run_id))
    # The cache, then every event after it exactly once, in order.
    assert received == [*cache, *stored[cache[-1].seq :]]


async def test_runs_that_start_and_end_while_the_subscriber_lags_are_not_skipped(
    tmp_path: Path,
) -> None:
    home = engine_settings(tmp_path, subscriber_queue_size=QUEUE)
    async with held_run(home) as (engine, first_run, runner, gate):
        await engine.batcher.flush()  # what the run emitted so far is published
        cache = runner.replay_cache()
        stream = engine.subscribe_session(first_run.session_id)
        async with contextlib.aclosing(stream):
            first = await anext(stream)  # subscribed; now it reads nothing for a while
            gate.release.set()
            await engine.wait(first_run.run_id)
            later = []
            for message in ("two", "three"):
                run = await engine.start_run(first_run.session_id, message, model="scripted:echo")
                await engine.wait(run.run_id)
                later.append(run)
            received = [first, *await _until_terminal_of(stream, later[-1].run_id)]
        expected = [*cache, *await collect(engine.subscribe(first_run.run_id, after=cache[-1].seq))]
        for run in later:
            expected += await collect(engine.subscribe(run.run_id))
    assert [(e.run_id, e.seq) for e in received] == [(e.run_id, e.seq) for e in expected]
