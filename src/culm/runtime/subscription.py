"""A subscriber's bounded queue.

The runner pushes without ever waiting. A subscriber that falls more than ``maxsize`` events
behind is marked *lagged*: its queue is dropped and its reader resumes from the store at the last
event it consumed, so it is never silently skipped and never slows the run or anyone else.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Iterable

from culm.domain.events import RunEvent


class Lagged(Exception):
    """The subscriber fell behind its queue; resume from the store."""


class Closed(Exception):
    """The stream was closed (the engine is stopping)."""


class Subscription:
    __slots__ = ("_items", "_maxsize", "_ready", "_woken", "closed", "lagged")

    def __init__(self, maxsize: int, initial: Iterable[RunEvent] = ()) -> None:
        self._maxsize = maxsize
        self._items: deque[RunEvent] = deque(initial)
        self._ready = asyncio.Event()
        if self._items:
            self._ready.set()
        self.lagged = False
        self.closed = False
        self._woken = False

    def close(self) -> None:
        self.closed = True
        self._ready.set()

    def wake(self) -> None:
        """Make the reader's next :meth:`next_batch` return (empty if nothing is queued): what
        it follows changed (a runner arrived here, the bus changed state)."""
        self._woken = True
        self._ready.set()

    def push(self, event: RunEvent) -> None:
        if self.lagged:
            return
        if len(self._items) >= self._maxsize:
            self.lagged = True
            self._items.clear()
        else:
            self._items.append(event)
        self._ready.set()

    async def next_batch(self) -> list[RunEvent]:
        """Everything queued (at least one event, or none after :meth:`wake`); raises
        :class:`Lagged` after an overflow and :class:`Closed` once closed and drained."""
        while not self._items:
            if self._woken:
                self._woken = False
                return []
            if self.lagged:
                raise Lagged
            if self.closed:
                raise Closed
            self._ready.clear()
            await self._ready.wait()
        batch = list(self._items)
        self._items.clear()
        self._woken = False
        return batch
