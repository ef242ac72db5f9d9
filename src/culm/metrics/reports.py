"""What the metrics queries return (and the HTTP API serves): plain pydantic records.

Token counts are :class:`~culm.Usage` objects (the six kinds, exactly as reported). Dates are UTC
days, ranges inclusive.
"""

from __future__ import annotations

from datetime import date, datetime
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field

from culm.domain.models import Usage


class _Report(BaseModel):
    model_config = ConfigDict(frozen=True)


class RunStatusCounts(_Report):
    running: int = 0
    completed: int = 0
    failed: int = 0
    cancelled: int = 0


class MetricsSummary(_Report):
    start_date: date | None
    end_date: date | None
    sessions: int = Field(description="distinct sessions with a run in the range")
    runs: int = Field(description="runs started in the range (the seed's chat sessions)")
    runs_by_status: RunStatusCounts
    active_sessions: int = Field(description="sessions with a run in progress now")
    rounds: int = Field(description="rounds completed in the range")
    failed_rounds: int
    partial_rounds: int = Field(description="rounds whose model stream was cut")
    tool_calls: int
    tool_failures: int = Field(description="tool calls that failed (cancelled ones are not)")
    tool_cancelled: int = Field(default=0, description="tool calls their run's cancel ended")
    tokens: Usage
    cost_usd: float | None = Field(
        default=None, description="what `tokens` cost in USD; null if a model in it has no price"
    )
    unpriced_models: list[str] = Field(
        default_factory=list,
        description="models with usage and no known price (the cost is then null)",
    )
    error_rate: float = Field(description="failed runs / finished runs (0 when none finished)")


class ModelMetrics(_Report):
    model: str
    runs: int
    rounds: int
    failed_rounds: int
    partial_rounds: int
    tokens: Usage
    cost_usd: float | None = Field(
        default=None, description="what `tokens` cost in USD; null if the model has no price"
    )
    avg_latency_ms: float | None


class ModelMetricsList(_Report):
    start_date: date | None
    end_date: date | None
    models: list[ModelMetrics]


class AgentMetrics(_Report):
    """:class:`ModelMetrics` for the runs of one named agent."""

    agent: str
    runs: int
    rounds: int
    failed_rounds: int
    partial_rounds: int
    tokens: Usage
    cost_usd: float | None = Field(
        default=None,
        description="what `tokens` cost in USD (each model's at its price); null if a model "
        "the agent used has no price",
    )
    avg_latency_ms: float | None


class AgentMetricsList(_Report):
    start_date: date | None
    end_date: date | None
    agents: list[AgentMetrics]


class SessionMetrics(_Report):
    session_id: str
    model: str | None = Field(description="the model of the session's latest run")
    runs: int
    active: bool
    last_status: str
    first_started_at: datetime | None
    last_activity_at: datetime | None
    message_count: int
    rounds: int
    tool_calls: int
    tokens: Usage
    cost_usd: float | None = Field(default=None, description="null if a model in it has no price")


class SessionMetricsList(_Report):
    sessions: list[SessionMetrics]


class ToolCallMetrics(_Report):
    tool_call_id: str
    tool_name: str
    success: bool
    cancelled: bool = False
    latency_ms: int
    occurred_at: datetime


class RoundMetrics(_Report):
    round_id: str
    run_id: str | None
    model: str | None
    status: str = Field(description="running, success, failed or cancelled")
    partial: bool
    error: str | None
    started_at: datetime | None
    completed_at: datetime | None
    latency_ms: int | None
    usage: Usage
    cost_usd: float | None = Field(default=None, description="null if the model has no price")
    tool_calls: list[ToolCallMetrics]


class RunMetrics(_Report):
    run_id: str
    parent_run_id: str | None = Field(
        default=None, description="the run that spawned this one, for a sub-agent's run"
    )
    model: str | None
    status: str = Field(description="running, completed, failed or cancelled")
    started_at: datetime | None
    completed_at: datetime | None
    message_count: int


class SessionMetricsDetail(_Report):
    session_id: str
    runs: list[RunMetrics]
    rounds: list[RoundMetrics]
    tokens: Usage
    cost_usd: float | None = Field(default=None, description="null if a model in it has no price")
    forward_requests: list[ForwardRequestMetrics] = Field(
        default_factory=list,
        description="calls made through the forward proxy on behalf of the session's runs "
        "(`x-culm-run-id` or `traceparent`): a tool's own model calls",
    )
    forward_tokens: Usage = Field(
        default_factory=Usage, description="their usage; not part of `tokens`"
    )
    forward_cost_usd: float | None = Field(
        default=None, description="what `forward_tokens` cost; not part of `cost_usd`"
    )


class Granularity(StrEnum):
    DAY = "day"
    WEEK = "week"
    MONTH = "month"


class PeriodModel(_Report):
    model: str
    rounds: int
    tokens: Usage
    cost_usd: float | None = Field(default=None, description="null if the model has no price")


class PeriodTool(_Report):
    tool_name: str
    calls: int
    failures: int


class MetricsPeriod(_Report):
    start: date = Field(description="first day (weeks start on Monday, months on the 1st)")
    end: date = Field(description="last day, inclusive")
    runs: int
    rounds: int
    failed_rounds: int
    tool_calls: int
    tool_failures: int
    tokens: Usage
    cost_usd: float | None = Field(default=None, description="null if a model in it has no price")
    models: list[PeriodModel]
    tools: list[PeriodTool]


class DailyMetrics(_Report):
    granularity: Granularity
    start_date: date
    end_date: date
    periods: list[MetricsPeriod]


class ToolMetrics(_Report):
    tool_name: str
    calls: int
    failures: int
    cancelled: int = 0
    avg_latency_ms: float
    p50_latency_ms: int
    p95_latency_ms: int


class ToolMetricsList(_Report):
    start_date: date | None
    end_date: date | None
    tools: list[ToolMetrics]


class ForwardMetricsSummary(_Report):
    start_date: date | None
    end_date: date | None
    requests: int
    succeeded: int
    errors: int
    timeouts: int
    pending: int
    streaming: int
    tokens: Usage
    cost_usd: float | None = Field(default=None, description="null if a model in it has no price")
    unpriced_models: list[str] = Field(
        default_factory=list,
        description="models with usage and no known price (the cost is then null)",
    )
    avg_latency_ms: float | None
    error_rate: float = Field(description="(errors + timeouts) / completed requests")


class ForwardEndpointMetrics(_Report):
    endpoint: str
    requests: int
    errors: int
    timeouts: int
    tokens: Usage
    cost_usd: float | None = Field(default=None, description="null if a model in it has no price")
    avg_latency_ms: float | None


class ForwardEndpointMetricsList(_Report):
    endpoints: list[ForwardEndpointMetrics]


class ForwardRequestMetrics(_Report):
    request_id: str
    trace_id: str | None
    endpoint: str | None
    model: str | None
    is_stream: bool | None
    status: str = Field(description="pending, success, error or timeout")
    status_code: int | None
    usage: Usage | None
    cost_usd: float | None = Field(
        default=None,
        description="what `usage` cost in USD; null if unknown or the model has no price",
    )
    latency_ms: int | None
    error: str | None
    partial: bool = Field(description="the answer broke off; usage is what was seen by then")
    started_at: datetime | None
    completed_at: datetime | None


class ForwardRequestMetricsList(_Report):
    requests: list[ForwardRequestMetrics]


class MetricsWorkerState(StrEnum):
    NOT_STARTED = "not_started"
    RUNNING = "running"
    RETRYING = "retrying"
    STOPPED = "stopped"


class MetricsWorkerStatus(_Report):
    state: MetricsWorkerState
    started_at: datetime | None
    batches: int
    events_written: int
    last_batch_at: datetime | None
    last_error: str | None
    last_error_at: datetime | None


class MetricsSystemStatus(_Report):
    """The pipeline itself: what this process counted since it started, and what is stored."""

    queue_depth: int
    queue_capacity: int
    events_accepted: int
    dropped: int = Field(description="events dropped since this process started")
    dropped_recorded: int = Field(description="sum of the stored metrics_dropped counts")
    storage_errors: int = Field(description="failed writes since this process started")
    storage_errors_recorded: int = Field(description="stored storage_error events")
    worker: MetricsWorkerStatus
