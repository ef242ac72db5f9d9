"""The event bus contract, over both backends (same bodies): see ``buses`` in conftest.

A bus that crosses processes brings a followed topic's events to the follower's sink, each once
and in order from the moment ``follow`` returns; the in-process bus brings nothing (the runner
registry delivers locally). Both announce terminal events to waiters, published or received.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime

import pytest

from culm.bus.base import EventBus, Topic
from culm.domain.events import Complete, RunEvent, Token
from culm.domain.models import Usage

pytestmark = pytest.mark.timeout(30)

TS = datetime(2026, 12, 1, tzinfo=UTC)


def tokens(run_id: str, first: int, last: int, session_id: str = "s1") -> list[RunEvent]:
    return [
        Token(content=f"t{seq}").stamped(seq=seq, run_id=run_id, session_id=session_id, ts=TS)
        for seq in range(first, last + 1)
    ]


def complete(run_id: str, seq: int, session_id: str = "s1") -> RunEvent:
    return Complete(usage=Usage(), final_message="ok").stamped(
        seq=seq, run_id=run_id, session_id=session_id, ts=TS
    )


class Sink:
    def __init__(self) -> None:
        self.events: list[RunEvent] = []
        self.changed = asyncio.Event()

    def __call__(self, events: Sequence[RunEvent]) -> None:
        self.events.extend(events)
        self.changed.set()

    async def until(self, count: int) -> None:
        async with asyncio.timeout(10):
            while len(self.events) < count:
                self.changed.clear()
                await self.changed.wait()


async def test_a_followed_run_s_events_reach_the_sink_once_in_order_across_processes(
    buses: tuple[EventBus, EventBus],
) -> None:
    publisher, follower = buses
    sink = Sink()
    follower.bind(sink)
    async with follower.follow(Topic.run("r1")):
        publisher.publish(tokens("r1", 1, 3))
        publisher.publish(tokens("other", 1, 2))  # not followed
        publisher.publish([*tokens("r1", 4, 5), complete("r1", 6)])
        if follower.crosses_processes:
            await sink.until(6)
    await asyncio.sleep(0.05)  # nothing more arrives
    expected = list(range(1, 7)) if follower.crosses_processes else []
    assert [event.seq for event in sink.events] == expected
    assert all(event.run_id == "r1" for event in sink.events)


async def test_a_followed_session_gets_the_events_of_all_its_runs(
    buses: tuple[EventBus, EventBus],
) -> None:
    publisher, follower = buses
    sink = Sink()
    follower.bind(sink)
    async with follower.follow(Topic.session("s9")):
        publisher.publish(tokens("a", 1, 2, session_id="s9"))
        publisher.publish(tokens("b", 1, 1, session_id="s9"))
        publisher.publish(tokens("c", 1, 1, session_id="elsewhere"))
        if follower.crosses_processes:
            await sink.until(3)
    expected = [("a", 1), ("a", 2), ("b", 1)] if follower.crosses_processes else []
    assert [(event.run_id, event.seq) for event in sink.events] == expected


async def test_events_published_before_following_are_not_brought_again(
    buses: tuple[EventBus, EventBus],
) -> None:
    # What was published before ``follow`` returned is in the store: the follower reads it
    # there. The bus brings only what comes after.
    publisher, follower = buses
    sink = Sink()
    follower.bind(sink)
    publisher.publish(tokens("r2", 1, 3))
    await asyncio.sleep(0.2)  # published for sure
    async with follower.follow(Topic.run("r2")):
        publisher.publish(tokens("r2", 4, 4))
        if follower.crosses_processes:
            await sink.until(1)
    assert [event.seq for event in sink.events] == ([4] if follower.crosses_processes else [])


async def test_a_terminal_event_wakes_its_waiters_and_only_them(
    buses: tuple[EventBus, EventBus],
) -> None:
    publisher, follower = buses
    async with follower.terminal_notice("r3") as ended, follower.terminal_notice("r4") as other:
        publisher.publish(tokens("r3", 1, 2))
        await asyncio.sleep(0.1)
        assert not ended.is_set()
        publisher.publish([complete("r3", 3)])
        async with asyncio.timeout(5):
            await ended.wait()
        assert not other.is_set()


async def test_wait_terminal_says_false_after_its_timeout(
    buses: tuple[EventBus, EventBus],
) -> None:
    _publisher, follower = buses
    assert await follower.wait_terminal("never", timeout=0.2) is False


async def test_wait_terminal_says_true_when_the_run_ends_meanwhile(
    buses: tuple[EventBus, EventBus],
) -> None:
    publisher, follower = buses
    waiting = asyncio.create_task(follower.wait_terminal("r5", timeout=10))
    await asyncio.sleep(0.2)  # following by now
    publisher.publish([complete("r5", 1)])
    assert await waiting is True


async def test_a_bus_that_crosses_processes_says_ok_else_disabled(
    buses: tuple[EventBus, EventBus],
) -> None:
    for bus in buses:
        assert bus.state == ("ok" if bus.crosses_processes else "disabled")
