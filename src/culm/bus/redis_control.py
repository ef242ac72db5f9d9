"""Control notices over Redis: a cancel reaches the process that executes the run at once.

Each process that executes runs listens on one pub/sub channel of its own,
``{prefix}worker:{owner}`` (its owner id names it in the ``runs`` row). A cancel from any
process writes the DB flag first (the truth), then publishes ``{"v": 1, "type": "cancel",
"run_id", "reason"}`` there; Redis answers how many listeners got it, so the sender knows
whether the notice was delivered. Pub/sub keeps nothing: a notice sent while the owner's
listener is away (Redis down, reconnecting) is lost, and the owner's heartbeat, which reads the
flag, is the fallback. So nothing here retries: a failure is reported to the
:class:`~culm.bus.link.RedisLink`, which reconnects, and the listener subscribes again once Redis
answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

from culm.bus.base import CancelHandler
from culm.bus.link import REDIS_ERRORS, RedisLink
from culm.logs import get_logger

log = get_logger(__name__)

VERSION = 1
# How long the listener blocks on one read: it also paces the connection's health checks.
READ_TIMEOUT = 1.0
# How long a sender waits for Redis to take a notice: a hung Redis must not hang the cancel
# (its flag is stored; the owner's heartbeat sees it).
SEND_TIMEOUT = 1.0


def encode_cancel(run_id: str, reason: str) -> str:
    return json.dumps({"v": VERSION, "type": "cancel", "run_id": run_id, "reason": reason})


def decode_cancel(data: bytes | str) -> tuple[str, str] | None:
    """``(run_id, reason)`` of a cancel notice; None for anything else (a newer version's
    notices, garbage): a listener ignores what it does not know."""
    try:
        notice = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(notice, dict) or notice.get("type") != "cancel":
        return None
    run_id, reason = notice.get("run_id"), notice.get("reason")
    if not isinstance(run_id, str) or not isinstance(reason, str):
        return None
    return run_id, reason


class RedisControl:
    """The control half of the Redis bus: ``send_cancel`` and ``on_cancel``."""

    def __init__(self, link: RedisLink) -> None:
        self._link = link
        self._handlers: dict[str, CancelHandler] = {}  # channel -> handler
        self._listener: asyncio.Task[None] | None = None
        self._started = False
        # Set while the listener is subscribed to every channel of a handler (tests wait on it).
        self.listening = asyncio.Event()

    def channel(self, owner: str) -> str:
        return self._link.key("worker", owner)

    async def start(self) -> None:
        self._started = True
        self._restart()

    async def aclose(self) -> None:
        self._started = False
        await self._stop_listener()

    async def send_cancel(self, owner: str, run_id: str, reason: str) -> bool:
        if not self._link.up:
            return False  # down: the owner's heartbeat reads the flag
        try:
            async with asyncio.timeout(SEND_TIMEOUT):
                receivers = await self._link.client.publish(
                    self.channel(owner), encode_cancel(run_id, reason)
                )
        except REDIS_ERRORS as exc:
            self._link.failed(exc)
            return False
        return int(receivers) > 0

    def on_cancel(self, owner: str, handler: CancelHandler) -> None:
        self._handlers[self.channel(owner)] = handler
        if self._started:
            self._restart()  # subscribe to the new channel too

    def _restart(self) -> None:
        old = self._listener
        if old is not None:
            old.cancel()
        if self._handlers:
            self._listener = asyncio.get_running_loop().create_task(
                self._listen(old), name="culm-redis-control"
            )

    async def _stop_listener(self) -> None:
        task, self._listener = self._listener, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _listen(self, previous: asyncio.Task[None] | None) -> None:
        """Subscribe to every handler's channel and deliver notices, again after each outage."""
        if previous is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await previous  # one subscription at a time
        while True:
            await self._link.wait_up()
            try:
                await self._subscribed()
            except REDIS_ERRORS as exc:
                self._link.failed(exc)
            # The link pings until Redis answers; until then wait_up() waits. A failure the
            # link does not see (it is up: the ping worked, the subscription did not) must not
            # spin: pause a little.
            await asyncio.sleep(0.1)

    async def _subscribed(self) -> None:
        pubsub = self._link.client.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.subscribe(*self._handlers)
            self.listening.set()
            while True:
                message = await pubsub.get_message(timeout=READ_TIMEOUT)
                if message is not None:
                    self._deliver(message)
        finally:
            self.listening.clear()
            with contextlib.suppress(*REDIS_ERRORS):
                await pubsub.aclose()  # type: ignore[no-untyped-call]

    def _deliver(self, message: dict[str, Any]) -> None:
        if message.get("type") != "message":
            return
        channel = message.get("channel")
        if isinstance(channel, bytes):
            channel = channel.decode()
        handler = self._handlers.get(str(channel))
        notice = decode_cancel(message.get("data", b""))
        if handler is None or notice is None:
            return
        try:
            handler(*notice)
        except Exception:
            log.exception("a cancel handler failed", run_id=notice[0])
