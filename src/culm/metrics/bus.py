"""The metrics bus: a bounded queue between whatever emits metrics events and the worker.

It queues each event as its :data:`~culm.metrics.batch.Change` (plain values, nearly free for
the garbage collector), not as the event object. :meth:`MetricsBus.emit` never blocks and
never raises: when the queue is full the event is dropped and counted. Drops come in episodes: the first drop opens one, and it closes when the
worker has caught up (the queue is empty again); :meth:`MetricsBus.end_drop_episode` then hands
out the episode's count once, for a single ``metrics_dropped`` record.

Call it from the event loop's thread (the run observer and the proxy both run there).
"""

from __future__ import annotations

import asyncio
from collections import deque

from culm.metrics.batch import Change, change
from culm.metrics.events import MetricsEvent

QUEUE_FULL = "queue_full"


class MetricsBus:
    def __init__(self, capacity: int, *, batch_size: int) -> None:
        self.capacity = capacity
        self._batch_size = batch_size
        self._queue: deque[Change] = deque()
        self._has_items = asyncio.Event()
        self._full_batch = asyncio.Event()
        self.accepted = 0
        self.dropped = 0
        self._episode = 0

    def __len__(self) -> int:
        return len(self._queue)

    def emit(self, event: MetricsEvent) -> bool:
        """Queue ``event``; False (and counted) when the queue is full."""
        if len(self._queue) >= self.capacity:
            self.dropped += 1
            self._episode += 1
            return False
        self._queue.append(change(event))
        self.accepted += 1
        if len(self._queue) == 1:
            self._has_items.set()
        if len(self._queue) >= self._batch_size:
            self._full_batch.set()
        return True

    def take(self, limit: int) -> list[Change]:
        """Up to ``limit`` events, oldest first."""
        count = min(limit, len(self._queue))
        batch = [self._queue.popleft() for _ in range(count)]
        if not self._queue:
            self._has_items.clear()
        if len(self._queue) < self._batch_size:
            self._full_batch.clear()
        return batch

    def end_drop_episode(self) -> int:
        """The count of the drop episode that just ended (the queue is empty again), or 0 while
        none has ended. Each episode's count is handed out once."""
        if self._queue or not self._episode:
            return 0
        count, self._episode = self._episode, 0
        return count

    def drain_drops(self) -> int:
        """The count of the open episode, ending it whatever the queue holds (on shutdown)."""
        count, self._episode = self._episode, 0
        return count

    async def wait_for_items(self) -> None:
        await self._has_items.wait()

    async def wait_for_batch(self, timeout: float) -> None:
        """Return when a full batch is queued, or after ``timeout`` seconds."""
        if self._full_batch.is_set() or timeout <= 0:
            return
        try:
            async with asyncio.timeout(timeout):
                await self._full_batch.wait()
        except TimeoutError:
            pass

    def wake(self) -> None:
        """Wake a waiting worker (to flush now, or to stop)."""
        self._has_items.set()
        self._full_batch.set()
