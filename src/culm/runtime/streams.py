"""Subscribing to runs and sessions: exact replay from the store, then live from the runner.

A run stream yields every event with ``seq > after`` once, in order, and ends after the terminal
event. It reads the store until the runner's in-memory ring covers the cursor, then attaches to
the runner; if it lags behind its queue it goes back to the store. A run not active in this
process (finished, queued, or run by another process on the same database) is followed through
the event bus when it crosses processes (Redis): the store first, for everything up to now,
then the events the bus brings, back to the store whenever the bus skipped one (a hole in
``seq``), changed state, or the run's safety check (one per run, :mod:`culm.runtime.safety`)
found the store ahead. Without such a bus the store is polled.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator

from culm.bus.base import EventBus, Topic
from culm.bus.local import LocalBus
from culm.domain.events import CRITICAL_EVENT_TYPES, Gap, RunEvent, is_terminal
from culm.domain.models import Run
from culm.errors import NotFoundError, StorageUnavailableError
from culm.runtime.batcher import EventBatcher
from culm.runtime.reads import SharedReads
from culm.runtime.registry import RunnerRegistry
from culm.runtime.runner import Runner
from culm.runtime.safety import Follower, SafetyChecks
from culm.runtime.subscription import Closed, Lagged, Subscription
from culm.storage.base import Store

STORE_PAGE = 1000


def _until_terminal(batch: list[RunEvent]) -> list[RunEvent]:
    """The batch up to and including its terminal event, if it has one."""
    for index, event in enumerate(batch):
        if is_terminal(event):
            return batch[: index + 1]
    return batch


def _consecutive(events: list[RunEvent], cursor: int) -> list[RunEvent]:
    """The events that follow ``cursor`` without a hole (``events`` are in order)."""
    for index, event in enumerate(events):
        if event.seq != cursor + index + 1:
            return events[:index]
    return events


def with_gaps(events: list[RunEvent], cursor: int) -> list[RunEvent]:
    """Stored ``events`` (after ``cursor``, in seq order) with a ``gap`` before each break in
    their seqs: events dropped by retention, or shown before a crash lost them (their seqs
    are reserved, never used again). The gap carries the seq just before the next event, so
    a client resuming from it gets that event next."""
    if not events or events[-1].seq - cursor == len(events):
        return events  # the common case: no break
    out: list[RunEvent] = []
    expected = cursor + 1
    for event in events:
        if event.seq > expected:
            gap = Gap(from_seq=expected, to_seq=event.seq - 1).stamped(
                seq=event.seq - 1, run_id=event.run_id, session_id=event.session_id, ts=event.ts
            )
            out.append(gap)
        out.append(event)
        expected = event.seq + 1
    return out


POLL_INTERVAL = 0.25
# How often a run followed on the bus is looked up in the store (a lost terminal event, a run
# ended by a sweeper): one query per run in the process, whatever its number of followers.
SAFETY_INTERVAL = 5.0
# Followers of a run without a runner here reading the store at once (a thousand subscribers
# may join one run together, or poll a queued one): the others wait here, in memory, not for
# the pool's connections, which the event writer needs too (and whose wait times out).
FOLLOWER_READS = 8
# How many of a session's latest runs a lagging session subscriber catches up on.
CATCH_UP_RUNS = 10


class Streams:
    def __init__(
        self,
        store: Store,
        registry: RunnerRegistry,
        batcher: EventBatcher,
        queue_size: int,
        bus: EventBus | None = None,
        *,
        safety_interval: float = SAFETY_INTERVAL,
    ) -> None:
        self._store = store
        self._bus = bus or LocalBus()
        self._follower_reads = asyncio.Semaphore(FOLLOWER_READS)
        self.reads = SharedReads(store, self._follower_reads, page=STORE_PAGE)
        self.safety = SafetyChecks(
            store,
            self._bus,
            self._follower_reads,
            interval=safety_interval,
            poll=POLL_INTERVAL,
        )
        self._registry = registry
        self._batcher = batcher
        self._queue_size = queue_size
        self.closed = False

    def close(self) -> None:
        """End every stream (at the next event boundary) and refuse new ones: the server is
        stopping. Runs go on; only the streams end."""
        self.closed = True
        self._registry.close_streams()

    async def check_run(self, run_id: str) -> None:
        """Raise :class:`NotFoundError` unless the run exists (before a stream begins; one read
        for all who ask together)."""
        if await self.reads.run(run_id) is None:
            raise NotFoundError("run", run_id)

    async def run_events(self, run_id: str, *, after: int = 0) -> AsyncGenerator[RunEvent]:
        async with contextlib.aclosing(self.run_event_batches(run_id, after=after)) as batches:
            async for batch in batches:
                for event in batch:
                    yield event

    async def run_event_batches(
        self, run_id: str, *, after: int = 0
    ) -> AsyncGenerator[list[RunEvent]]:
        """The same events as :meth:`run_events`, in the batches they become available in (a
        server writes each batch to a client at once)."""
        cursor = max(after, 0)
        while not self.closed:
            runner = self._registry.get(run_id)
            source: AsyncGenerator[list[RunEvent]]
            if runner is None and self._bus.crosses_processes:
                source = self._follow_remote(run_id, cursor)
            elif runner is None:
                source = self._follow_in_store(run_id, cursor)
            else:
                source = self._from_runner(runner, cursor)
            async with contextlib.aclosing(source) as batches:
                async for batch in batches:
                    ended = _until_terminal(batch)
                    if ended:
                        yield ended
                        cursor = ended[-1].seq
                        if is_terminal(ended[-1]):
                            return
            if runner is None and self._registry.get(run_id) is None:
                return  # the store says the run is over

    async def _from_runner(self, runner: Runner, cursor: int) -> AsyncGenerator[list[RunEvent]]:
        """Live events after ``cursor``; returns early when the caller must go to the store."""
        subscription = runner.attach(cursor)
        if self.closed and subscription is not None:
            subscription.close()
        if subscription is None:
            # The ring no longer holds cursor + 1: those events are (or will be) stored.
            await self._batcher.flush()
            yield await self._page(runner.run_id, cursor)
            return
        try:
            while True:
                batch = [e for e in await subscription.next_batch() if e.seq > cursor]
                if not batch:
                    continue
                if any(is_terminal(event) for event in batch):
                    # Hand out the end only once the terminal status is stored, so a client
                    # that reads the run next sees it finished. If the store refused it (the
                    # run was taken over), the store tells what happened next.
                    await runner.done.wait()
                    if not runner.end_stored:
                        return
                yield batch
                cursor = batch[-1].seq
        except (Lagged, Closed):
            return
        finally:
            runner.detach(subscription)

    def _closed_meanwhile(self) -> bool:
        # A method, not the attribute: another task may have closed us during an await.
        return self.closed

    async def _follow_in_store(self, run_id: str, cursor: int) -> AsyncGenerator[list[RunEvent]]:
        """Events from the store until the run ends or gets a runner in this process."""
        while self._registry.get(run_id) is None and not self.closed:
            with self._registry.watch(run_id) as changed:
                try:
                    run, events = await self._read_stored(run_id, cursor)
                except StorageUnavailableError:
                    # The run goes on in another process: wait for the store to come back (the
                    # client's stream stays open, with its pings) rather than cut the stream.
                    await asyncio.sleep(POLL_INTERVAL)
                    continue
                if run is None:
                    raise NotFoundError("run", run_id)
                if not events and not run.status.is_terminal:
                    if self._closed_meanwhile():
                        return
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(POLL_INTERVAL):
                            await changed.wait()
                    continue
            if events:
                yield events
                cursor = events[-1].seq
                continue
            # Terminal, and the terminal status is written after the events: read once more.
            _, last = await self._read_stored(run_id, cursor)
            if last:
                yield last
            return

    async def _follow_remote(self, run_id: str, cursor: int) -> AsyncGenerator[list[RunEvent]]:
        """Events from the store up to now, then from the bus, until the run ends or gets a
        runner in this process. The subscription is registered before the store is read, so
        nothing published in between is missed; what arrives twice is dropped by ``seq``."""
        follower = Follower(Subscription(self._queue_size), cursor)
        self._registry.add_remote_subscriber(run_id, follower.subscription)
        try:
            async with self._bus.follow(Topic.run(run_id)):
                with self.safety.follow(run_id, follower):
                    async for batch in self._remote_batches(run_id, follower):
                        # Given before it is taken: the check must not wake us for it.
                        follower.cursor = batch[-1].seq
                        yield batch
        finally:
            self._registry.remove_remote_subscriber(run_id, follower.subscription)

    async def _remote_batches(
        self, run_id: str, follower: Follower
    ) -> AsyncGenerator[list[RunEvent]]:
        cursor = follower.cursor
        while self._registry.get(run_id) is None and not self._closed_meanwhile():
            stored = await self._stored_since(run_id, cursor)
            if stored is None:
                continue  # the store did not answer: try again
            events, ended, cut = stored
            if events:
                yield events
                cursor = events[-1].seq
            if ended:
                return
            if cut:
                continue  # the next page first: the bus brings only what is new
            async for batch in self._live(follower.subscription, cursor):
                yield batch
                cursor = batch[-1].seq
            if follower.subscription.lagged:
                self._registry.remove_remote_subscriber(run_id, follower.subscription)
                follower.subscription = Subscription(self._queue_size)
                self._registry.add_remote_subscriber(run_id, follower.subscription)

    async def _stored_since(
        self, run_id: str, cursor: int
    ) -> tuple[list[RunEvent], bool, bool] | None:
        """What the store holds after ``cursor``, whether the run is over (then all of it), and
        whether a page limit cut it (more is stored); None while the store is unavailable
        (after a pause)."""
        try:
            stored = await self.reads.read(run_id, cursor)
            if stored.run is None:
                raise NotFoundError("run", run_id)
            events = with_gaps(stored.events, cursor)
            over = stored.run.status.is_terminal
            return events, over and stored.complete, not stored.complete
        except StorageUnavailableError:
            await asyncio.sleep(POLL_INTERVAL)
            return None

    async def _live(
        self, subscription: Subscription, cursor: int
    ) -> AsyncGenerator[list[RunEvent]]:
        """What the bus brings right after ``cursor``; returns when the store must be read: a
        hole, a wake-up (a runner here, the bus changed state, the safety check found the store
        ahead), or a lag. No timer of its own: the run's safety check is shared."""
        while True:
            try:
                received = await subscription.next_batch()
            except (Lagged, Closed):
                return
            if not received:
                return
            batch = _consecutive([event for event in received if event.seq > cursor], cursor)
            if batch:
                yield batch
                cursor = batch[-1].seq
            if len(batch) < len(received) and received[-1].seq > cursor:
                return  # the bus lost some (Redis was down, or the publisher dropped them)

    async def _read_stored(self, run_id: str, cursor: int) -> tuple[Run | None, list[RunEvent]]:
        """The run and a page of its stored events after ``cursor`` (none for a run not found,
        or not started yet: a worker may claim it in a moment), from a read shared with every
        follower of the run here that asks meanwhile (:mod:`culm.runtime.reads`): a thousand
        subscribers joining or polling one run cost a read or two, not a thousand (which
        would also take every connection of the pool, that the event writer needs too)."""
        stored = await self.reads.read(run_id, cursor)
        return stored.run, with_gaps(stored.events, cursor)

    async def _page(self, run_id: str, cursor: int) -> list[RunEvent]:
        events = await self._store.read_events(run_id, after=cursor, limit=STORE_PAGE)
        return with_gaps(events, cursor)

    async def session_events(self, session_id: str) -> AsyncGenerator[RunEvent]:
        """The replay cache of the session's active (or last) run, then every live event of
        the session's runs, including runs started later. Never ends by itself.

        With a bus across processes the session is followed there too (runs executed
        elsewhere); a live event past a hole in its run's ``seq`` brings the missing ones from
        the store first, and a change of the bus's state (or, while it is degraded, every
        second) a catch-up from the store, as after a lag."""
        if await self._store.get_session(session_id) is None:
            raise NotFoundError("session", session_id)
        async with (
            self._bus.follow(Topic.session(session_id)),
            contextlib.aclosing(self._session_events(session_id)) as events,
        ):
            async for event in events:
                yield event

    async def _session_events(self, session_id: str) -> AsyncGenerator[RunEvent]:
        seen: dict[str, int] = {}
        live: set[str] = set()  # runs whose events arrived live here: a hole is a loss
        # Runs already over before we subscribed are history: a catch-up after a lag skips
        # them (unless the cache showed them), and replays every other run, from its start.
        history = await self._finished_runs(session_id)
        subscription = Subscription(self._queue_size)
        self._registry.add_session_subscriber(session_id, subscription)
        try:
            runner = self._registry.for_session(session_id)
            cache = runner.replay_cache() if runner else await self._stored_cache(session_id)
            for event in cache:
                seen[event.run_id] = max(seen.get(event.run_id, 0), event.seq)
                yield event
            while not self.closed:
                wait = None if self._bus.state != "degraded" else 1.0
                try:
                    async with asyncio.timeout(wait):
                        batch = await subscription.next_batch()
                except Closed:
                    return
                except (Lagged, TimeoutError):
                    self._registry.remove_session_subscriber(session_id, subscription)
                    subscription = Subscription(self._queue_size)
                    self._registry.add_session_subscriber(session_id, subscription)
                    batch = await self._catch_up(session_id, seen, history)
                else:
                    if not batch:  # the bus changed state: what did it miss?
                        batch = await self._catch_up(session_id, seen, history)
                    else:
                        batch = await self._fill_holes(batch, seen, live)
                for event in batch:
                    if event.seq > seen.get(event.run_id, 0):
                        seen[event.run_id] = event.seq
                        live.add(event.run_id)
                        yield event
        finally:
            self._registry.remove_session_subscriber(session_id, subscription)

    async def _fill_holes(
        self, batch: list[RunEvent], seen: dict[str, int], live: set[str]
    ) -> list[RunEvent]:
        """``batch`` with what the bus lost of runs already followed live read from the store,
        and a ``gap`` for what the store does not hold either (lost in a crash; its seqs are
        reserved). What the bus carries is stored, and so is all before it: no flush here."""
        if not self._bus.crosses_processes:
            return batch
        filled: list[RunEvent] = []
        last = dict(seen)
        for event in batch:
            previous = last.get(event.run_id, 0)
            if event.run_id in live and event.seq > previous + 1:
                missing = await self._store.read_events(
                    event.run_id, after=previous, limit=event.seq - previous - 1
                )
                filled.extend(with_gaps([*missing, event], previous)[:-1])
            filled.append(event)
            last[event.run_id] = max(previous, event.seq)
        return filled

    async def _stored_cache(self, session_id: str) -> list[RunEvent]:
        runs = await self._store.list_runs(session_id=session_id, limit=1)
        if not runs:
            return []
        run_id = runs[0].run_id
        critical = await self._store.read_events_of_types(
            run_id, sorted(CRITICAL_EVENT_TYPES), limit=32
        )
        budget = await self._store.read_events_of_types(run_id, ["token_budget_updated"], limit=1)
        return sorted([*critical, *budget], key=lambda event: event.seq)

    async def _finished_runs(self, session_id: str) -> set[str]:
        runs = await self._store.list_runs(session_id=session_id, limit=CATCH_UP_RUNS)
        return {run.run_id for run in runs if run.status.is_terminal}

    async def _catch_up(
        self, session_id: str, seen: dict[str, int], history: set[str]
    ) -> list[RunEvent]:
        """After a lag: what the session's recent runs stored past what we delivered (runs
        that started and ended during the lag included)."""
        await self._batcher.flush()
        events: list[RunEvent] = []
        for run in reversed(
            await self._store.list_runs(session_id=session_id, limit=CATCH_UP_RUNS)
        ):
            if run.run_id in seen or run.run_id not in history:
                events.extend(
                    await self._store.read_events(run.run_id, after=seen.get(run.run_id, 0))
                )
        return events
