"""A session stream while the bus changes state: a change (down, back, or a failed round of the
Redis reader) sends the stream to the store for what the bus may have lost, and while the bus
is degraded the stream reads the store every second besides, since nothing else would bring it
the session's new events.

The other process is a second :class:`Streams` over the engine's store, with a registry of its
own (the engine's runs never reach it but through the store) and a bus whose state the test
sets (:class:`SettableBus`)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator
from pathlib import Path

import pytest

import culm
from culm.domain.events import RunEvent, is_terminal
from culm.runtime.registry import RunnerRegistry
from culm.runtime.streams import Streams
from tests.runtime.test_safety import SettableBus
from tests.support import settings

pytestmark = pytest.mark.timeout(60)


def _elsewhere(engine: culm.Engine, bus: SettableBus) -> tuple[Streams, RunnerRegistry]:
    registry = RunnerRegistry()
    bus.bind(registry.deliver, registry.bus_changed)
    return Streams(engine.store, registry, engine.batcher, 100, bus=bus), registry


async def _until_end_of(stream: AsyncGenerator[RunEvent], run_id: str) -> list[RunEvent]:
    """The stream's events up to ``run_id``'s terminal event."""
    got: list[RunEvent] = []
    async with asyncio.timeout(30):
        async for event in stream:
            got.append(event)
            if event.run_id == run_id and is_terminal(event):
                return got
    raise AssertionError("the stream ended")


async def _subscribed(registry: RunnerRegistry, session_id: str) -> None:
    async with asyncio.timeout(30):
        while not registry._session_subscribers.get(session_id):
            await asyncio.sleep(0.005)


async def test_a_session_stream_reads_the_store_when_woken_and_each_second_while_degraded(
    tmp_path: Path,
) -> None:
    async with culm.Engine(settings(tmp_path, scheduler=False)) as engine:
        bus = SettableBus()
        streams, registry = _elsewhere(engine, bus)
        session = await engine.create_session(model="scripted:echo")
        done = await engine.start_run(session.session_id, "before")
        await engine.wait(done.run_id)  # over before the subscriber came: its cache
        cache = await streams._stored_cache(session.session_id)
        stream = streams.session_events(session.session_id)
        async with contextlib.aclosing(stream):
            first = await anext(stream)
            rest_of_cache = [await anext(stream) for _ in cache[1:]]
            await _subscribed(registry, session.session_id)
            # Each run is stored here and never published to the stream, before the stream
            # is read on: only a read of the store can bring it.
            run = await engine.start_run(session.session_id, "while ok")
            await engine.wait(run.run_id)
            bus.become("degraded")  # the change: what did the bus miss?
            missed = await _until_end_of(stream, run.run_id)
            later = await engine.start_run(session.session_id, "while degraded")
            await engine.wait(later.run_id)  # no change: only the poll brings it
            polled = await _until_end_of(stream, later.run_id)
            bus.become("ok")
            back = await engine.start_run(session.session_id, "back")
            await engine.wait(back.run_id)
            # A wake-up while "ok" (the Redis reader failed a round), and no poll.
            bus.become("ok")
            woken = await _until_end_of(stream, back.run_id)
        stored = {
            run_id: [e.seq for e in await engine.store.read_events(run_id)]
            for run_id in (run.run_id, later.run_id, back.run_id)
        }
    assert [(e.run_id, e.seq) for e in [first, *rest_of_cache]] == [
        (e.run_id, e.seq) for e in cache
    ]
    assert [e.seq for e in missed] == stored[run.run_id]
    assert {e.run_id for e in missed} == {run.run_id}
    assert [e.seq for e in polled] == stored[later.run_id]
    assert {e.run_id for e in polled} == {later.run_id}
    assert [e.seq for e in woken] == stored[back.run_id]
    assert {e.run_id for e in woken} == {back.run_id}
