"""Streams across processes, over both buses (same bodies): an API engine follows runs that a
worker engine executes on the same database. Without Redis it reads them from the store; with
Redis the bus brings them. Either way: every seq once, in order, from any cursor. A session
stream sees every live event of its runs: in the one embedded process on the in-process bus (a
session stream does not follow other processes without Redis), across processes with Redis."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

import culm
from culm.bus.redis import RedisBus
from culm.domain.events import RunEvent, is_terminal
from culm.runtime.roles import Role
from tests.bus.conftest import drop_keys, reachable_redis, unique_prefix
from tests.support import settings

pytestmark = pytest.mark.timeout(90)

# 40 tokens, 20 ms apart: the run lasts about a second.
STREAMING = {"turns": [[*([{"delay": 0.02}, {"text": "tok "}] * 40), {"text": "done"}]]}


@pytest.fixture(params=["local", "redis"])
async def bus_settings(request: pytest.FixtureRequest) -> AsyncIterator[dict[str, Any]]:
    if request.param == "local":
        yield {}
        return
    url = await reachable_redis()
    prefix = unique_prefix()
    yield {"redis_url": url, "redis_prefix": prefix}
    await drop_keys(url, prefix)


@contextlib.asynccontextmanager
async def api_and_worker(
    home: Path, overrides: dict[str, Any]
) -> AsyncIterator[tuple[culm.Engine, culm.Engine]]:
    common = {"heartbeat_seconds": 0.2, "claim_poll_seconds": 0.2, **overrides}
    api = culm.Engine(settings(home, scheduler=False, **common), role=Role.API)
    worker = culm.Engine(settings(home, scheduler=False, **common), role=Role.WORKER)
    async with api, worker:
        for engine in (api, worker):
            engine.scripts.register("stream", STREAMING)
        yield api, worker


@contextlib.asynccontextmanager
async def deployment(home: Path, overrides: dict[str, Any]) -> AsyncIterator[culm.Engine]:
    """The engine that serves the API: API + worker with Redis, else one embedded process."""
    if overrides:
        async with api_and_worker(home, overrides) as (api, _worker):
            yield api
        return
    async with culm.Engine(settings(home, scheduler=False)) as embedded:
        embedded.scripts.register("stream", STREAMING)
        yield embedded


async def _collect(events: AsyncIterator[RunEvent]) -> list[RunEvent]:
    async with asyncio.timeout(60):
        return [event async for event in events]


async def test_subscribers_on_another_process_get_every_seq_once_from_any_cursor(
    tmp_path: Path, bus_settings: dict[str, Any]
) -> None:
    async with api_and_worker(tmp_path, bus_settings) as (api, _worker):
        session = await api.create_session(model="scripted:stream")
        run = await api.start_run(session.session_id, "go")
        cursors = [0, 0, 1, 5, 17, 30]
        streams = [
            asyncio.create_task(_collect(api.subscribe(run.run_id, after=c))) for c in cursors
        ]
        late = []
        for _ in range(4):  # more subscribers join while the run streams
            await asyncio.sleep(random.uniform(0.05, 0.3))
            cursor = random.randint(0, 20)
            cursors.append(cursor)
            late.append(asyncio.create_task(_collect(api.subscribe(run.run_id, after=cursor))))
        results = await asyncio.gather(*streams, *late)
        stored = await api.store.read_events(run.run_id)
        assert is_terminal(stored[-1])
        for cursor, got in zip(cursors, results, strict=True):
            assert [e.seq for e in got] == [e.seq for e in stored if e.seq > cursor]
            assert got == [e for e in stored if e.seq > cursor]
        if isinstance(api.bus, RedisBus):
            assert api.bus.reader.received > 0  # the bus carried them, not the store alone


async def test_the_session_stream_on_another_process_sees_every_live_event(
    tmp_path: Path, bus_settings: dict[str, Any]
) -> None:
    async with deployment(tmp_path, bus_settings) as api:
        session = await api.create_session(model="scripted:stream")
        got: list[RunEvent] = []
        ready = asyncio.Event()

        async def follow() -> None:
            events = api.subscribe_session(session.session_id)
            async with contextlib.aclosing(events):
                ready.set()
                async for event in events:
                    got.append(event)
                    if is_terminal(event):
                        return

        following = asyncio.create_task(follow())
        await ready.wait()
        await asyncio.sleep(0.3)  # subscribed (the generator started) before the run begins
        run = await api.start_run(session.session_id, "go")
        async with asyncio.timeout(60):
            await following
        stored = await api.store.read_events(run.run_id)
        assert [(e.run_id, e.seq) for e in got] == [(e.run_id, e.seq) for e in stored]
