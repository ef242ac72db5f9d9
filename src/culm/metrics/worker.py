"""The metrics worker: drains the bus into the store in batches, and never dies.

A batch is written when ``batch_size`` events are queued or ``flush_interval`` seconds after the
first one arrived, whichever comes first; :meth:`MetricsWorker.flush` writes at once, and
:meth:`MetricsWorker.aclose` writes everything left before it stops. A failed write is recorded
as a ``storage_error`` (stored with the next write that succeeds) and retried with backoff; after
``max_attempts`` the batch is split in halves, so that one event the store rejects is dropped
(and counted) alone instead of taking its batch with it. While stopping, a batch that still
fails after its attempts is dropped and counted, so a dead database cannot hang a shutdown.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime

from culm.domain.time import utc_now
from culm.logs import get_logger
from culm.metrics.batch import Change, change
from culm.metrics.bus import QUEUE_FULL, MetricsBus
from culm.metrics.events import MetricsDropped, StorageError, WorkerStarted, WorkerStopped
from culm.metrics.reports import MetricsWorkerState, MetricsWorkerStatus

log = get_logger(__name__)

Write = Callable[[Sequence[Change]], Awaitable[None]]
Maintenance = Callable[[], Awaitable[None]]

STORAGE_FAILED = "storage_failed"


class MetricsWorker:
    def __init__(
        self,
        bus: MetricsBus,
        write: Write,
        *,
        batch_size: int,
        flush_interval: float,
        max_attempts: int = 5,
        retry_delay: float = 0.1,
        max_retry_delay: float = 5.0,
        maintenance: Maintenance | None = None,
        maintenance_interval: float = 60.0,
    ) -> None:
        self._bus = bus
        self._write = write
        self._batch_size = batch_size
        self._flush_interval = flush_interval
        self._max_attempts = max_attempts
        self._retry_delay = retry_delay
        self._max_retry_delay = max_retry_delay
        self._maintenance = maintenance
        self._maintenance_interval = maintenance_interval
        self._pending_system: list[Change] = []
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._urgent = False
        self._progress = asyncio.Event()
        self.processed = 0
        self.state = MetricsWorkerState.NOT_STARTED
        self.started_at: datetime | None = None
        self.batches = 0
        self.events_written = 0
        self.storage_errors = 0
        self.storage_dropped = 0
        self.last_batch_at: datetime | None = None
        self.last_error: str | None = None
        self.last_error_at: datetime | None = None

    # Lifecycle

    def start(self) -> None:
        self.state = MetricsWorkerState.RUNNING
        self.started_at = utc_now()
        self._pending_system.append(change(WorkerStarted()))
        self._task = asyncio.create_task(self._run(), name="culm-metrics-worker")

    async def aclose(self) -> None:
        """Write everything emitted so far, record ``worker_stopped``, stop."""
        if self._task is None:
            return
        self._closing = True
        self._bus.wake()
        await self._task
        self._task = None

    async def flush(self) -> None:
        """Return once every event the bus accepted before this call is written (or dropped)."""
        target = self._bus.accepted
        while self.processed < target and self._task is not None and not self._task.done():
            progress = self._progress
            self._urgent = True
            self._bus.wake()
            await progress.wait()

    def status(self) -> MetricsWorkerStatus:
        return MetricsWorkerStatus(
            state=self.state,
            started_at=self.started_at,
            batches=self.batches,
            events_written=self.events_written,
            last_batch_at=self.last_batch_at,
            last_error=self.last_error,
            last_error_at=self.last_error_at,
        )

    # The loop

    async def _run(self) -> None:
        maintenance = asyncio.create_task(self._maintain(), name="culm-metrics-maintenance")
        try:
            while not self._closing:
                await self._next_batch()
            while len(self._bus):
                await self._write_batch(self._bus.take(self._batch_size))
            self._record_drops(self._bus.drain_drops(), QUEUE_FULL)
            self._pending_system.append(change(WorkerStopped()))
            await self._write_batch([])
        finally:
            maintenance.cancel()
            await asyncio.gather(maintenance, return_exceptions=True)
            self.state = MetricsWorkerState.STOPPED
            self._signal_progress()

    async def _next_batch(self) -> None:
        await self._bus.wait_for_items()
        if not (self._closing or self._urgent):
            await self._bus.wait_for_batch(self._flush_interval)
        self._urgent = False
        batch = self._bus.take(self._batch_size)
        self._record_drops(self._bus.end_drop_episode(), QUEUE_FULL)
        if batch or self._pending_system:
            await self._write_batch(batch)
        self._signal_progress()

    async def _write_batch(self, batch: list[Change]) -> None:
        """Write ``batch`` (plus pending system events); never raises."""
        system, self._pending_system = self._pending_system, []
        written = await self._write_parts(system + batch)
        if written and self._pending_system:  # the errors met on the way: record them now
            system, self._pending_system = self._pending_system, []
            await self._write_parts(system)
        self.processed += len(batch)
        if written:
            self.batches += 1
            self.last_batch_at = utc_now()
        self._signal_progress()

    async def _write_parts(self, events: list[Change]) -> bool:
        if not events:
            return False
        if await self._write_with_retry(events):
            self.events_written += len(events)
            return True
        if self._closing or len(events) == 1:
            self._give_up(events)
            return False
        middle = len(events) // 2
        first = await self._write_parts(events[:middle])
        second = await self._write_parts(events[middle:])
        return first or second

    async def _write_with_retry(self, events: list[Change]) -> bool:
        delay = self._retry_delay
        for attempt in range(1, self._max_attempts + 1):
            try:
                await self._write(events)
            except Exception as exc:
                self._on_storage_error(exc, events)
                if attempt == self._max_attempts:
                    return False
                self.state = MetricsWorkerState.RETRYING
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._max_retry_delay)
            else:
                self.state = MetricsWorkerState.RUNNING
                return True
        return False

    def _on_storage_error(self, exc: Exception, events: list[Change]) -> None:
        self.storage_errors += 1
        self.last_error = f"{type(exc).__name__}: {exc}"[:1000]
        self.last_error_at = utc_now()
        kinds = Counter(kind for kind, _, _ in events)
        event_type = kinds.most_common(1)[0][0]
        log.warning("storing metrics failed", error=self.last_error, events=len(events))
        error = StorageError(error=self.last_error, event_type=event_type)
        self._pending_system.append(change(error))

    def _give_up(self, events: list[Change]) -> None:
        lost = [event for event in events if event[0] != "system"]
        if self._closing:  # the store is failing while we stop: do not wait on each batch
            rest = self._bus.take(len(self._bus))
            self.processed += len(rest)
            lost += rest
        log.error("dropping metrics events that could not be stored", events=len(lost))
        self.storage_dropped += len(lost)
        self._record_drops(len(lost), STORAGE_FAILED)

    def _record_drops(self, count: int, reason: str) -> None:
        if count:
            self._pending_system.append(change(MetricsDropped(count=count, reason=reason)))

    def _signal_progress(self) -> None:
        progress, self._progress = self._progress, asyncio.Event()
        progress.set()

    async def _maintain(self) -> None:
        if self._maintenance is None:
            return
        while True:
            try:
                await self._maintenance()
            except Exception:
                log.exception("metrics maintenance failed")
            await asyncio.sleep(self._maintenance_interval)
