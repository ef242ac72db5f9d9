"""A run stream that follows the store (no runner here, no bus across processes): woken by the
registry when the run gets a runner here, not by its poll, and then attached to that runner; and
ended by :meth:`Streams.close` between two pages of a finished run, before its end."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import pytest

import culm
from culm.domain.events import RunEvent, is_terminal
from culm.runtime import streams
from culm.runtime.registry import RunnerRegistry
from tests.contract.gate import GateTool
from tests.runtime.long_run import finished_long_run
from tests.support import collect, settings, tool_turn

pytestmark = pytest.mark.timeout(60)

BLOCK = {"turns": [[{"text": "thinking"}, {"delay": 60}, {"text": "done"}]]}


async def test_a_queued_runs_stream_is_woken_when_it_starts_here_and_attaches_to_its_runner(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No poll within the test: only the registry's wake-up can move the stream on.
    monkeypatch.setattr(streams, "POLL_INTERVAL", 3600.0)
    gate = GateTool()
    async with culm.Engine(settings(tmp_path), tools=[gate]) as engine:
        engine.scripts.register("block", BLOCK)
        engine.scripts.register("gated", {"turns": [tool_turn("gate"), [{"text": "done"}]]})
        session = await engine.create_session(model="scripted:block", tools=["gate"])
        blocker = await engine.start_run(session.session_id, "wait")
        run = await engine.start_run(
            session.session_id, "go", model="scripted:gated", multitask="enqueue"
        )
        stream = engine.subscribe(run.run_id)
        async with contextlib.aclosing(stream):
            read = engine.streams.reads.count
            first = asyncio.create_task(anext(stream))
            async with asyncio.timeout(20):
                while engine.streams.reads.count == read:  # it read the queued run: it waits
                    await asyncio.sleep(0.01)
            await engine.cancel(blocker.run_id)
            await gate.entered.wait()  # the run is live here, held inside its tool call
            runner = engine.registry.get(run.run_id)
            assert runner is not None
            async with asyncio.timeout(20):
                event = await first  # from the runner's ring: nothing of it is read yet
            assert event.seq == 1
            assert runner.subscriber_count == 1
            gate.release.set()
            rest = await collect(stream)
        stored = await engine.store.read_events(run.run_id)
    assert [e.seq for e in [event, *rest]] == [e.seq for e in stored]
    assert is_terminal(rest[-1])


async def test_closing_ends_a_stream_between_two_pages_of_a_finished_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with finished_long_run(tmp_path, monkeypatch) as (engine, run_id, stored):
        # A second Streams over the store, with a registry of its own: the run is not here.
        following = streams.Streams(engine.store, RunnerRegistry(), engine.batcher, 100)
        batches = following.run_event_batches(run_id, after=0)
        received: list[RunEvent] = []
        async with contextlib.aclosing(batches), asyncio.timeout(20):
            received += await anext(batches)
            following.close()
            async for batch in batches:
                received += batch
    seqs = [e.seq for e in received]
    assert seqs[:10] == [e.seq for e in stored[:10]]
    assert seqs == [e.seq for e in stored[: len(seqs)]]  # in order, nothing skipped
    assert not any(is_terminal(e) for e in received)  # ended before the run's end
    assert len(seqs) < len(stored)
