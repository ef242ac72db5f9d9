"""The Redis stream publisher and reader under faults: a close with events still queued, a
failed placement, a refused write, a bug in the loop. Two buses on one Redis stand for two
processes; every test has a key prefix of its own."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from culm.bus.base import Topic
from culm.bus.redis import RedisBus
from culm.bus.redis_streams import run_key
from tests.bus.conftest import redis_pair
from tests.bus.test_bus import Sink, complete, tokens

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def pair() -> AsyncIterator[tuple[RedisBus, RedisBus]]:
    async with redis_pair() as buses:
        yield buses


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


async def _until(check: Callable[[], bool], timeout: float = 10) -> None:
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.02)


async def test_a_failed_placement_never_replays_a_session_s_earlier_runs_as_live(
    pair: tuple[RedisBus, RedisBus], monkeypatch: pytest.MonkeyPatch
) -> None:
    publisher, follower = pair
    publisher.publish([*tokens("earlier", 1, 2), complete("earlier", 3)])
    await _until(lambda: publisher.publisher.published == 3)
    real = follower.link.client.xrevrange
    failures = [ConnectionError("redis went away while placing")]

    async def failing_once(*args: Any, **kwargs: Any) -> Any:
        if failures:
            raise failures.pop()
        return await real(*args, **kwargs)

    monkeypatch.setattr(follower.link.client, "xrevrange", failing_once)
    sink = Sink()
    changes: list[str] = []
    follower.bind(sink, lambda: changes.append(follower.state))
    async with follower.follow(Topic.session("s1")):
        # Down, back up, then placed late: followers are told to read the store each time.
        await _until(lambda: changes == ["degraded", "ok", "ok"])
        publisher.publish([*tokens("later", 1, 2), complete("later", 3)])
        await sink.until(3)
    assert [(event.run_id, event.seq) for event in sink.events] == [
        ("later", 1),
        ("later", 2),
        ("later", 3),
    ]


async def test_a_second_follower_places_the_key_when_the_first_is_cancelled_while_placing(
    pair: tuple[RedisBus, RedisBus], monkeypatch: pytest.MonkeyPatch
) -> None:
    publisher, follower = pair
    real = follower.link.client.xrevrange
    release = asyncio.Event()
    calls: list[str] = []

    async def slow_first(*args: Any, **kwargs: Any) -> Any:
        calls.append("xrevrange")
        if len(calls) == 1:
            await release.wait()  # never set: the first follower is cancelled in here
        return await real(*args, **kwargs)

    monkeypatch.setattr(follower.link.client, "xrevrange", slow_first)
    sink = Sink()
    follower.bind(sink)
    first = asyncio.create_task(follower.reader.add(run_key(follower.link, "r")))
    await _until(lambda: calls == ["xrevrange"])
    second = asyncio.create_task(follower.reader.add(run_key(follower.link, "r")))
    await asyncio.sleep(0)  # the second one waits on the first one's placement
    first.cancel()
    follower.reader.remove(run_key(follower.link, "r"))  # what follow() does on the cancel
    await second
    publisher.publish(tokens("r", 1, 2))
    await sink.until(2)
    assert [event.seq for event in sink.events] == [1, 2]


async def test_the_publisher_and_reader_go_on_after_an_unexpected_error(
    pair: tuple[RedisBus, RedisBus], monkeypatch: pytest.MonkeyPatch
) -> None:
    publisher, follower = pair
    real_pipeline = publisher.link.client.pipeline
    broken = [RuntimeError("a bug while publishing")]

    def pipeline_failing_once(*args: Any, **kwargs: Any) -> Any:
        if broken:
            raise broken.pop()
        return real_pipeline(*args, **kwargs)

    monkeypatch.setattr(publisher.link.client, "pipeline", pipeline_failing_once)
    received: list[int] = []
    sink_broken = [RuntimeError("a bug while delivering")]

    def sink(events: Any) -> None:
        if sink_broken:
            raise sink_broken.pop()
        received.extend(event.seq for event in events)

    follower.bind(sink)
    async with follower.follow(Topic.run("r")):
        publisher.publish(tokens("r", 1, 1))  # the publisher's bug: dropped (it is stored)
        await _until(lambda: publisher.publisher.dropped == 1)
        publisher.publish(tokens("r", 2, 2))  # the reader's bug: lost here (it is stored)
        await _until(lambda: not sink_broken)
        publisher.publish(tokens("r", 3, 4))
        await _until(lambda: received == [3, 4])
    assert publisher.state == "ok" and follower.state == "ok"


async def test_a_write_redis_refuses_counts_as_a_failure_and_followers_catch_up(
    pair: tuple[RedisBus, RedisBus],
) -> None:
    publisher, follower = pair
    changes: list[str] = []
    follower.bind(Sink())
    publisher.bind(Sink(), lambda: changes.append(publisher.state))
    # A session key of the wrong type: its XADD answers WRONGTYPE (not the duplicate id).
    await publisher.link.client.set(publisher.link.key("session", "s1"), "not a stream")
    publisher.publish(tokens("r", 1, 1))
    await _until(lambda: publisher.publisher.published == 1)
    assert publisher.publisher.dropped == 1  # the session entry
    await _until(lambda: changes == ["degraded", "ok"])  # its followers read the store
    await publisher.link.client.delete(publisher.link.key("session", "s1"))
    publisher.publish(tokens("r", 1, 1))  # published again: the duplicate id is no failure
    await _until(lambda: publisher.publisher.published == 2)
    assert publisher.publisher.dropped == 1
    assert changes == ["degraded", "ok"]
