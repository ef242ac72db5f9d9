"""The in-process bus: no other process to reach.

Stored events already reach this process's subscribers through the runner registry, so
``publish`` only wakes terminal waiters, and following a topic needs nothing. A cancel notice
reaches a handler registered by this process (the embedded server's own runs); for any other
owner it is not delivered, and the DB flag with the owner's heartbeat does the work.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence

from culm.bus.base import BusState, CancelHandler, EventBus, Topic
from culm.domain.events import RunEvent
from culm.logs import get_logger

log = get_logger(__name__)


class LocalBus(EventBus):
    def __init__(self) -> None:
        super().__init__()
        self._cancel_handlers: dict[str, CancelHandler] = {}

    @property
    def state(self) -> BusState:
        return "disabled"

    def publish(self, events: Sequence[RunEvent]) -> None:
        self._seen(events)

    @contextlib.asynccontextmanager
    async def follow(self, topic: Topic) -> AsyncIterator[None]:
        yield

    async def send_cancel(self, owner: str, run_id: str, reason: str) -> bool:
        handler = self._cancel_handlers.get(owner)
        if handler is None:
            return False
        try:
            handler(run_id, reason)
        except Exception:
            log.exception("a cancel handler failed", run_id=run_id)
            return False
        return True

    def on_cancel(self, owner: str, handler: CancelHandler) -> None:
        self._cancel_handlers[owner] = handler
