"""The bus conformance fixture: every test asking for ``buses`` runs over both backends, same
body. ``buses`` is a pair (publisher's bus, follower's bus): two processes' buses on one Redis,
or the one in-process bus twice."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as redis

from culm.bus.base import EventBus
from culm.bus.link import RedisLink
from culm.bus.local import LocalBus
from culm.bus.redis import RedisBus
from tests.conftest import REDIS_URL, service_unavailable


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


async def reachable_redis() -> str:
    """The shared test Redis's URL (skipped, or failed under CI, when it does not answer)."""
    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=5)
    try:
        await client.ping()
        return REDIS_URL
    except (OSError, redis.RedisError) as exc:
        error = exc
    finally:
        await client.aclose()
    service_unavailable("Redis", REDIS_URL, error)


async def drop_keys(url: str, prefix: str) -> None:
    """Delete a test's keys from the shared Redis."""
    client = redis.Redis.from_url(url)
    try:
        keys = [key async for key in client.scan_iter(match=f"{prefix}*", count=1000)]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()
