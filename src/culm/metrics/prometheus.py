"""``GET /metrics``: Prometheus text format, on a registry of the app's own (no module globals).

Names follow the OpenTelemetry GenAI semantic conventions where they exist (dots become
underscores in metric and label names):

``gen_ai_client_token_usage``                  histogram of tokens per model call, labelled
                                               ``gen_ai_token_type`` (``input`` | ``output``)
``gen_ai_client_operation_duration_seconds``   histogram of model call durations (``error_type``
                                               set when the call failed: ``stream_cut``, an HTTP
                                               status, ``timeout``)

both also labelled ``gen_ai_operation_name`` (``chat``), ``gen_ai_provider_name`` and
``gen_ai_request_model``, for the agent loop's rounds and the proxy's forwarded requests alike
(``culm_source``: ``run`` | ``proxy``). culm's own:

``culm_runs_active``                  runs in progress in this process
``culm_runs_finished_total``          by ``status`` (``completed`` | ``cancelled`` | ``error``)
``culm_tool_calls_total``             by ``tool_name`` and ``outcome`` (``success`` | ``error`` |
                                      ``cancelled``)
``culm_metrics_queue_depth``, ``culm_metrics_events_dropped_total``,
``culm_metrics_storage_errors_total``  the metrics pipeline itself

The counters and histograms are fed by the metrics pipeline (a listener sees every metrics event
as it is emitted), so they count what this process saw since it started, as Prometheus expects.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.registry import Collector

from culm.metrics.events import (
    MetricsEvent,
    RequestCompleted,
    RequestStarted,
    RoundCompleted,
    SessionCompleted,
    ToolCalled,
)
from culm.metrics.pipeline import LiveCounts, MetricsPipeline

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
    "culm_source",
)
RUN_STATUS = {"completed": "completed", "cancelled": "cancelled", "failed": "error"}
MAX_OPEN_REQUESTS = 10_000


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


class PrometheusExporter:
    def __init__(self, pipeline: MetricsPipeline, *, active_runs: Callable[[], int]) -> None:
        self.registry = CollectorRegistry()
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
        self._requests: OrderedDict[str, tuple[str, str]] = OrderedDict()
        pipeline.add_listener(self.observe)

    def render(self) -> bytes:
        return generate_latest(self.registry)

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
        labels = ("chat", provider, model or provider, "run")
        error = "cancelled" if event.status.value == "cancelled" else ""
        error = error or ("stream_cut" if event.partial else "")
        self.duration.labels(*labels, error).observe(event.latency_ms / 1000)
        self._tokens(labels, event.usage.prompt_tokens, event.usage.completion_tokens)

    def _request(self, event: RequestCompleted) -> None:
        endpoint, model = self._requests.pop(event.request_id, ("unknown", "unknown"))
        labels = ("chat", endpoint.partition(".")[0], model, "proxy")
        error = "" if event.status.value == "success" else _error_type(event)
        self.duration.labels(*labels, error).observe(event.latency_ms / 1000)
        if event.usage is not None:
            self._tokens(labels, event.usage.prompt_tokens, event.usage.completion_tokens)

    def _tokens(self, labels: tuple[str, ...], prompt: int, completion: int) -> None:
        if prompt or completion:
            self.tokens.labels(*labels, "input").observe(prompt)
            self.tokens.labels(*labels, "output").observe(completion)


def _error_type(event: RequestCompleted) -> str:
    return "timeout" if event.status.value == "timeout" else str(event.status_code)
