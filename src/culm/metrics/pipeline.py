"""The metrics pipeline: emit → bounded bus → batching worker → store; and the queries.

:class:`MetricsPipeline` is what the engine wires (``engine.metrics``): runs feed it through
:meth:`MetricsPipeline.observe_run_events` (stored run events, turned into chat events by
:mod:`culm.metrics.derive`), the proxy through :meth:`MetricsPipeline.emit` (forward events).
Neither ever blocks. The proxy (its own issue) reports a forwarded request with a trace id
linking it to a run when there is one::

    engine.metrics.emit(RequestStarted(meta=EventMeta.with_trace_id(run_id), request_id=rid,
                                       endpoint="openai.chat_completions", model=m, is_stream=True))
    engine.metrics.emit(RequestCompleted(request_id=rid, status_code=200,
                                         status=ForwardStatus.SUCCESS, usage=usage, latency_ms=ms))

A periodic maintenance task prunes records older than the retention, and closes the records of
runs whose end the metrics never saw (a run ended by crash recovery is ended in the store
directly, without a published event).
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta

from culm.domain.events import RunEvent
from culm.domain.models import Run, RunStatus
from culm.domain.time import utc_now
from culm.logs import get_logger
from culm.metrics.bus import MetricsBus
from culm.metrics.costs import Price, unpriced
from culm.metrics.derive import ModelOf, RunMetricsDeriver
from culm.metrics.events import EventMeta, MetricsEvent, SessionCompleted, SessionStatus
from culm.metrics.queries import MetricsQueries
from culm.metrics.reports import MetricsSystemStatus, MetricsWorkerState, MetricsWorkerStatus
from culm.metrics.store import MetricsStore
from culm.metrics.worker import MetricsWorker

log = get_logger(__name__)

# Looks a run up in the engine's store (None: it no longer exists).
RunLookup = Callable[[str], Awaitable[Run | None]]
# Sees every event emitted, as it is emitted (the Prometheus exporter is one).
Listener = Callable[[MetricsEvent], None]

# How long a run may look unfinished to the metrics before it is checked against the engine.
RECONCILE_AFTER = timedelta(minutes=1)


@dataclass(frozen=True, kw_only=True, slots=True)
class LiveCounts:
    queue_depth: int = 0
    dropped: int = 0
    storage_errors: int = 0


@dataclass(frozen=True, kw_only=True, slots=True)
class MetricsConfig:
    queue_size: int = 100_000
    batch_size: int = 5000
    flush_interval: float = 0.5
    retention_days: int = 90
    maintenance_interval: float = 60.0


class MetricsPipeline:
    def __init__(self, config: MetricsConfig | None = None, *, price: Price = unpriced) -> None:
        self.config = config or MetricsConfig()
        self._price = price  # what a model's usage costs (reports price on reading)
        self._listeners: list[Listener] = []
        self._bus: MetricsBus | None = None
        self._worker: MetricsWorker | None = None
        self._store: MetricsStore | None = None
        self._queries: MetricsQueries | None = None
        self._deriver: RunMetricsDeriver | None = None
        self._lookup: RunLookup | None = None

    @property
    def started(self) -> bool:
        return self._worker is not None

    def add_listener(self, listener: Listener) -> None:
        """Call ``listener`` with each event as it is emitted (it must be quick, and not
        raise: an error is logged and otherwise ignored)."""
        self._listeners.append(listener)

    async def start(
        self,
        store: MetricsStore,
        stack: contextlib.AsyncExitStack,
        *,
        model_of: ModelOf,
        lookup: RunLookup | None = None,
    ) -> None:
        """Start the worker on ``store``; ``stack`` stops it (flushing everything)."""
        config = self.config
        self._store = store
        self._queries = MetricsQueries(store.connect, self._price)
        self._lookup = lookup
        self._bus = MetricsBus(config.queue_size, batch_size=config.batch_size)
        self._deriver = RunMetricsDeriver(self.emit, model_of)
        self._worker = MetricsWorker(
            self._bus,
            store.write_changes,
            batch_size=config.batch_size,
            flush_interval=config.flush_interval,
            maintenance=self.maintain,
            maintenance_interval=config.maintenance_interval,
        )
        self._worker.start()
        stack.push_async_callback(self._worker.aclose)

    # Feeding it

    def emit(self, event: MetricsEvent) -> bool:
        """Queue ``event`` for the store; never blocks. False when it was dropped (the queue
        was full, or the pipeline is not running)."""
        for listener in self._listeners:
            try:
                listener(event)
            except Exception:
                log.exception("a metrics listener failed", event_type=event.type)
        return self._bus.emit(event) if self._bus is not None else False

    def observe_run_events(self, events: Sequence[RunEvent]) -> None:
        """The runtime's observer: derive chat metrics from a batch of stored run events."""
        if self._deriver is not None:
            self._deriver.observe(events)

    async def flush(self) -> None:
        """Return once everything emitted so far is stored."""
        if self._worker is not None:
            await self._worker.flush()

    # Reading it

    @property
    def queries(self) -> MetricsQueries:
        if self._queries is None:
            raise RuntimeError("the metrics pipeline is not started")
        return self._queries

    async def system(self) -> MetricsSystemStatus:
        dropped, errors = await self.queries.recorded_system_totals()
        bus, worker = self._bus, self._worker
        if bus is None or worker is None:
            return MetricsSystemStatus(
                queue_depth=0,
                queue_capacity=self.config.queue_size,
                events_accepted=0,
                dropped=0,
                dropped_recorded=dropped,
                storage_errors=0,
                storage_errors_recorded=errors,
                worker=_NOT_STARTED,
            )
        return MetricsSystemStatus(
            queue_depth=len(bus),
            queue_capacity=bus.capacity,
            events_accepted=bus.accepted,
            dropped=bus.dropped + worker.storage_dropped,
            dropped_recorded=dropped,
            storage_errors=worker.storage_errors,
            storage_errors_recorded=errors,
            worker=worker.status(),
        )

    def live(self) -> LiveCounts:
        """This process's counters, read without I/O (for ``GET /metrics``)."""
        bus, worker = self._bus, self._worker
        if bus is None or worker is None:
            return LiveCounts()
        return LiveCounts(
            queue_depth=len(bus),
            dropped=bus.dropped + worker.storage_dropped,
            storage_errors=worker.storage_errors,
        )

    # Maintenance

    async def maintain(self) -> None:
        """Prune past the retention, then close runs that ended unseen."""
        assert self._store is not None
        today = utc_now().date()
        pruned = await self._store.prune(today - timedelta(days=self.config.retention_days))
        if pruned:
            log.info("pruned old metrics records", records=pruned)
        await self.reconcile()

    async def reconcile(self) -> int:
        """Emit ``session_completed`` for recorded runs that the engine has ended but whose
        end the metrics never saw; returns how many."""
        if self._store is None or self._lookup is None:
            return 0
        closed = 0
        for run_id in await self._store.open_runs(started_before=utc_now() - RECONCILE_AFTER):
            run = await self._lookup(run_id)
            if run is not None and not run.status.is_terminal:
                continue
            status = _SESSION_STATUS[run.status] if run else SessionStatus.FAILED
            meta = EventMeta(occurred_at=(run and run.completed_at) or utc_now(), trace_id=run_id)
            session_id = run.session_id if run else run_id
            self.emit(SessionCompleted(meta=meta, session_id=session_id, status=status))
            closed += 1
        return closed


_NOT_STARTED = MetricsWorkerStatus(
    state=MetricsWorkerState.NOT_STARTED,
    started_at=None,
    batches=0,
    events_written=0,
    last_batch_at=None,
    last_error=None,
    last_error_at=None,
)

_SESSION_STATUS = {
    RunStatus.COMPLETED: SessionStatus.COMPLETED,
    RunStatus.CANCELLED: SessionStatus.CANCELLED,
    RunStatus.ERROR: SessionStatus.FAILED,
}
