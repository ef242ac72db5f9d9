"""The bus's control half (cancel notices), over both backends (same bodies): see ``buses``.

A notice reaches the handler its owner registered, and only that one; ``send_cancel`` says
whether it was delivered (False for an owner nobody listens for: the DB flag and the owner's
heartbeat do the work then). On Redis the notice crosses processes (two clients, as two
processes would be), the listener subscribes again after Redis restarts, and while Redis is
down ``send_cancel`` says False at once instead of hanging.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from culm.bus.base import EventBus
from culm.bus.link import RedisLink
from culm.bus.redis import RedisBus
from culm.bus.redis_control import decode_cancel, encode_cancel
from tests.bus.conftest import unique_prefix
from tests.redisserver import private_redis

pytestmark = pytest.mark.timeout(60)


class Inbox:
    def __init__(self) -> None:
        self.notices: list[tuple[str, str]] = []
        self._arrived = asyncio.Event()

    def __call__(self, run_id: str, reason: str) -> None:
        self.notices.append((run_id, reason))
        self._arrived.set()

    async def next(self) -> tuple[str, str]:
        await asyncio.wait_for(self._arrived.wait(), 10)
        self._arrived.clear()
        return self.notices[-1]


async def listening(bus: EventBus) -> None:
    """Until the bus listens for notices (at once in-process)."""
    if isinstance(bus, RedisBus):
        await asyncio.wait_for(bus.control.listening.wait(), 10)


async def test_a_cancel_reaches_its_owner_s_handler_only(
    buses: tuple[EventBus, EventBus],
) -> None:
    owner_bus, other_bus = buses
    owner, other = Inbox(), Inbox()
    owner_bus.on_cancel("worker-a", owner)
    other_bus.on_cancel("worker-b", other)
    await listening(owner_bus)
    await listening(other_bus)

    assert await other_bus.send_cancel("worker-a", "run-1", "cancelled by request") is True
    assert await owner.next() == ("run-1", "cancelled by request")
    assert await other_bus.send_cancel("worker-a", "run-2", "interrupted by a new run") is True
    assert await owner.next() == ("run-2", "interrupted by a new run")
    assert await owner_bus.send_cancel("worker-b", "run-3", "x") is True
    assert await other.next() == ("run-3", "x")
    assert owner.notices == [
        ("run-1", "cancelled by request"),
        ("run-2", "interrupted by a new run"),
    ]
    assert other.notices == [("run-3", "x")]


async def test_a_cancel_for_an_owner_nobody_listens_for_is_not_delivered(
    buses: tuple[EventBus, EventBus],
) -> None:
    listener, sender = buses
    inbox = Inbox()
    listener.on_cancel("worker-a", inbox)
    await listening(listener)
    assert await sender.send_cancel("worker-gone", "run-1", "cancelled") is False
    assert await sender.send_cancel("worker-a", "run-2", "cancelled") is True
    assert await inbox.next() == ("run-2", "cancelled")
    assert inbox.notices == [("run-2", "cancelled")]


async def test_a_failing_handler_does_not_stop_the_next_notices(
    buses: tuple[EventBus, EventBus],
) -> None:
    listener, sender = buses
    inbox = Inbox()

    def handler(run_id: str, reason: str) -> None:
        inbox(run_id, reason)
        if run_id == "run-bad":
            raise RuntimeError("a handler bug")

    listener.on_cancel("worker-a", handler)
    await listening(listener)
    await sender.send_cancel("worker-a", "run-bad", "x")
    assert await inbox.next() == ("run-bad", "x")
    assert await sender.send_cancel("worker-a", "run-good", "y") is True
    assert await inbox.next() == ("run-good", "y")


def test_the_notice_is_versioned_json_and_a_listener_ignores_what_it_does_not_know() -> None:
    assert decode_cancel(encode_cancel("r1", "why")) == ("r1", "why")
    wire = b'{"v": 1, "type": "cancel", "run_id": "r1", "reason": "x"}'
    assert decode_cancel(wire) == ("r1", "x")
    strangers = [b"", b"not json", b"[]", b'{"type": "pause", "run_id": "r1"}',
                 b'{"type": "cancel", "run_id": 5, "reason": "x"}', b"\xff\xfe"]  # fmt: skip
    for stranger in strangers:
        assert decode_cancel(stranger) is None


async def test_after_a_redis_restart_the_listener_is_back_and_meanwhile_sends_fail_fast(
    tmp_path: Path,
) -> None:
    async with private_redis(tmp_path) as server:
        prefix = unique_prefix()
        listener = RedisBus(RedisLink(server.url, prefix=prefix))
        sender = RedisBus(RedisLink(server.url, prefix=prefix))
        inbox = Inbox()
        listener.on_cancel("worker-a", inbox)
        try:
            await listener.start()
            await sender.start()
            await listening(listener)
            assert await sender.send_cancel("worker-a", "run-1", "before") is True
            assert await inbox.next() == ("run-1", "before")

            server.stop()
            # Down: not delivered, and said at once (the caller's cancel must not hang on it).
            async with asyncio.timeout(5):
                assert await sender.send_cancel("worker-a", "run-2", "during") is False
                while listener.control.listening.is_set():
                    await asyncio.sleep(0.01)
                assert await sender.send_cancel("worker-a", "run-3", "during") is False

            await server.start()
            await listening(listener)
            await asyncio.wait_for(sender.link.wait_up(), 10)
            assert await sender.send_cancel("worker-a", "run-4", "after") is True
            assert await inbox.next() == ("run-4", "after")
            assert [run_id for run_id, _ in inbox.notices] == ["run-1", "run-4"]
        finally:
            await sender.aclose()
            await listener.aclose()
