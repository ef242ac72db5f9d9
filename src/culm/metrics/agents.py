"""Metrics by named agent (``/v1/metrics/agents``): the models report's columns, grouped by the
agent each run ran as.

The agent is a column of the engine's ``runs`` table (same database), joined here by
``run_id``; the metrics tables keep no agent of their own. Runs made from no agent are left out.
"""

from __future__ import annotations

from datetime import date
from typing import Any

import sqlalchemy as sa

from culm.metrics import tables as t
from culm.metrics.columns import day_range, row_usage
from culm.metrics.costs import CostSum, Price
from culm.metrics.reports import AgentMetrics, AgentMetricsList
from culm.metrics.store import Connect

# The engine's runs table, as much of it as this join reads (not imported: metrics depends on
# the domain only).
_runs = sa.table("runs", sa.column("run_id"), sa.column("agent"))


def _round_counters(r: sa.Table) -> list[Any]:
    """The models report's counters, summed over raw rounds instead of the daily rollup."""
    closed = r.c.completed_at.is_not(None)
    return [
        sa.func.count().filter(closed).label("rounds"),
        sa.func.count().filter(r.c.status == "failed").label("failed_rounds"),
        sa.func.count().filter(r.c.partial.is_(True)).label("partial_rounds"),
        sa.func.coalesce(sa.func.sum(r.c.latency_ms), 0).label("latency_ms"),
        *[sa.func.coalesce(sa.func.sum(r.c[kind]), 0).label(kind) for kind in t.USAGE_KINDS],
    ]


async def agent_metrics(
    connect: Connect, start: date | None, end: date | None, price: Price
) -> AgentMetricsList:
    r, s = t.rounds, t.sessions
    rounds_query = (
        sa.select(_runs.c.agent, *_round_counters(r))
        .select_from(r.join(_runs, r.c.run_id == _runs.c.run_id))
        .where(_runs.c.agent.is_not(None), *day_range(r.c.day, start, end))
        .group_by(_runs.c.agent)
    )
    by_model_query = (  # the cost: each model's tokens at its price
        sa.select(_runs.c.agent, r.c.model, *_round_counters(r))
        .select_from(r.join(_runs, r.c.run_id == _runs.c.run_id))
        .where(_runs.c.agent.is_not(None), *day_range(r.c.day, start, end))
        .group_by(_runs.c.agent, r.c.model)
    )
    runs_query = (
        sa.select(_runs.c.agent, sa.func.count())
        .select_from(s.join(_runs, s.c.run_id == _runs.c.run_id))
        .where(_runs.c.agent.is_not(None), *day_range(s.c.day, start, end))
        .group_by(_runs.c.agent)
    )
    async with connect() as conn:
        rounds = {row.agent: row for row in await conn.execute(rounds_query)}
        runs = {row[0]: int(row[1]) for row in await conn.execute(runs_query)}
        costs: dict[str, CostSum] = {}
        for row in await conn.execute(by_model_query):
            costs.setdefault(row.agent, CostSum(price)).add(row.model, row_usage(row))
    agents = [
        _agent(name, runs.get(name, 0), rounds.get(name), costs.get(name))
        for name in sorted(rounds.keys() | runs.keys())
    ]
    return AgentMetricsList(start_date=start, end_date=end, agents=agents)


def _agent(name: str, runs: int, row: Any, cost: CostSum | None) -> AgentMetrics:
    rounds = int(row.rounds) if row is not None else 0
    return AgentMetrics(
        agent=name,
        runs=runs,
        rounds=rounds,
        failed_rounds=int(row.failed_rounds) if row is not None else 0,
        partial_rounds=int(row.partial_rounds) if row is not None else 0,
        tokens=row_usage(row) if row is not None else row_usage(None),
        cost_usd=cost.cost if cost is not None else 0.0,
        avg_latency_ms=int(row.latency_ms) / rounds if rounds else None,
    )
