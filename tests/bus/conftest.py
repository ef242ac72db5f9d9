"""The bus conformance fixture: every test asking for ``buses`` runs over both backends, same
body. ``buses`` is a pair (publisher's bus, follower's bus): two processes' buses on one Redis,
or the one in-process bus twice."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as redis

from culm.bus.base import EventBus
from culm.bus.link import RedisLink
from culm.bus.local import LocalBus
from culm.bus.redis import RedisBus
from tests.conftest import reachable_redis


def unique_prefix() -> str:
    return f"culm-test:{uuid.uuid4().hex[:12]}:"


@pytest.fixture(params=["local", "redis"])
async def buses(request: pytest.FixtureRequest) -> AsyncIterator[tuple[EventBus, EventBus]]:
    if request.param == "local":
        bus: EventBus = LocalBus()
        await bus.start()
        try:
            yield bus, bus
        finally:
            await bus.aclose()
        return
    async with redis_pair() as pair:
        yield pair


@contextlib.asynccontextmanager
async def redis_pair() -> AsyncIterator[tuple[RedisBus, RedisBus]]:
    """Two started Redis buses on the shared test Redis, as two processes would have, under a
    key prefix of their own (dropped after)."""
    url = await reachable_redis()
    prefix = unique_prefix()
    one = RedisBus(RedisLink(url, prefix=prefix))
    two = RedisBus(RedisLink(url, prefix=prefix))
    await one.start()
    await two.start()
    try:
        yield one, two
    finally:
        await two.aclose()
        await one.aclose()
        await drop_keys(url, prefix)


async def drop_keys(url: str, prefix: str) -> None:
    """Delete a test's keys from the shared Redis."""
    client = redis.Redis.from_url(url)
    try:
        keys = [key async for key in client.scan_iter(match=f"{prefix}*", count=1000)]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()
