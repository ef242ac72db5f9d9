"""The Redis link over a connection whose packets vanish (no RST: a black-holed host). A TCP
proxy in front of the shared Redis stands for the network; the test's keys have a prefix of
their own."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import pytest

from culm.bus.base import Topic
from culm.bus.link import RedisLink
from culm.bus.redis import RedisBus
from tests.blackhole import BlackHoleProxy
from tests.bus.conftest import drop_keys, reachable_redis, unique_prefix
from tests.bus.test_bus import Sink, tokens

pytestmark = pytest.mark.timeout(90)


@contextlib.asynccontextmanager
async def proxied_redis() -> AsyncIterator[tuple[BlackHoleProxy, str]]:
    url = await reachable_redis()
    parts = urlsplit(url)
    proxy = BlackHoleProxy(parts.hostname or "127.0.0.1", parts.port or 6379)
    await proxy.start()
    try:
        yield proxy, f"redis://127.0.0.1:{proxy.port}{parts.path}"
    finally:
        await proxy.aclose()


async def _until(check: object, timeout: float = 30) -> None:
    async with asyncio.timeout(timeout):
        while not check():  # type: ignore[operator]
            await asyncio.sleep(0.05)


async def test_a_black_holed_connection_turns_the_link_degraded_and_it_recovers() -> None:
    prefix = unique_prefix()
    async with proxied_redis() as (proxy, url):
        publisher = RedisBus(RedisLink(await reachable_redis(), prefix=prefix))
        follower = RedisBus(RedisLink(url, prefix=prefix))
        sink = Sink()
        follower.bind(sink)
        await publisher.start()
        await follower.start()
        try:
            async with follower.follow(Topic.run("r")):
                publisher.publish(tokens("r", 1, 2))
                await sink.until(2)
                proxy.holed = True  # the reader is blocked in XREAD: its reply never comes
                await _until(lambda: follower.state == "degraded")
                proxy.holed = False
                await _until(lambda: follower.state == "ok")
                publisher.publish(tokens("r", 3, 4))
                await sink.until(4)
            assert [event.seq for event in sink.events] == [1, 2, 3, 4]
            assert follower.link.reconnects == 1
        finally:
            await follower.aclose()
            await publisher.aclose()
            await drop_keys(await reachable_redis(), prefix)
