"""The Redis stream publisher and reader under faults: a close with events still queued, a
failed placement, a refused write, a bug in the loop. Two buses on one Redis stand for two
processes; every test has a key prefix of its own."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from culm.bus.base import Topic
from culm.bus.link import RedisLink
from culm.bus.redis import RedisBus
from tests.bus.conftest import drop_keys, reachable_redis, unique_prefix
from tests.bus.test_bus import Sink, complete, tokens

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def pair() -> AsyncIterator[tuple[RedisBus, RedisBus]]:
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


async def test_a_terminal_published_just_before_close_still_reaches_another_process(
    pair: tuple[RedisBus, RedisBus],
) -> None:
    closing, follower = pair
    sink = Sink()
    follower.bind(sink)
    async with follower.follow(Topic.run("r")):
        closing.publish([*tokens("r", 1, 2), complete("r", 3)])
        await closing.publisher.aclose()  # at once: the batch is still queued
        await sink.until(3)
    assert [event.seq for event in sink.events] == [1, 2, 3]
    assert closing.publisher.dropped == 0
