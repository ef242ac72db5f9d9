"""Read the metrics store: summary, per model, sessions, daily periods, tools (and, from
``culm.metrics.forward``, forward requests).

Costs are priced on reading, from token sums per model (``culm.metrics.costs``).
Portable SQL only (SQLite and PostgreSQL): totals come from the daily rollups, date ranges are
comparisons on the ``day`` columns, weeks and months are folded from days in Python, and tool
latency percentiles are nearest-rank, walked over per-latency counts.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from datetime import date, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from culm.domain.models import Usage
from culm.domain.time import utc_now
from culm.metrics import periods
from culm.metrics import tables as t
from culm.metrics.columns import counter_sums, day_range, row_usage
from culm.metrics.costs import CostSum, Price, forward_model, unpriced, usage_of
from culm.metrics.forward import ForwardQueries, forward_record
from culm.metrics.reports import (
    AgentMetricsList,
    DailyMetrics,
    Granularity,
    MetricsSummary,
    ModelMetrics,
    ModelMetricsList,
    RoundMetrics,
    RunMetrics,
    RunStatusCounts,
    SessionMetrics,
    SessionMetricsDetail,
    SessionMetricsList,
    ToolCallMetrics,
    ToolMetrics,
    ToolMetricsList,
)
from culm.metrics.store import Connect


class MetricsQueries(ForwardQueries):
    """Reads through ``connect`` (a read connection on the engine's database)."""

    def __init__(self, connect: Connect, price: Price = unpriced) -> None:
        self._connect = connect
        self._price = price

    async def _all(self, query: sa.Executable) -> Sequence[Any]:
        async with self._connect() as conn:
            return (await conn.execute(query)).all()

    # MetricsSummary and models

    async def summary(self, start: date | None = None, end: date | None = None) -> MetricsSummary:
        async with self._connect() as conn:
            by_model = (await conn.execute(_model_totals(start, end))).all()
            tools = (await conn.execute(_tool_totals(start, end))).one()
            counts = await _run_counts(conn, start, end)
            sessions = await conn.scalar(
                sa.select(sa.func.count(sa.distinct(t.sessions.c.session_id))).where(
                    *day_range(t.sessions.c.day, start, end)
                )
            )
            active = await conn.scalar(
                sa.select(sa.func.count(sa.distinct(t.sessions.c.session_id))).where(
                    t.sessions.c.status == "running"
                )
            )
        finished = counts.completed + counts.failed + counts.cancelled
        costs = CostSum(self._price).add_all((row.model, usage_of(row)) for row in by_model)
        return MetricsSummary(
            start_date=start,
            end_date=end,
            sessions=sessions or 0,
            runs=counts.running + finished,
            runs_by_status=counts,
            active_sessions=active or 0,
            rounds=sum(row.rounds for row in by_model),
            failed_rounds=sum(row.failed_rounds for row in by_model),
            partial_rounds=sum(row.partial_rounds for row in by_model),
            tool_calls=tools.calls,
            tool_failures=tools.failures,
            tool_cancelled=tools.cancelled,
            tokens=sum((usage_of(row) for row in by_model), Usage()),
            cost_usd=costs.cost,
            unpriced_models=sorted(costs.unpriced),
            error_rate=counts.failed / finished if finished else 0.0,
        )

    async def models(self, start: date | None = None, end: date | None = None) -> ModelMetricsList:
        daily = t.daily_models
        query = (
            sa.select(daily.c.model, *counter_sums(daily, _MODEL_COUNTERS))
            .where(*day_range(daily.c.day, start, end))
            .group_by(daily.c.model)
            .order_by(daily.c.model)
        )
        daily_runs = t.daily_runs
        runs_query = (
            sa.select(daily_runs.c.model, sa.func.sum(daily_runs.c.runs))
            .where(*day_range(daily_runs.c.day, start, end))
            .group_by(daily_runs.c.model)
        )
        rounds = {row.model: row for row in await self._all(query)}
        runs = {row[0]: int(row[1]) for row in await self._all(runs_query)}
        models = [
            _model_metrics(model, runs.get(model, 0), rounds.get(model), self._price)
            for model in sorted(rounds.keys() | runs.keys())
        ]
        return ModelMetricsList(start_date=start, end_date=end, models=models)

    async def agents(self, start: date | None = None, end: date | None = None) -> AgentMetricsList:
        """:meth:`models`' columns per named agent (see :mod:`culm.metrics.agents`)."""
        from culm.metrics.agents import agent_metrics

        return await agent_metrics(self._connect, start, end, self._price)

    # Sessions

    async def sessions(
        self,
        start: date | None = None,
        end: date | None = None,
        *,
        model: str | None = None,
        limit: int = 100,
    ) -> SessionMetricsList:
        s = t.sessions
        filters = [*day_range(s.c.day, start, end)]
        if model is not None:
            filters.append(s.c.model == model)
        async with self._connect() as conn:
            ids = await _latest_sessions(conn, filters, limit)
            if not ids:
                return SessionMetricsList(sessions=[])
            runs = await conn.execute(
                sa.select(s).where(s.c.session_id.in_(ids)).order_by(s.c.started_at)
            )
            by_session: defaultdict[str, list[Any]] = defaultdict(list)
            for row in runs:
                by_session[row.session_id].append(row)
            rounds = await _round_totals(conn, ids, self._price)
            tools = await _tool_counts(conn, ids)
        return SessionMetricsList(
            sessions=[_session_stats(i, by_session[i], rounds.get(i), tools.get(i, 0)) for i in ids]
        )

    async def session(self, session_id: str) -> SessionMetricsDetail | None:
        async with self._connect() as conn:
            runs = (
                await conn.execute(
                    sa.select(t.sessions, _engine_runs.c.parent_run_id)
                    .select_from(
                        t.sessions.outerjoin(
                            _engine_runs, _engine_runs.c.run_id == t.sessions.c.run_id
                        )
                    )
                    .where(t.sessions.c.session_id == session_id)
                    .order_by(t.sessions.c.started_at)
                )
            ).all()
            rounds = (
                await conn.execute(
                    sa.select(t.rounds)
                    .where(t.rounds.c.session_id == session_id)
                    .order_by(sa.func.coalesce(t.rounds.c.started_at, t.rounds.c.completed_at))
                )
            ).all()
            calls = (
                await conn.execute(
                    sa.select(t.tool_calls)
                    .where(t.tool_calls.c.session_id == session_id)
                    .order_by(t.tool_calls.c.occurred_at)
                )
            ).all()
            forwarded = await _forwarded_for(conn, [row.run_id for row in runs])
        if not runs and not rounds:
            return None
        return _session_detail(session_id, runs, rounds, calls, forwarded, self._price)

    # Periods

    async def daily(
        self,
        days: int = 30,
        granularity: Granularity = Granularity.DAY,
        *,
        today: date | None = None,
    ) -> DailyMetrics:
        end = today or utc_now().date()
        start = end - timedelta(days=days - 1)
        models = t.daily_models
        tools = t.daily_tools
        model_rows = await self._all(
            sa.select(models).where(*day_range(models.c.day, start, end)).order_by(models.c.model)
        )
        tool_rows = await self._all(
            sa.select(tools).where(*day_range(tools.c.day, start, end)).order_by(tools.c.tool_name)
        )
        runs = t.daily_runs
        run_rows = await self._all(
            sa.select(runs.c.day, sa.func.sum(runs.c.runs))
            .where(*day_range(runs.c.day, start, end))
            .group_by(runs.c.day)
        )
        return periods.report(
            granularity, start, end, model_rows, tool_rows, run_rows, price=self._price
        )

    # Tools

    async def tools(self, start: date | None = None, end: date | None = None) -> ToolMetricsList:
        """Per tool: calls, failures, mean and nearest-rank p50/p95 latency, exact. The store
        counts calls per distinct latency (index-only), the ranks are walked here."""
        calls = t.tool_calls.c
        query = (
            sa.select(
                calls.tool_name,
                calls.latency_ms,
                sa.func.count().label("calls"),
                sa.func.sum(sa.case((calls.success | calls.cancelled, 0), else_=1)).label(
                    "failures"
                ),
                sa.func.sum(sa.case((calls.cancelled, 1), else_=0)).label("cancelled"),
            )
            .where(*day_range(calls.day, start, end))
            .group_by(calls.tool_name, calls.latency_ms)
            .order_by(calls.tool_name, calls.latency_ms)
        )
        histograms: defaultdict[str, list[tuple[int, int, int, int]]] = defaultdict(list)
        for row in await self._all(query):
            histograms[row.tool_name].append(
                (row.latency_ms, row.calls, row.failures, row.cancelled)
            )
        tools = sorted(
            (_tool_metrics(name, histogram) for name, histogram in histograms.items()),
            key=lambda tool: (-tool.calls, tool.tool_name),
        )
        return ToolMetricsList(start_date=start, end_date=end, tools=tools)

    # System

    async def recorded_system_totals(self) -> tuple[int, int]:
        """(sum of stored metrics_dropped counts, number of stored storage_error events)."""
        s = t.system_events
        query = sa.select(
            sa.func.coalesce(sa.func.sum(sa.case((s.c.type == "metrics_dropped", s.c.count))), 0),
            sa.func.coalesce(sa.func.sum(sa.case((s.c.type == "storage_error", 1), else_=0)), 0),
        )
        row = (await self._all(query))[0]
        return int(row[0]), int(row[1])


# Building blocks

_MODEL_COUNTERS = ("rounds", "failed_rounds", "partial_rounds", "latency_ms", *t.USAGE_KINDS)


def _model_totals(start: date | None, end: date | None) -> sa.Select[Any]:
    daily = t.daily_models
    return (
        sa.select(daily.c.model, *counter_sums(daily, _MODEL_COUNTERS))
        .where(*day_range(daily.c.day, start, end))
        .group_by(daily.c.model)
    )


def _tool_totals(start: date | None, end: date | None) -> sa.Select[Any]:
    daily = t.daily_tools
    return sa.select(*counter_sums(daily, ("calls", "failures", "cancelled"))).where(
        *day_range(daily.c.day, start, end)
    )


async def _run_counts(
    conn: AsyncConnection, start: date | None, end: date | None
) -> RunStatusCounts:
    runs = t.daily_runs
    query = (
        sa.select(runs.c.status, sa.func.sum(runs.c.runs))
        .where(*day_range(runs.c.day, start, end))
        .group_by(runs.c.status)
    )
    counts = {status: int(count) for status, count in await conn.execute(query)}
    return RunStatusCounts(**{k: v for k, v in counts.items() if k in RunStatusCounts.model_fields})


def _model_metrics(model: str, runs: int, row: Any, price: Price) -> ModelMetrics:
    if row is None:  # runs whose rounds all fall outside the range, or none yet
        return ModelMetrics(
            model=model,
            runs=runs,
            rounds=0,
            failed_rounds=0,
            partial_rounds=0,
            tokens=Usage(),
            cost_usd=CostSum(price).add(model, Usage()),
            avg_latency_ms=None,
        )
    return ModelMetrics(
        model=model,
        runs=runs,
        rounds=row.rounds,
        failed_rounds=row.failed_rounds,
        partial_rounds=row.partial_rounds,
        tokens=row_usage(row),
        cost_usd=CostSum(price).add(model, row_usage(row)),
        avg_latency_ms=row.latency_ms / row.rounds if row.rounds else None,
    )


def _tool_metrics(name: str, histogram: list[tuple[int, int, int, int]]) -> ToolMetrics:
    """From ``(latency_ms, calls, failures, cancelled)`` in latency order."""
    total = sum(calls for _, calls, _, _ in histogram)
    return ToolMetrics(
        tool_name=name,
        calls=total,
        failures=sum(failures for _, _, failures, _ in histogram),
        cancelled=sum(cancelled for *_, cancelled in histogram),
        avg_latency_ms=sum(latency * calls for latency, calls, *_ in histogram) / total,
        p50_latency_ms=_nearest_rank(histogram, total, 50),
        p95_latency_ms=_nearest_rank(histogram, total, 95),
    )


def _nearest_rank(histogram: list[tuple[int, int, int, int]], total: int, percent: int) -> int:
    """The value at rank ceil(total * percent / 100)."""
    rank = (total * percent + 99) // 100
    seen = 0
    for latency, calls, *_ in histogram:
        seen += calls
        if seen >= rank:
            return latency
    return histogram[-1][0]


async def _latest_sessions(conn: AsyncConnection, filters: list[Any], limit: int) -> list[str]:
    """Up to ``limit`` session ids, most recently active first: runs are read newest first
    (index on ``last_at``), a page at a time, until enough distinct sessions are seen."""
    s = t.sessions.c
    page = max(4 * limit, 200)
    query = sa.select(s.session_id).where(*filters).order_by(s.last_at.desc(), s.run_id)
    ids: dict[str, None] = {}
    offset = 0
    while len(ids) < limit:
        batch = list(await conn.scalars(query.limit(page).offset(offset)))
        ids.update(dict.fromkeys(batch))
        if len(batch) < page:
            break
        offset += page
    return list(ids)[:limit]


async def _round_totals(
    conn: AsyncConnection, ids: list[str], price: Price
) -> dict[str, tuple[int, Usage, CostSum]]:
    """Per session: (rounds, usage, cost)."""
    r = t.rounds
    query = (
        sa.select(
            r.c.session_id,
            r.c.model,
            sa.func.count().label("rounds"),
            *counter_sums(r, t.USAGE_KINDS),
        )
        .where(r.c.session_id.in_(ids), r.c.completed_at.is_not(None))
        .group_by(r.c.session_id, r.c.model)
    )
    totals: dict[str, tuple[int, Usage, CostSum]] = {}
    for row in await conn.execute(query):
        rounds, usage, cost = totals.get(row.session_id) or (0, Usage(), CostSum(price))
        cost.add(row.model, row_usage(row))
        totals[row.session_id] = (rounds + row.rounds, usage + row_usage(row), cost)
    return totals


async def _tool_counts(conn: AsyncConnection, ids: list[str]) -> dict[str, int]:
    c = t.tool_calls
    query = (
        sa.select(c.c.session_id, sa.func.count())
        .where(c.c.session_id.in_(ids))
        .group_by(c.c.session_id)
    )
    return {session_id: count for session_id, count in await conn.execute(query)}


def _session_stats(
    session_id: str, runs: list[Any], rounds: tuple[int, Usage, CostSum] | None, tool_calls: int
) -> SessionMetrics:
    latest = runs[-1]
    started = [run.started_at for run in runs if run.started_at is not None]
    return SessionMetrics(
        session_id=session_id,
        model=latest.model,
        runs=len(runs),
        active=any(run.status == "running" for run in runs),
        last_status=latest.status,
        first_started_at=min(started) if started else None,
        last_activity_at=max(run.last_at for run in runs),
        message_count=sum(run.message_count for run in runs),
        rounds=rounds[0] if rounds is not None else 0,
        tool_calls=tool_calls,
        tokens=rounds[1] if rounds is not None else Usage(),
        cost_usd=rounds[2].cost if rounds is not None else 0.0,
    )


# The engine's runs table, for the link from a sub-agent's run to the run that spawned it
# (named here rather than imported: metrics depend on the domain only).
_engine_runs = sa.table("runs", sa.column("run_id"), sa.column("parent_run_id"))


async def _forwarded_for(conn: AsyncConnection, run_ids: list[str]) -> Sequence[Any]:
    """The proxied calls linked to these runs, oldest first."""
    if not run_ids:
        return []
    f = t.forward_requests
    started = sa.func.coalesce(f.c.started_at, f.c.completed_at)
    query = sa.select(f).where(f.c.trace_id.in_(run_ids)).order_by(started, f.c.request_id)
    return (await conn.execute(query)).all()


def _session_detail(
    session_id: str,
    runs: Sequence[Any],
    rounds: Sequence[Any],
    calls: Sequence[Any],
    forwarded: Sequence[Any],
    price: Price,
) -> SessionMetricsDetail:
    cost = CostSum(price)
    by_round: defaultdict[str, list[ToolCallMetrics]] = defaultdict(list)
    for call in calls:
        by_round[call.round_id].append(
            ToolCallMetrics(
                tool_call_id=call.tool_call_id,
                tool_name=call.tool_name,
                success=call.success,
                cancelled=call.cancelled,
                latency_ms=call.latency_ms,
                occurred_at=call.occurred_at,
            )
        )
    records = [
        RoundMetrics(
            round_id=row.round_id,
            run_id=row.run_id,
            model=row.model,
            status=row.status,
            partial=row.partial,
            error=row.error,
            started_at=row.started_at,
            completed_at=row.completed_at,
            latency_ms=row.latency_ms,
            usage=row_usage(row),
            cost_usd=cost.add(row.model, row_usage(row)),
            tool_calls=by_round.get(row.round_id, []),
        )
        for row in rounds
    ]
    total = sum((record.usage for record in records), Usage())
    proxied = [forward_record(row, price) for row in forwarded]
    forward_cost = CostSum(price).add_all(
        (forward_model(row.endpoint, row.model), row_usage(row))
        for row in forwarded
        if row.has_usage
    )
    return SessionMetricsDetail(
        session_id=session_id,
        runs=[
            RunMetrics(
                run_id=row.run_id,
                parent_run_id=row.parent_run_id,
                model=row.model,
                status=row.status,
                started_at=row.started_at,
                completed_at=row.completed_at,
                message_count=row.message_count,
            )
            for row in runs
        ],
        rounds=records,
        tokens=total,
        cost_usd=cost.cost,
        forward_requests=proxied,
        forward_tokens=sum((r.usage for r in proxied if r.usage is not None), Usage()),
        forward_cost_usd=forward_cost.cost,
    )
