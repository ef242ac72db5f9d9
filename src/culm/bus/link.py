"""The one Redis connection of a process, and whether Redis answers.

Every Redis user (the event bus, the control channel) shares one ``redis.asyncio.Redis`` client
(a connection pool). When a command fails, its caller reports it with :meth:`RedisLink.failed`:
the link turns ``degraded``, logs once for the whole outage, and pings Redis with a growing
delay (0.1 s doubling up to 5 s) until it answers, then logs once that it is back. Callers do
not retry by themselves: they fall back to the store and wait for :meth:`wait_up`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Literal

import redis.asyncio as redis
from redis.exceptions import RedisError

from culm.logs import get_logger

log = get_logger(__name__)

BACKOFF_FIRST = 0.1
BACKOFF_MAX = 5.0
# A command waits at most this long for a socket (a dead host must not hang a publisher).
SOCKET_TIMEOUT = 5.0
# The longest a command blocks in Redis on purpose (the stream reader's ``XREAD BLOCK``).
BLOCK_SECONDS = 2.0
# A reply later than this means the connection is dead: without a read timeout, a connection
# whose packets vanish (a black-holed host, no RST) hangs XREAD and the publisher forever while
# the link still says "ok".
READ_TIMEOUT = BLOCK_SECONDS + SOCKET_TIMEOUT

# Errors that mean "Redis is not reachable" (anything else is a bug to log).
REDIS_ERRORS: tuple[type[BaseException], ...] = (RedisError, OSError, TimeoutError)


class RedisLink:
    def __init__(self, url: str, *, prefix: str = "culm:") -> None:
        self.url = url
        self.prefix = prefix
        self.client: redis.Redis = redis.Redis.from_url(
            url,
            socket_connect_timeout=SOCKET_TIMEOUT,
            socket_timeout=READ_TIMEOUT,
            socket_keepalive=True,
            health_check_interval=30,
        )
        self.up = False
        self.reconnects = 0  # outages recovered from (culm_redis_reconnects_total)
        self._started = False
        self._up_event = asyncio.Event()
        self._reconnecting: asyncio.Task[None] | None = None
        self._listeners: list[Callable[[bool], None]] = []

    @property
    def state(self) -> Literal["ok", "degraded"]:
        return "ok" if self.up else "degraded"

    def key(self, *parts: str) -> str:
        """A key under this deployment's prefix (tests give each test a prefix of its own)."""
        return self.prefix + ":".join(parts)

    def on_change(self, listener: Callable[[bool], None]) -> None:
        """Call ``listener(up)`` at each change of :attr:`up`."""
        self._listeners.append(listener)

    async def start(self) -> None:
        """Ping once; if Redis does not answer the process starts anyway, degraded (Redis is
        not the truth), and keeps trying in the background."""
        self._started = True
        try:
            await self.client.ping()
        except REDIS_ERRORS as exc:
            self.failed(exc)
            return
        self._set_up(True)

    async def aclose(self) -> None:
        self._started = False
        if self._reconnecting is not None:
            self._reconnecting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reconnecting
            self._reconnecting = None
        with contextlib.suppress(*REDIS_ERRORS):
            await self.client.aclose()

    async def wait_up(self) -> None:
        """Return once Redis answers (at once if it does)."""
        while not self.up:
            await self._up_event.wait()

    def failed(self, exc: BaseException) -> None:
        """A command failed for want of Redis: go degraded (logged once per outage) and start
        pinging until it answers. Reports during an outage change nothing."""
        if not self._started or (self._reconnecting is not None and not self._reconnecting.done()):
            return
        log.warning(
            "redis unreachable: streams and cancels fall back to the store", error=repr(exc)
        )
        self._set_up(False)
        self._reconnecting = asyncio.create_task(self._reconnect(), name="redis-reconnect")

    def _set_up(self, up: bool) -> None:
        changed = up != self.up
        self.up = up
        if up:
            self._up_event.set()
        else:
            self._up_event.clear()
        if changed:
            for listener in self._listeners:
                listener(up)

    async def _reconnect(self) -> None:
        # Every pooled connection went with the server: drop them all now, or each would fail
        # once after Redis returns and start a new "outage".
        with contextlib.suppress(*REDIS_ERRORS):
            await self.client.connection_pool.disconnect()
        delay = BACKOFF_FIRST
        while self._started:
            await asyncio.sleep(delay)
            try:
                await self.client.ping()
            except REDIS_ERRORS:
                delay = min(delay * 2, BACKOFF_MAX)
                continue
            self.reconnects += 1
            self._reconnecting = None
            log.warning("redis reachable again", reconnects=self.reconnects)
            self._set_up(True)
            return
