"""Usage metrics (``/v1/metrics/…``) and the Prometheus exposition (``GET /metrics``).

Dates are UTC days and ranges are inclusive; without ``start_date``/``end_date`` a query covers
everything retained (``CULM_METRICS_RETENTION_DAYS``, 90 by default).
"""

from __future__ import annotations

import re
from datetime import date
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import BeforeValidator

from culm.api.deps import EngineDep
from culm.api.openapi import INVALID, errors
from culm.errors import EngineClosedError, NotFoundError
from culm.metrics.pipeline import MetricsPipeline
from culm.metrics.prometheus import CONTENT_TYPE, PrometheusExporter
from culm.metrics.queries import MetricsQueries
from culm.metrics.reports import (
    AgentMetricsList,
    DailyMetrics,
    ForwardEndpointMetricsList,
    ForwardMetricsSummary,
    ForwardRequestMetricsList,
    Granularity,
    MetricsSummary,
    MetricsSystemStatus,
    ModelMetricsList,
    SessionMetricsDetail,
    SessionMetricsList,
    ToolMetricsList,
)

router = APIRouter(prefix="/v1/metrics", tags=["metrics"])
exposition = APIRouter(tags=["metrics"])

MAX_DAYS = 3660
Limit = Annotated[int, Query(ge=1, le=1000, description="at most this many (newest first)")]
ISO_DAY = re.compile(r"\d{4}-\d{2}-\d{2}")


def _iso_day(value: object) -> object:
    """Only ``YYYY-MM-DD`` (pydantic alone would take ``0`` as a Unix time)."""
    if isinstance(value, str) and not ISO_DAY.fullmatch(value):
        raise ValueError("expected a date as YYYY-MM-DD")
    return value


Day = Annotated[date, BeforeValidator(_iso_day)]
StartDate = Annotated[Day | None, Query(description="first UTC day, inclusive")]
EndDate = Annotated[Day | None, Query(description="last UTC day, inclusive")]
UNKNOWN = errors({404: "`not_found`: no metrics recorded for this session"})
NO_PARAMETERS = errors({422: INVALID})  # every operation documents 422, even without parameters


def _pipeline(engine: EngineDep) -> MetricsPipeline:
    if not engine.metrics.started:
        raise EngineClosedError("metrics are not available (the engine's store is not SQL)")
    return engine.metrics


PipelineDep = Annotated[MetricsPipeline, Depends(_pipeline)]


def _queries(pipeline: PipelineDep) -> MetricsQueries:
    return pipeline.queries


QueriesDep = Annotated[MetricsQueries, Depends(_queries)]


def _range(
    start_date: StartDate = None, end_date: EndDate = None
) -> tuple[date | None, date | None]:
    """An inverted range is an empty one (every count 0), not an error."""
    return start_date, end_date


DateRange = Annotated[tuple[date | None, date | None], Depends(_range)]


@router.get("/summary")
async def summary(queries: QueriesDep, dates: DateRange) -> MetricsSummary:
    """Sessions, runs, rounds, tool calls, tokens by kind, active sessions and the error rate."""
    return await queries.summary(*dates)


@router.get("/models")
async def models(queries: QueriesDep, dates: DateRange) -> ModelMetricsList:
    """Runs, rounds and tokens per model."""
    return await queries.models(*dates)


@router.get("/agents")
async def agents(queries: QueriesDep, dates: DateRange) -> AgentMetricsList:
    """Runs, rounds and tokens per named agent (runs made from no agent are left out)."""
    return await queries.agents(*dates)


@router.get("/sessions")
async def sessions(
    queries: QueriesDep, dates: DateRange, model: str | None = None, limit: Limit = 100
) -> SessionMetricsList:
    """Sessions with a run in the range (with one of ``model``), most recently active first."""
    return await queries.sessions(*dates, model=model, limit=limit)


@router.get("/sessions/{session_id}", responses=UNKNOWN)
async def session(session_id: str, queries: QueriesDep) -> SessionMetricsDetail:
    """A session's runs and rounds, each round with its tool calls."""
    detail = await queries.session(session_id)
    if detail is None:
        raise NotFoundError("session", session_id)
    return detail


@router.get("/daily")
async def daily(
    queries: QueriesDep,
    days: Annotated[int, Query(ge=1, le=MAX_DAYS, description="how many days, up to today")] = 30,
    granularity: Granularity = Granularity.DAY,
) -> DailyMetrics:
    """Totals per day, week (from Monday) or month, with per-model and per-tool breakdowns."""
    return await queries.daily(days, granularity)


@router.get("/tools")
async def tools(queries: QueriesDep, dates: DateRange) -> ToolMetricsList:
    """Calls, failures and latency percentiles (p50, p95; nearest rank) per tool."""
    return await queries.tools(*dates)


@router.get("/forward/summary")
async def forward_summary(queries: QueriesDep, dates: DateRange) -> ForwardMetricsSummary:
    """Requests forwarded by the proxy: outcomes, tokens, latency."""
    return await queries.forward_summary(*dates)


@router.get("/forward/endpoints")
async def forward_endpoints(queries: QueriesDep, dates: DateRange) -> ForwardEndpointMetricsList:
    return await queries.forward_endpoints(*dates)


@router.get("/forward/requests")
async def forward_requests(
    queries: QueriesDep,
    endpoint: str | None = None,
    model: str | None = None,
    trace_id: Annotated[
        str | None, Query(description="only the calls linked to this run (`x-culm-run-id`)")
    ] = None,
    limit: Limit = 100,
) -> ForwardRequestMetricsList:
    """Forwarded requests, newest first."""
    return await queries.forward_requests(
        endpoint=endpoint, model=model, trace_id=trace_id, limit=limit
    )


@router.get("/system", responses=NO_PARAMETERS)
async def system(pipeline: PipelineDep) -> MetricsSystemStatus:
    """The pipeline: queue depth, drops, storage errors, the worker's state."""
    return await pipeline.system()


@exposition.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}, **NO_PARAMETERS},
)
async def prometheus(request: Request) -> Response:
    """Prometheus text format (OpenTelemetry GenAI names): tokens, durations, runs, tool calls;
    and, for the whole database, workers alive, pending runs and their oldest age, claims,
    takeovers and fenced writes."""
    exporter: PrometheusExporter = request.app.state.prometheus
    return Response(await exporter.scrape(), media_type=CONTENT_TYPE)
