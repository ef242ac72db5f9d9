"""The slow look at the store behind the bus: one per followed run in the process, shared.

A run followed through the bus (it runs in another process) gets its events from Redis. The bus
may stay silent though while the store moves on: a terminal status written by a sweeper, events
the publisher dropped with nothing after them to show the hole. So someone must look at the store
now and then, and that someone is one task per run, not every subscriber: with a thousand idle
subscribers of one run, PostgreSQL sees one ``get_run`` per interval, not a thousand. Only the
followers the bus left silent for an interval while the store is ahead of them (or the run is
over) are woken, and each then reads what it misses, as after a hole.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

from culm.bus.base import EventBus
from culm.errors import StorageUnavailableError
from culm.logs import get_logger
from culm.runtime.subscription import Subscription
from culm.storage.base import Store

log = get_logger(__name__)


@dataclass(slots=True, eq=False)
class Follower:
    """One follower as the check sees it: what it was given, and how to wake it."""

    subscription: Subscription
    cursor: int = 0
    checked: int = -1  # its cursor at the previous check


class _RunCheck:
    def __init__(self) -> None:
        self.followers: set[Follower] = set()
        self.task: asyncio.Task[None] | None = None


class SafetyChecks:
    """Per followed run, a store read every ``interval`` seconds while the bus is ``ok`` (every
    ``poll`` seconds while it is degraded), waking the followers the store is ahead of."""

    def __init__(
        self,
        store: Store,
        bus: EventBus,
        reads: asyncio.Semaphore,
        *,
        interval: float,
        poll: float,
    ) -> None:
        self._store = store
        self._bus = bus
        self._reads = reads
        self.interval = interval
        self._poll = poll
        self._checks: dict[str, _RunCheck] = {}
        self.count = 0  # store reads made (tests compare it with the store's calls)

    @contextlib.contextmanager
    def follow(self, run_id: str, follower: Follower) -> Iterator[None]:
        """Check ``run_id`` for ``follower`` while inside; the follower keeps its ``cursor``
        (and ``subscription``, if it replaces it) up to date."""
        check = self._checks.get(run_id)
        if check is None:
            check = self._checks[run_id] = _RunCheck()
            check.task = asyncio.create_task(self._loop(run_id, check), name="bus-safety-check")
        check.followers.add(follower)
        try:
            yield
        finally:
            check.followers.discard(follower)
            if not check.followers:
                if self._checks.get(run_id) is check:
                    del self._checks[run_id]
                if check.task is not None:
                    check.task.cancel()

    async def _loop(self, run_id: str, check: _RunCheck) -> None:
        while True:
            await self._pause()
            try:
                async with self._reads:
                    run = await self._store.get_run(run_id)
            except StorageUnavailableError:
                continue  # the followers wait with us: the run goes on elsewhere
            except Exception:
                log.exception("the safety check of a followed run failed", run_id=run_id)
                continue
            self.count += 1
            for follower in check.followers:
                # Only a follower the bus left silent for a whole interval: while events come,
                # the store is always a little ahead of the bus, and waking them all then
                # would cost a read per follower per interval, the very thing avoided here.
                silent, follower.checked = follower.cursor == follower.checked, follower.cursor
                if silent and (
                    run is None or run.status.is_terminal or run.last_seq > follower.cursor
                ):
                    # Past what the bus brought it: this follower reads the store for the rest.
                    follower.subscription.wake()

    async def _pause(self) -> None:
        """One interval, cut short when the bus changes state (degraded: poll faster)."""
        changed = self._bus.watch_state()
        wait = self.interval if self._bus.state == "ok" else self._poll
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait):
                await changed.wait()
