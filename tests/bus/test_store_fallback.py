"""What the Redis bus does not carry, the store does, without costing a query per subscriber.

An API engine follows runs a worker engine executes (same database, one Redis). Idle followers
of a run share one safety read of the store per interval; events the publisher dropped (its
queue full) or the session stream no longer holds reach every subscriber from the store."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx2
import pytest
import redis.asyncio as redis

import culm
from culm.domain.events import RunEvent, is_terminal
from culm.domain.models import Run
from culm.runtime.roles import Role
from culm.runtime.streams import FOLLOWER_READS
from tests.api.conftest import running_server
from tests.bus.conftest import drop_keys, reachable_redis, unique_prefix
from tests.redisserver import private_redis
from tests.support import settings

pytestmark = pytest.mark.timeout(120)

IDLE = {"turns": [[{"text": "thinking"}, {"delay": 60}, {"text": "done"}]]}
# 40 tokens, 20 ms apart: the run lasts about a second.
STREAMING = {"turns": [[*([{"delay": 0.02}, {"text": "tok "}] * 40), {"text": "done"}]]}
SUBSCRIBERS = 40
# 150 tokens, 20 ms apart: about 3 s.
LONG = {"turns": [[*([{"delay": 0.02}, {"text": "tok "}] * 150), {"text": "done"}]]}
# 3,000 tokens at once: bursts far beyond a stream kept to ~100 entries.
BURST = {"turns": [[*([{"text": "t"}] * 3000), {"text": "done"}]]}


def _engines(home: Path, **overrides: Any) -> tuple[culm.Engine, culm.Engine]:
    common = {"heartbeat_seconds": 0.2, "claim_poll_seconds": 0.2, **overrides}
    api = culm.Engine(settings(home, scheduler=False, **common), role=Role.API)
    worker = culm.Engine(settings(home, scheduler=False, **common), role=Role.WORKER)
    for engine in (api, worker):
        engine.scripts.register("idle", IDLE)
        engine.scripts.register("stream", STREAMING)
    return api, worker


async def _until(condition: Callable[[], bool], timeout: float = 30) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)


async def _collect(events: AsyncIterator[RunEvent], first: asyncio.Event) -> list[RunEvent]:
    got: list[RunEvent] = []
    async with contextlib.aclosing(events):
        async for event in events:
            got.append(event)
            first.set()
            if is_terminal(event):
                break
    return got


@pytest.fixture
async def shared_redis() -> AsyncIterator[dict[str, str]]:
    url = await reachable_redis()
    prefix = unique_prefix()
    yield {"redis_url": url, "redis_prefix": prefix}
    await drop_keys(url, prefix)


async def test_idle_subscribers_of_one_run_share_one_store_read_per_interval(
    tmp_path: Path, shared_redis: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    api, worker = _engines(tmp_path, **shared_redis)
    async with api, worker:
        api.streams.safety.interval = 0.02  # many intervals, quickly
        reads = 0
        get_run: Callable[[str], Awaitable[Run | None]] = api.store.get_run

        async def counting_get_run(run_id: str) -> Run | None:
            nonlocal reads
            reads += 1
            return await get_run(run_id)

        monkeypatch.setattr(api.store, "get_run", counting_get_run)
        session = await api.create_session(model="scripted:idle")
        run = await api.start_run(session.session_id, "go")
        firsts = [asyncio.Event() for _ in range(SUBSCRIBERS)]
        streams = [asyncio.create_task(_collect(api.subscribe(run.run_id), f)) for f in firsts]
        async with asyncio.timeout(30):
            for first in firsts:
                await first.wait()  # read the store, now waiting on the bus
        await _until(lambda: api.streams.safety.count >= 3)
        reads_before, checks_before = reads, api.streams.safety.count
        await _until(lambda: api.streams.safety.count >= checks_before + 20)
        checks = api.streams.safety.count - checks_before
        # At most one read per interval for the run (a check may be under way at either end;
        # checks close together may share one read), where a read per subscriber would be
        # SUBSCRIBERS per interval.
        assert 1 <= reads - reads_before <= checks + 1
        assert not any(stream.done() for stream in streams)  # nobody woken for nothing
        await api.cancel(run.run_id)
        async with asyncio.timeout(30):
            results = await asyncio.gather(*streams)
        stored = await api.store.read_events(run.run_id)
        for got in results:
            assert [e.seq for e in got] == [e.seq for e in stored]


def _counter(metrics: str, name: str) -> float:
    for line in metrics.splitlines():
        if line.startswith(f"{name} "):
            return float(line.split()[-1])
    raise AssertionError(f"{name} not in /metrics:\n{metrics}")


async def test_what_an_overflowing_publish_queue_drops_reaches_every_subscriber_from_the_store(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The executing process's publish queue holds one batch and Redis stops taking writes
    for a while (``CLIENT PAUSE … WRITE``, on a private Redis): the publisher waits in its
    round trip, the queue overflows, and the drops are counted in ``/metrics`` and logged once.
    The followers on another engine see holes (or silence, once the run ended) and read the
    rest from the store: every seq once, in order."""
    caplog.set_level(logging.WARNING, logger="culm.bus")
    async with private_redis(tmp_path) as server:
        home = tmp_path / "home"
        overrides = {"redis_url": server.url, "bus_publish_queue_size": 1}
        executing = settings(home, scheduler=False, heartbeat_seconds=0.2, **overrides)
        api, _worker = _engines(home, **overrides)
        async with running_server(executing) as served, api:
            served.engine.scripts.register("stream", STREAMING)
            api.streams.safety.interval = 0.2
            session = await served.engine.create_session(model="scripted:stream")
            run = await served.engine.start_run(session.session_id, "go")
            firsts = [asyncio.Event() for _ in range(10)]
            streams = [
                asyncio.create_task(_collect(api.subscribe(run.run_id), first)) for first in firsts
            ]
            async with asyncio.timeout(30):
                for first in firsts:
                    await first.wait()
            client = redis.Redis.from_url(server.url)
            try:
                await client.execute_command("CLIENT", "PAUSE", "1500", "WRITE")
            finally:
                await client.aclose()
            async with asyncio.timeout(60):
                results = await asyncio.gather(*streams)
            stored = await api.store.read_events(run.run_id)
            assert is_terminal(stored[-1])
            for got in results:
                assert got == stored
            async with httpx2.AsyncClient(base_url=served.url) as http:
                metrics = (await http.get("/metrics")).text
            dropped = _counter(metrics, "culm_bus_events_dropped_total")
            assert dropped > 0
            assert api.bus.stats().received < len(stored)  # the bus did not bring them all
        warnings = [r for r in caplog.records if "not published to redis" in r.getMessage()]
        assert len(warnings) == 1


async def test_a_session_stream_fills_what_redis_trimmed_from_the_store(
    tmp_path: Path, shared_redis: dict[str, str]
) -> None:
    """Runs on a worker write bursts of events into streams kept to about 100 entries: the API's
    reader finds the session stream trimmed past its position (a hole in a run's ``seq``), and
    the session subscriber reads the missing events from the store."""
    api, worker = _engines(tmp_path, bus_stream_maxlen=100, **shared_redis)
    async with api, worker:
        for engine in (api, worker):
            engine.scripts.register("burst", BURST)
        session = await api.create_session(model="scripted:burst")
        got: list[RunEvent] = []
        first = asyncio.Event()

        async def follow() -> None:
            events = api.subscribe_session(session.session_id)
            async with contextlib.aclosing(events):
                first.set()
                async for event in events:
                    got.append(event)
                    if is_terminal(event):
                        return

        following = asyncio.create_task(follow())
        await first.wait()
        await _until(lambda: api.bus.stats().followed == 1)  # the reader reads the session
        run = await api.start_run(session.session_id, "go")
        async with asyncio.timeout(60):
            await following
        stored = await api.store.read_events(run.run_id)
        assert [(e.run_id, e.seq) for e in got] == [(e.run_id, e.seq) for e in stored]
        assert api.bus.stats().received < len(stored)  # Redis trimmed some before they were read


async def test_followers_polling_a_queued_run_read_the_store_a_few_at_a_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without a bus across processes, subscribers of a run no process has claimed yet poll the
    store; 60 of them must not hold 60 connections at once (1,000 in the bench took every
    connection of the pool, and streams failed when its wait timed out)."""
    api = culm.Engine(settings(tmp_path, scheduler=False), role=Role.API)  # nobody runs it
    async with api:
        api.scripts.register("stream", STREAMING)
        in_flight = peak = calls = 0

        def counted(method: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
            async def call(*args: Any, **kwargs: Any) -> Any:
                nonlocal in_flight, peak, calls
                in_flight += 1
                calls += 1
                peak = max(peak, in_flight)
                try:
                    return await method(*args, **kwargs)
                finally:
                    in_flight -= 1

            return call

        for name in ("get_run", "read_events"):
            monkeypatch.setattr(api.store, name, counted(getattr(api.store, name)))
        session = await api.create_session(model="scripted:stream")
        run = await api.start_run(session.session_id, "go")
        streams = [
            asyncio.create_task(_collect(api.subscribe(run.run_id), asyncio.Event()))
            for _ in range(60)
        ]
        await _until(lambda: calls >= 20)  # the followers polled a few times (reads are shared)
        for stream in streams:
            stream.cancel()
        await asyncio.gather(*streams, return_exceptions=True)
        assert 1 <= peak <= FOLLOWER_READS


async def test_subscribers_the_bus_keeps_busy_are_not_sent_to_the_store(
    tmp_path: Path, shared_redis: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """While a run streams, the store is always a little ahead of the bus: the safety check must
    leave alone the followers the bus keeps feeding (a read per follower per interval else)."""
    api, worker = _engines(tmp_path, **shared_redis)
    async with api, worker:
        for engine in (api, worker):
            engine.scripts.register("long", LONG)
        api.streams.safety.interval = 0.3
        reads = 0

        def counted(method: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
            async def call(*args: Any, **kwargs: Any) -> Any:
                nonlocal reads
                reads += 1
                return await method(*args, **kwargs)

            return call

        session = await api.create_session(model="scripted:long")
        run = await api.start_run(session.session_id, "go")
        firsts = [asyncio.Event() for _ in range(SUBSCRIBERS)]
        streams = [asyncio.create_task(_collect(api.subscribe(run.run_id), f)) for f in firsts]
        async with asyncio.timeout(30):
            for first in firsts:
                await first.wait()
        for name in ("get_run", "read_events"):
            monkeypatch.setattr(api.store, name, counted(getattr(api.store, name)))
        checks_before = api.streams.safety.count
        async with asyncio.timeout(60):
            results = await asyncio.gather(*streams)
        checks = api.streams.safety.count - checks_before
        assert checks >= 3  # the run streamed for several intervals
        # The checks' own reads, and fewer than one more per follower over the whole run
        # (a follower the loaded machine left silent for an interval may read once).
        assert reads - checks < SUBSCRIBERS
        stored = await api.store.read_events(run.run_id)
        for got in results:
            assert got == stored


class _StoreReads:
    """Counts the run reads (``get_run``, ``read_events``) an engine makes of its store."""

    def __init__(self, engine: culm.Engine, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        for name in ("get_run", "read_events"):
            monkeypatch.setattr(engine.store, name, self._counting(getattr(engine.store, name)))

    def _counting(self, method: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        async def counted(*args: Any, **kwargs: Any) -> Any:
            self.count += 1
            return await method(*args, **kwargs)

        return counted


QUEUED_SUBSCRIBERS = 200


async def test_subscribers_of_a_queued_run_share_their_store_reads(
    tmp_path: Path, shared_redis: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """200 subscribers on the API check that the run exists, join it while it waits in the
    queue, then follow it on the bus once a worker starts it: a handful of store reads in all,
    where each subscriber used to read the run twice (and the page after it) on its own."""
    api, worker = _engines(tmp_path, **shared_redis)
    async with api, worker:
        session = await api.create_session(model="scripted:idle")
        blocker = await api.start_run(session.session_id, "wait")
        run = await api.start_run(
            session.session_id, "go", model="scripted:stream", multitask="enqueue"
        )
        reads = _StoreReads(api, monkeypatch)

        async def subscriber(first: asyncio.Event) -> list[RunEvent]:
            await api.check_run(run.run_id)  # as the SSE and WebSocket routes do
            return await _collect(api.subscribe(run.run_id), first)

        firsts = [asyncio.Event() for _ in range(QUEUED_SUBSCRIBERS)]
        streams = [asyncio.create_task(subscriber(first)) for first in firsts]
        await _until(lambda: api.bus.stats().followed >= 1)
        await asyncio.sleep(0.5)  # every subscriber has read the store and waits on the bus
        connected = reads.count
        await api.cancel(blocker.run_id)
        async with asyncio.timeout(60):
            results = await asyncio.gather(*streams)
        stored = await api.store.read_events(run.run_id)
        for got in results:
            assert [e.seq for e in got] == [e.seq for e in stored]
        # Joining together: a few shared reads (one under way, one gathering the rest), not
        # one per subscriber; following on the bus: none but the run's safety checks.
        assert connected <= 10, connected
        assert reads.count - connected <= 4, reads.count - connected
