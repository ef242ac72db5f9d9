"""``GET /metrics``: Prometheus text format, on a registry of the app's own (no module globals).

Names follow the OpenTelemetry GenAI semantic conventions where they exist (dots become
underscores in metric and label names):

``gen_ai_client_token_usage``                  histogram of tokens per model call, labelled
                                               ``gen_ai_token_type`` (``input`` | ``output``)
``gen_ai_client_operation_duration_seconds``   histogram of model call durations (``error_type``
                                               set when the call failed: ``stream_cut``, an HTTP
                                               status, ``timeout``)

both also labelled ``gen_ai_operation_name`` (``chat``), ``gen_ai_provider_name``,
``gen_ai_request_model``, ``gen_ai_response_model`` (as the provider named the model that
answered; empty when it did not say, and for proxied requests) and ``server_address`` (the
provider's host; empty for ``scripted``), for the agent loop's rounds and the proxy's forwarded requests alike
(``culm_source``: ``run`` | ``compaction`` | ``proxy``). culm's own:

``gen_ai_client_operation_time_to_first_chunk_seconds``  histogram of the time from a model
                                               call's start to its first chunk (streamed calls)
``culm_cost_usd_total``               what the model calls cost (culm.cost), by the GenAI labels;
                                      a call of a model without a price adds nothing, and counts
                                      in ``culm_unpriced_calls_total``

``culm_runs_active``                  runs in progress in this process
``culm_runs_finished_total``          by ``status`` (``completed`` | ``cancelled`` | ``error``)
``culm_tool_calls_total``             by ``tool_name`` and ``outcome`` (``success`` | ``error`` |
                                      ``cancelled``)
``culm_metrics_queue_depth``, ``culm_metrics_events_dropped_total``,
``culm_metrics_storage_errors_total``  the metrics pipeline itself

and, read from the database at each scrape (so every API process reports the same, for every
worker on the database; absent while the database does not answer):

``culm_workers_alive``                workers whose last heartbeat is within the lease
``culm_runs_pending``                 runs not started (ready, or queued in their session)
``culm_runs_ready``                   pending runs waiting for a worker to claim them
``culm_runs_running``                 runs executing on any worker
``culm_runs_oldest_pending_seconds``  age of the oldest pending run (database time; 0 if none)
``culm_claims_total``, ``culm_takeovers_total``, ``culm_fenced_writes_total``
                                      summed over every worker's row (written at its heartbeat):
                                      runs claimed, runs taken over after their lease ran out,
                                      writes refused because the run had passed to another owner
``culm_input_requests_total``         input requests (people in the loop) by ``tool_name`` and
                                      ``outcome`` (``approved`` | ``denied`` | ``answered`` |
                                      ``declined`` | ``timed_out``), from ``input_requests``

Also the process's own (``process_cpu_seconds_total``, ``process_resident_memory_bytes`` …, on
Linux), and the HTTP API's (:mod:`culm.api.httpmetrics`). Counters have no ``_created`` series.

The counters and histograms are fed by the metrics pipeline (a listener sees every metrics event
as it is emitted), so they count what this process saw since it started, as Prometheus expects.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.registry import Collector

from culm.domain.models import Usage
from culm.errors import EngineClosedError, StorageUnavailableError
from culm.metrics.costs import Price, unpriced
from culm.metrics.events import (
    MetricsEvent,
    RequestCompleted,
    RequestStarted,
    RoundCompleted,
    SessionCompleted,
    ToolCalled,
)
from culm.metrics.pipeline import LiveCounts, MetricsPipeline
from culm.storage.base import QueueStats, WorkerInfo

logger = logging.getLogger(__name__)

CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4
# The buckets the OpenTelemetry GenAI conventions advise.
TOKEN_BUCKETS = tuple(float(4**power) for power in range(14))
DURATION_BUCKETS = (
    0.01,
    0.02,
    0.04,
    0.08,
    0.16,
    0.32,
    0.64,
    1.28,
    2.56,
    5.12,
    10.24,
    20.48,
    40.96,
    81.92,
)
GENAI_LABELS = (
    "gen_ai_operation_name",
    "gen_ai_provider_name",
    "gen_ai_request_model",
    "gen_ai_response_model",
    "server_address",
    "culm_source",
)
RUN_STATUS = {"completed": "completed", "cancelled": "cancelled", "failed": "error"}
MAX_OPEN_REQUESTS = 10_000
CLUSTER_TIMEOUT = 2.0  # seconds a scrape waits for the database's worker and queue figures


@dataclass(frozen=True, slots=True)
class Cluster:
    """The workers' rows and the run queue, as read for one scrape."""

    workers: Sequence[WorkerInfo]
    queue: QueueStats
    # (tool name, outcome, count) of every input request answered or expired (culm.input).
    input_requests: Sequence[tuple[str, str, int]] = ()


ClusterReader = Callable[[], Awaitable[Cluster]]


class _LiveCollector(Collector):
    """Gauges and counters read at scrape time from the engine and the pipeline."""

    def __init__(self, active_runs: Callable[[], int], live: Callable[[], LiveCounts]) -> None:
        self._active_runs = active_runs
        self._live = live

    def collect(self) -> Iterable[Metric]:
        live = self._live()
        yield GaugeMetricFamily(
            "culm_runs_active", "Runs in progress in this process.", value=self._active_runs()
        )
        yield GaugeMetricFamily(
            "culm_metrics_queue_depth", "Metrics events waiting to be stored.", live.queue_depth
        )
        yield CounterMetricFamily(
            "culm_metrics_events_dropped",
            "Metrics events dropped (queue full, or storage).",
            value=live.dropped,
        )
        yield CounterMetricFamily(
            "culm_metrics_storage_errors",
            "Failed writes of metrics batches.",
            value=live.storage_errors,
        )


class _ClusterCollector(Collector):
    """The database-wide figures of the last :meth:`PrometheusExporter.scrape` (none if the
    database did not answer)."""

    def __init__(self) -> None:
        self.cluster: Cluster | None = None

    def collect(self) -> Iterable[Metric]:
        cluster = self.cluster
        if cluster is None:
            return
        queue, workers = cluster.queue, cluster.workers
        alive = sum(1 for worker in workers if worker.alive)
        yield GaugeMetricFamily(
            "culm_workers_alive", "Workers whose last heartbeat is within the lease.", alive
        )
        yield GaugeMetricFamily(
            "culm_runs_pending", "Runs not started (ready or queued).", queue.pending
        )
        yield GaugeMetricFamily(
            "culm_runs_ready", "Pending runs waiting for a worker.", queue.ready
        )
        yield GaugeMetricFamily("culm_runs_running", "Runs executing on any worker.", queue.running)
        yield GaugeMetricFamily(
            "culm_runs_oldest_pending_seconds",
            "Age of the oldest pending run (database time; 0 if none).",
            queue.oldest_pending_age or 0.0,
        )
        for name, text in (
            ("claims", "Runs claimed by workers."),
            ("takeovers", "Runs taken over by a sweeper after their lease ran out."),
            ("fenced_writes", "Writes refused because the run had passed to another owner."),
        ):
            total = sum(getattr(worker, name) for worker in workers)
            yield CounterMetricFamily(f"culm_{name}", f"{text} Summed over workers.", value=total)
        requests = CounterMetricFamily(
            "culm_input_requests",
            "Input requests answered, by tool and outcome (approved, denied, answered, "
            "declined, timed_out).",
            labels=["tool_name", "outcome"],
        )
        for tool_name, outcome, count in cluster.input_requests:
            requests.add_metric([tool_name, outcome], count)
        yield requests


class PrometheusExporter:
    def __init__(
        self,
        pipeline: MetricsPipeline,
        *,
        active_runs: Callable[[], int],
        cluster: ClusterReader | None = None,
        price: Price = unpriced,
        server_of: Callable[[str], str] = lambda provider: "",
    ) -> None:
        disable_created_metrics()  # type: ignore[no-untyped-call]  # one series per counter: no `_created` beside `_total`
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        self._price = price
        self._server_of = server_of  # a provider's host (``server_address``)
        self.first_chunk = Histogram(
            "gen_ai_client_operation_time_to_first_chunk",
            "Time from the start of a streamed model call to its first chunk.",
            GENAI_LABELS,
            unit="seconds",
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )
        self.cost = Counter(
            "culm_cost_usd",
            "What the model calls cost in USD (calls of unpriced models add nothing).",
            GENAI_LABELS,
            registry=self.registry,
        )
        self.unpriced = Counter(
            "culm_unpriced_calls",
            "Model calls with usage whose model has no known price.",
            GENAI_LABELS,
            registry=self.registry,
        )
        self.tokens = Histogram(
            "gen_ai_client_token_usage",
            "Number of input and output tokens used per model call.",
            [*GENAI_LABELS, "gen_ai_token_type"],
            buckets=TOKEN_BUCKETS,
            registry=self.registry,
        )
        self.duration = Histogram(
            "gen_ai_client_operation_duration_seconds",
            "Duration of GenAI model calls.",
            [*GENAI_LABELS, "error_type"],
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )
        self.runs_finished = Counter(
            "culm_runs_finished", "Runs finished, by status.", ["status"], registry=self.registry
        )
        self.tool_calls = Counter(
            "culm_tool_calls",
            "Tool calls, by tool and outcome.",
            ["tool_name", "outcome"],
            registry=self.registry,
        )
        self.registry.register(_LiveCollector(active_runs, pipeline.live))
        self._read_cluster = cluster
        self._cluster = _ClusterCollector()
        self.registry.register(self._cluster)
        self._requests: OrderedDict[str, tuple[str, str]] = OrderedDict()
        pipeline.add_listener(self.observe)

    async def scrape(self) -> bytes:
        """The exposition, with the database-wide figures read now."""
        self._cluster.cluster = await self._cluster_now()
        return self.render()

    def render(self) -> bytes:
        return generate_latest(self.registry)

    async def _cluster_now(self) -> Cluster | None:
        if self._read_cluster is None:
            return None
        try:
            async with asyncio.timeout(CLUSTER_TIMEOUT):
                return await self._read_cluster()
        except (StorageUnavailableError, EngineClosedError, TimeoutError) as exc:
            logger.warning("/metrics without the worker and queue figures: %s", exc or "timeout")
            return None

    def observe(self, event: MetricsEvent) -> None:
        match event:
            case RoundCompleted():
                self._round(event)
            case ToolCalled():
                outcome = "cancelled" if event.cancelled else "error"
                outcome = "success" if event.success else outcome
                self.tool_calls.labels(event.tool_name, outcome).inc()
            case SessionCompleted():
                self.runs_finished.labels(RUN_STATUS[event.status.value]).inc()
            case RequestStarted():
                self._requests[event.request_id] = (event.endpoint, event.model)
                while len(self._requests) > MAX_OPEN_REQUESTS:
                    self._requests.popitem(last=False)
            case RequestCompleted():
                self._request(event)

    def _round(self, event: RoundCompleted) -> None:
        provider, _, model = (event.model or "unknown").partition(":")
        source = "compaction" if event.compaction else "run"
        server = self._server_of(provider)
        labels = ("chat", provider, model or provider, event.response_model or "", server, source)
        error = "cancelled" if event.status.value == "cancelled" else ""
        error = error or ("stream_cut" if event.partial else "")
        self.duration.labels(*labels, error).observe(event.latency_ms / 1000)
        if event.first_chunk_ms is not None:
            self.first_chunk.labels(*labels).observe(event.first_chunk_ms / 1000)
        self._tokens(labels, event.usage.prompt_tokens, event.usage.completion_tokens)
        self._cost(labels, event.model or "unknown", event.usage)

    def _request(self, event: RequestCompleted) -> None:
        endpoint, model = self._requests.pop(event.request_id, ("unknown", "unknown"))
        provider = endpoint.partition(".")[0]
        labels = ("chat", provider, model, "", self._server_of(provider), "proxy")
        error = "" if event.status.value == "success" else _error_type(event)
        self.duration.labels(*labels, error).observe(event.latency_ms / 1000)
        if event.usage is not None:
            self._tokens(labels, event.usage.prompt_tokens, event.usage.completion_tokens)
            self._cost(labels, f"{labels[1]}:{model}", event.usage)

    def _cost(self, labels: tuple[str, ...], model: str, usage: Usage) -> None:
        if not (usage.prompt_tokens or usage.completion_tokens):
            return
        cost = self._price(model, usage)
        if cost is None:
            self.unpriced.labels(*labels).inc()
        else:
            self.cost.labels(*labels).inc(cost)

    def _tokens(self, labels: tuple[str, ...], prompt: int, completion: int) -> None:
        if prompt or completion:
            self.tokens.labels(*labels, "input").observe(prompt)
            self.tokens.labels(*labels, "output").observe(completion)


def _error_type(event: RequestCompleted) -> str:
    return "timeout" if event.status.value == "timeout" else str(event.status_code)
