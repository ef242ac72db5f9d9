"""The Redis bus: stored events go out on Redis Streams, and the streams this process follows
come back into its fan-out (see :mod:`culm.bus.redis_streams`); cancel notices go to the owning
process's pub/sub channel (see :mod:`culm.bus.redis_control`).

It owns no fan-out, ring or cache of its own: received events go to the sink (the runner
registry), as a local runner's events do. When Redis is unreachable the bus is ``degraded``:
nothing is published, nothing received, and followers read the store until it is ``ok`` again.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence

from culm.bus.base import BusState, BusStats, CancelHandler, EventBus, Topic
from culm.bus.link import RedisLink
from culm.bus.redis_control import RedisControl
from culm.bus.redis_streams import StreamPublisher, StreamReader, run_key, session_key
from culm.domain.events import RunEvent


class RedisBus(EventBus):
    def __init__(
        self, link: RedisLink, *, maxlen: int = 10_000, ttl: int = 3600, queue_size: int = 10_000
    ) -> None:
        super().__init__()
        self.link = link
        self.publisher = StreamPublisher(link, maxlen=maxlen, ttl=ttl, queue_size=queue_size)
        self.reader = StreamReader(link, self._received, self._state_changed)
        self.control = RedisControl(link)
        link.on_change(lambda _up: self._state_changed())

    async def start(self) -> None:
        await self.link.start()
        self.publisher.start()
        self.reader.start()
        await self.control.start()

    async def aclose(self) -> None:
        await self.control.aclose()
        await self.reader.aclose()
        await self.publisher.aclose()
        await self.link.aclose()

    @property
    def state(self) -> BusState:
        return self.link.state

    def stats(self) -> BusStats:
        return BusStats(
            state=self.state,
            reconnects=self.link.reconnects,
            published=self.publisher.published,
            dropped=self.publisher.dropped,
            received=self.reader.received,
            followed=self.reader.followed,
            publish_queue=self.publisher.queued,
        )

    @property
    def crosses_processes(self) -> bool:
        return True

    def publish(self, events: Sequence[RunEvent]) -> None:
        self._seen(events)
        self.publisher.put(events)

    def _received(self, events: list[RunEvent]) -> None:
        self._seen(events)
        self._sink(events)

    @contextlib.asynccontextmanager
    async def follow(self, topic: Topic) -> AsyncIterator[None]:
        key = self._key(topic)
        try:
            await self.reader.add(key)  # counted at once: a cancel here still removes it
            yield
        finally:
            self.reader.remove(key)

    def _key(self, topic: Topic) -> str:
        if topic.kind == "run":
            return run_key(self.link, topic.id)
        return session_key(self.link, topic.id)

    # Control: pub/sub, one channel per owner (see :mod:`culm.bus.redis_control`).

    async def send_cancel(self, owner: str, run_id: str, reason: str) -> bool:
        return await self.control.send_cancel(owner, run_id, reason)

    def on_cancel(self, owner: str, handler: CancelHandler) -> None:
        self.control.on_cancel(owner, handler)
