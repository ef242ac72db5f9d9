"""What only the Redis bus has: the stream layout (ids from seq, trimming, expiry), and its
link's health across a Redis restart (a private redis-server, never the shared one)."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest
import redis.asyncio as redis

from culm.bus.base import Topic
from culm.bus.link import RedisLink
from culm.bus.redis import RedisBus
from tests.bus.conftest import drop_keys, reachable_redis, unique_prefix
from tests.bus.test_bus import Sink, complete, tokens
from tests.redisserver import private_redis

pytestmark = pytest.mark.timeout(60)


async def _until(check: object, timeout: float = 10) -> None:
    async with asyncio.timeout(timeout):
        while not check():  # type: ignore[operator]
            await asyncio.sleep(0.02)


async def test_a_run_stream_has_one_entry_per_seq_with_id_seq_0_and_expires() -> None:
    url = await reachable_redis()
    prefix = unique_prefix()
    bus = RedisBus(RedisLink(url, prefix=prefix), maxlen=100, ttl=120)
    await bus.start()
    client = redis.Redis.from_url(url)
    try:
        bus.publish(tokens("r1", 1, 3, session_id="s1"))
        bus.publish(tokens("r1", 2, 3, session_id="s1"))  # published again: refused as duplicates
        bus.publish([complete("r1", 4, session_id="s1")])
        await _until(lambda: bus.publisher.published >= 6)
        entries = await client.xrange(f"{prefix}run:r1")
        assert [entry_id for entry_id, _ in entries] == [b"1-0", b"2-0", b"3-0", b"4-0"]
        assert 0 < await client.ttl(f"{prefix}run:r1") <= 120
        assert 0 < await client.ttl(f"{prefix}session:s1") <= 120
        assert await client.xlen(f"{prefix}session:s1") == 6  # the session stream keeps both
    finally:
        await client.aclose()
        await bus.aclose()
        await drop_keys(url, prefix)


async def test_a_long_run_stream_is_trimmed_to_about_maxlen() -> None:
    url = await reachable_redis()
    prefix = unique_prefix()
    bus = RedisBus(RedisLink(url, prefix=prefix), maxlen=100, ttl=120)
    await bus.start()
    client = redis.Redis.from_url(url)
    try:
        for first in range(1, 2001, 100):
            bus.publish(tokens("long", first, first + 99))
        await _until(lambda: bus.publisher.published >= 2000)
        length = await client.xlen(f"{prefix}run:long")
        assert 100 <= length < 400  # MAXLEN ~ trims whole nodes: about, never below
        last = await client.xrevrange(f"{prefix}run:long", count=1)
        assert last[0][0] == b"2000-0"
    finally:
        await client.aclose()
        await bus.aclose()
        await drop_keys(url, prefix)


async def test_the_link_goes_degraded_once_and_back_and_the_bus_carries_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="culm.bus")
    async with private_redis(tmp_path) as server:
        publisher = RedisBus(RedisLink(server.url))
        follower = RedisBus(RedisLink(server.url))
        changes: list[str] = []
        sink = Sink()
        follower.bind(sink, lambda: changes.append(follower.state))
        await publisher.start()
        await follower.start()
        try:
            async with follower.follow(Topic.run("r")):
                publisher.publish(tokens("r", 1, 2))
                await sink.until(2)
                server.stop()
                await _until(lambda: follower.state == "degraded")
                publisher.publish(tokens("r", 3, 3))  # dropped: Redis is away
                await _until(lambda: publisher.state == "degraded")
                await server.start()
                await _until(lambda: follower.state == "ok" and publisher.state == "ok")
                publisher.publish(tokens("r", 4, 5))
                await sink.until(4)
            assert [event.seq for event in sink.events] == [1, 2, 4, 5]  # 3: from the store
            assert changes == ["ok", "degraded", "ok"]  # up at start, down, back
            assert follower.link.reconnects == 1
            assert publisher.stats().dropped >= 1
            outages = [r for r in caplog.records if "redis unreachable" in r.getMessage()]
            returns = [r for r in caplog.records if "reachable again" in r.getMessage()]
            assert len(outages) == 2 and len(returns) == 2  # once per process (two links)
        finally:
            await follower.aclose()
            await publisher.aclose()
