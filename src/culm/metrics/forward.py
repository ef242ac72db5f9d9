"""The forward proxy's reports: a summary, per endpoint, and the requests themselves.

Costs are priced on reading, per endpoint and model (``culm.metrics.costs``), as the other
reports are.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date
from typing import Any

import sqlalchemy as sa

from culm.metrics import tables as t
from culm.metrics.columns import counter_sums, day_range, row_usage
from culm.metrics.costs import CostSum, Price, forward_model, usage_of
from culm.metrics.reports import (
    ForwardEndpointMetrics,
    ForwardEndpointMetricsList,
    ForwardMetricsSummary,
    ForwardRequestMetrics,
    ForwardRequestMetricsList,
)


class ForwardQueries:
    """The forward reports of :class:`culm.metrics.queries.MetricsQueries`."""

    _price: Price

    async def _all(self, query: sa.Executable) -> Sequence[Any]:
        raise NotImplementedError

    async def forward_summary(
        self, start: date | None = None, end: date | None = None
    ) -> ForwardMetricsSummary:
        f = t.forward_requests
        query = sa.select(*forward_counters(f)).where(*day_range(f.c.day, start, end))
        row = (await self._all(query))[0]
        costs = await self._forward_costs(start, end)
        total = CostSum(self._price).merge(costs.values())
        done = row.succeeded + row.errors + row.timeouts
        return ForwardMetricsSummary(
            start_date=start,
            end_date=end,
            requests=row.requests,
            succeeded=row.succeeded,
            errors=row.errors,
            timeouts=row.timeouts,
            pending=row.pending,
            streaming=row.streaming,
            tokens=row_usage(row),
            cost_usd=total.cost,
            unpriced_models=sorted(total.unpriced),
            avg_latency_ms=float(row.avg_latency) if row.avg_latency is not None else None,
            error_rate=(row.errors + row.timeouts) / done if done else 0.0,
        )

    async def forward_endpoints(
        self, start: date | None = None, end: date | None = None
    ) -> ForwardEndpointMetricsList:
        f = t.forward_requests
        endpoint = sa.func.coalesce(f.c.endpoint, "unknown").label("endpoint")
        query = (
            sa.select(endpoint, *forward_counters(f))
            .where(*day_range(f.c.day, start, end))
            .group_by(endpoint)
            .order_by(endpoint)
        )
        costs = await self._forward_costs(start, end)
        endpoints = [
            ForwardEndpointMetrics(
                endpoint=row.endpoint,
                requests=row.requests,
                errors=row.errors,
                timeouts=row.timeouts,
                tokens=row_usage(row),
                cost_usd=costs[row.endpoint].cost if row.endpoint in costs else 0.0,
                avg_latency_ms=float(row.avg_latency) if row.avg_latency is not None else None,
            )
            for row in await self._all(query)
        ]
        return ForwardEndpointMetricsList(endpoints=endpoints)

    async def forward_requests(
        self,
        *,
        endpoint: str | None = None,
        model: str | None = None,
        trace_id: str | None = None,
        limit: int = 100,
    ) -> ForwardRequestMetricsList:
        f = t.forward_requests
        query = sa.select(f)
        if endpoint is not None:
            query = query.where(f.c.endpoint == endpoint)
        if model is not None:
            query = query.where(f.c.model == model)
        if trace_id is not None:
            query = query.where(f.c.trace_id == trace_id)
        newest = sa.func.coalesce(f.c.started_at, f.c.completed_at)
        query = query.order_by(newest.desc(), f.c.request_id).limit(limit)
        return ForwardRequestMetricsList(
            requests=[forward_record(row, self._price) for row in await self._all(query)]
        )

    async def _forward_costs(self, start: date | None, end: date | None) -> dict[str, CostSum]:
        """The cost of the proxied requests in the range, per endpoint."""
        f = t.forward_requests
        endpoint = sa.func.coalesce(f.c.endpoint, "unknown").label("endpoint")
        query = (
            sa.select(endpoint, f.c.model, *counter_sums(f, t.USAGE_KINDS))
            .where(*day_range(f.c.day, start, end), f.c.has_usage.is_(True))
            .group_by(endpoint, f.c.model)
        )
        costs: dict[str, CostSum] = {}
        for row in await self._all(query):
            model = forward_model(row.endpoint, row.model)
            costs.setdefault(row.endpoint, CostSum(self._price)).add(model, usage_of(row))
        return costs


def forward_counters(f: sa.Table) -> list[Any]:
    def count_if(condition: Any) -> Any:
        return sa.func.coalesce(sa.func.sum(sa.case((condition, 1), else_=0)), 0)

    return [
        sa.func.count().label("requests"),
        count_if(f.c.status == "success").label("succeeded"),
        count_if(f.c.status == "error").label("errors"),
        count_if(f.c.status == "timeout").label("timeouts"),
        count_if(f.c.status == "pending").label("pending"),
        count_if(f.c.is_stream.is_(True)).label("streaming"),
        sa.func.avg(f.c.latency_ms).label("avg_latency"),
        *counter_sums(f, t.USAGE_KINDS),
    ]


def forward_record(row: Any, price: Price) -> ForwardRequestMetrics:
    model = forward_model(row.endpoint, row.model)
    cost = CostSum(price).add(model, row_usage(row)) if row.has_usage else None
    return ForwardRequestMetrics(
        request_id=row.request_id,
        trace_id=row.trace_id,
        endpoint=row.endpoint,
        model=row.model,
        is_stream=row.is_stream,
        status=row.status,
        status_code=row.status_code,
        usage=row_usage(row) if row.has_usage else None,
        cost_usd=cost,
        latency_ms=row.latency_ms,
        error=row.error,
        partial=row.partial,
        started_at=row.started_at,
        completed_at=row.completed_at,
    )
