"""Run events on Redis Streams: one publisher and one reader per process.

Keys (under the deployment's prefix): ``run:{run_id}`` holds a run's events with the entry id
``{seq}-0``, so a cursor maps exactly onto the stream and a re-published event is refused as a
duplicate; ``session:{session_id}`` holds the events of all a session's runs (ids by Redis).
Each entry has one field, ``e``: the event's JSON, as the store and the wire have it.

The publisher drains a bounded queue of stored batches in a background task, one pipelined round
trip per drain (``XADD … MAXLEN ~`` per event, ``EXPIRE`` per stream touched, so a stream goes
``ttl`` seconds after its run's last event). The reader is one task blocked in ``XREAD`` over
every followed stream, plus a wake-up stream of its own that :meth:`StreamReader.follow` writes to
so that the ``XREAD`` is reissued with the new stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, cast

from redis.exceptions import ResponseError

from culm.bus.link import BLOCK_SECONDS, READ_TIMEOUT, REDIS_ERRORS, RedisLink
from culm.domain.events import RunEvent, event_from_json, event_to_json
from culm.logs import get_logger

log = get_logger(__name__)

FIELD = b"e"
BLOCK_MS = int(BLOCK_SECONDS * 1000)  # XREAD BLOCK: a cap; a change of the followed set wakes it
READ_COUNT = 1000  # entries per stream per XREAD
# Redis's answer to an XADD id at or below the stream's last one (a batch published again).
DUPLICATE_ID = "equal or smaller than the target stream top item"
READ_RETRY = 1.0  # seconds the reader pauses after an unexpected error (no busy loop)
CLOSE_WAIT = 1.0  # seconds the publisher's close waits for its queue to go out


def run_key(link: RedisLink, run_id: str) -> str:
    return link.key("run", run_id)


def session_key(link: RedisLink, session_id: str) -> str:
    return link.key("session", session_id)


class StreamPublisher:
    """Stored batches → Redis, in order, never blocking the caller."""

    def __init__(self, link: RedisLink, *, maxlen: int, ttl: int, queue_size: int) -> None:
        self._link = link
        self._maxlen = maxlen
        self._ttl = ttl
        self._queue: deque[Sequence[RunEvent]] = deque()
        self._queue_size = queue_size
        self._ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self.published = 0  # events XADDed
        self.dropped = 0  # events not published (queue full, Redis down) or writes refused
        self._drop_logged = False

    @property
    def queued(self) -> int:
        """Event batches waiting to be published."""
        return len(self._queue)

    def start(self) -> None:
        self._task = asyncio.create_task(self._drain(), name="bus-publisher")

    async def aclose(self) -> None:
        """Send what is queued first (a run's last events, its terminal among them, are often
        queued just before a shutdown), for at most :data:`CLOSE_WAIT` seconds: followers of a
        dead Redis read the store anyway."""
        if self._task is not None:
            self._closing = True
            self._ready.set()
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(self._task, CLOSE_WAIT)  # cancels it when late
            self._task = None

    def put(self, events: Sequence[RunEvent]) -> None:
        if not self._link.up:
            self._drop(len(events), "redis is unreachable")
            return
        if len(self._queue) >= self._queue_size:
            self._drop(len(events), "the publish queue is full")
            return
        self._queue.append(events)
        self._ready.set()

    def _drop(self, count: int, why: str) -> None:
        self.dropped += count
        if not self._drop_logged:
            # Once per process: subscribers read what the bus lost from the store.
            self._drop_logged = True
            log.warning("run events not published to redis (read from the store)", why=why)

    async def _drain(self) -> None:
        while True:
            await self._ready.wait()
            self._ready.clear()
            while self._queue:
                batches = list(self._queue)
                self._queue.clear()
                try:
                    await self._send(batches)
                except REDIS_ERRORS as exc:
                    self._drop(sum(len(batch) for batch in batches), "redis is unreachable")
                    self._link.failed(exc)
                except Exception:
                    # A bug must not end the task while the bus still says "ok": log, count
                    # the batch as dropped (it is stored), and go on with the next one.
                    log.exception("publishing run events to redis failed")
                    self._drop(sum(len(batch) for batch in batches), "publishing failed")
            if self._closing:
                return

    async def _send(self, batches: list[Sequence[RunEvent]]) -> None:
        pipe = self._link.client.pipeline(transaction=False)
        touched: set[str] = set()
        count = 0
        for batch in batches:
            for event in batch:
                data: dict[Any, Any] = {FIELD: event_to_json(event)}
                key = run_key(self._link, event.run_id)
                pipe.xadd(key, data, id=f"{event.seq}-0", maxlen=self._maxlen, approximate=True)
                session = session_key(self._link, event.session_id)
                pipe.xadd(session, data, maxlen=self._maxlen, approximate=True)
                touched.update((key, session))
                count += 1
        for key in touched:
            pipe.expire(key, self._ttl)
        async with asyncio.timeout(READ_TIMEOUT):  # a dead connection must not hang the queue
            results = await pipe.execute(raise_on_error=False)
        refused: list[ResponseError] = []
        for result in results:
            if isinstance(result, ResponseError):
                if DUPLICATE_ID in str(result):
                    continue  # an id at or below the stream's last: published before (a retry)
                refused.append(result)  # OOM, WRONGTYPE…: the entry is not there
            elif isinstance(result, BaseException):
                raise result
        self.published += count
        if refused:
            # Followers must read the store for it: the link's ping-and-back tells them to.
            self._drop(len(refused), "redis refused the write")
            self._link.failed(refused[0])


class StreamReader:
    """One ``XREAD BLOCK`` loop over the followed streams; hands what it reads to ``deliver``."""

    def __init__(
        self,
        link: RedisLink,
        deliver: Callable[[list[RunEvent]], None],
        catch_up: Callable[[], None],
    ) -> None:
        self._link = link
        self._deliver = deliver
        self._catch_up = catch_up  # followers read the store for what the bus missed
        self._wake_key = link.key("reader", uuid.uuid4().hex)
        self._followers: dict[str, int] = {}
        self._positions: dict[str, str] = {}
        # Followed keys whose end could not be read (Redis failed): the loop places them once
        # Redis answers. Never "0-0": the next XREAD would hand out the whole retained stream
        # (a session's earlier runs) as live events.
        self._unplaced: set[str] = set()
        self._wake_position = "0-0"  # see _read_on
        self._placing: dict[str, asyncio.Event] = {}
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self.received = 0

    def start(self) -> None:
        self._task = asyncio.create_task(self._read(), name="bus-reader")

    async def aclose(self) -> None:
        self._closing = True
        with contextlib.suppress(*REDIS_ERRORS):
            await self._wake()  # out of its XREAD at once
        if self._task is not None:
            # redis-py may turn a cancel inside a blocked read into a connection error: the loop
            # then ends at the flag (within one BLOCK at worst).
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(self._task, BLOCK_MS / 1000 + 1)
            self._task = None
        with contextlib.suppress(*REDIS_ERRORS):
            await self._link.client.delete(self._wake_key)

    @property
    def followed(self) -> int:
        return len(self._followers)

    async def add(self, key: str) -> None:
        """Follow ``key`` from its current end (refcounted): everything XADDed from the return
        on is delivered (while Redis is up)."""
        count = self._followers.get(key, 0)
        self._followers[key] = count + 1
        if count:
            pending = self._placing.get(key)
            if pending is not None:
                await pending.wait()  # the first follower is still reading the position
            if key in self._positions or key in self._unplaced or key not in self._followers:
                return
            # The first follower was cancelled before it placed the key: place it here.
        placed = self._placing[key] = asyncio.Event()
        try:
            await self._place(key)
        finally:
            placed.set()
            if self._placing.get(key) is placed:
                del self._placing[key]

    async def _place(self, key: str) -> None:
        try:
            position = await self._end(key)
        except REDIS_ERRORS as exc:
            if key in self._followers:
                self._unplaced.add(key)  # placed by the loop once Redis answers
            self._link.failed(exc)
            return
        if key not in self._followers:
            return  # left meanwhile
        self._positions.setdefault(key, position)
        try:
            await self._wake()  # after the position is set: its next XREAD includes the key
        except REDIS_ERRORS as exc:
            self._link.failed(exc)

    async def _end(self, key: str) -> str:
        """The id of ``key``'s last entry ("0-0" for a stream not there yet: all of it is new)."""
        last = cast("list[Any]", await self._link.client.xrevrange(key, count=1))
        return _text(last[0][0]) if last else "0-0"

    async def _place_late(self) -> bool:
        """Place the keys whose placement failed; then their followers read the store for what
        was published before (``catch_up``). False when Redis failed again."""
        for key in list(self._unplaced):
            try:
                position = await self._end(key)
            except REDIS_ERRORS as exc:
                self._link.failed(exc)
                return False
            if key in self._unplaced:  # still followed
                self._unplaced.discard(key)
                self._positions.setdefault(key, position)
        self._catch_up()
        return True

    async def _wake(self) -> None:
        await self._link.client.xadd(self._wake_key, {b"w": b"1"}, maxlen=1)

    def remove(self, key: str) -> None:
        count = self._followers.get(key, 0) - 1
        if count > 0:
            self._followers[key] = count
            return
        self._followers.pop(key, None)
        self._positions.pop(key, None)
        self._unplaced.discard(key)

    async def _read(self) -> None:
        while not self._closing:
            try:
                await self._read_on()
            except Exception:
                # A bug must not end the task while the bus still says "ok": log it, and let
                # the followers read the store for what this round may have lost.
                log.exception("reading run events from redis failed")
                self._catch_up()
                await asyncio.sleep(READ_RETRY)

    async def _read_on(self) -> None:
        # The wake-up key is this process's own, empty at first: from "0-0" every entry wakes
        # the reader, even one written before its first XREAD reached Redis ("$" would miss it).
        while not self._closing:
            await self._link.wait_up()
            if self._unplaced and not await self._place_late():
                continue
            streams: dict[Any, Any] = {self._wake_key: self._wake_position, **self._positions}
            try:
                response = cast(
                    "list[Any] | None",
                    await self._link.client.xread(streams, count=READ_COUNT, block=BLOCK_MS),
                )
            except REDIS_ERRORS as exc:
                self._link.failed(exc)
                continue
            for raw_key, entries in response or ():
                key = _text(raw_key)
                if key == self._wake_key:
                    self._wake_position = _text(entries[-1][0])
                    continue
                if key not in self._positions:
                    continue  # unfollowed while we read
                self._positions[key] = _text(entries[-1][0])
                self._hand_over(entries)

    def _hand_over(self, entries: list[Any]) -> None:
        events: list[RunEvent] = []
        for _id, fields in entries:
            try:
                events.append(event_from_json(fields[FIELD]))
            except Exception:
                log.exception("an unreadable run event on the bus (skipped: it is stored)")
        if events:
            self.received += len(events)
            self._deliver(events)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
