"""Fold per-day rollup rows into day, week or month periods (pure).

A week starts on Monday, a month on its 1st. Every period that overlaps the range is listed,
empty ones too, so a chart has no holes; the first and last may reach past the range, and count
only the days inside it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any

from culm.domain.models import Usage
from culm.metrics.costs import CostSum, Price, unpriced
from culm.metrics.reports import DailyMetrics, Granularity, MetricsPeriod, PeriodModel, PeriodTool
from culm.metrics.tables import USAGE_KINDS


def period_start(day: date, granularity: Granularity) -> date:
    if granularity is Granularity.WEEK:
        return day - timedelta(days=day.weekday())
    if granularity is Granularity.MONTH:
        return day.replace(day=1)
    return day


def period_end(start: date, granularity: Granularity) -> date:
    if granularity is Granularity.WEEK:
        return start + timedelta(days=6)
    if granularity is Granularity.MONTH:
        following = (start.replace(day=28) + timedelta(days=4)).replace(day=1)
        return following - timedelta(days=1)
    return start


def period_starts(start: date, end: date, granularity: Granularity) -> list[date]:
    starts = []
    current = period_start(start, granularity)
    while current <= end:
        starts.append(current)
        current = period_end(current, granularity) + timedelta(days=1)
    return starts


@dataclass(slots=True)
class _Totals:
    runs: int = 0
    rounds: int = 0
    failed_rounds: int = 0
    tool_calls: int = 0
    tool_failures: int = 0
    tokens: Usage = field(default_factory=Usage)
    models: dict[str, tuple[int, Usage]] = field(default_factory=dict)
    tools: dict[str, tuple[int, int]] = field(default_factory=dict)


def report(
    granularity: Granularity,
    start: date,
    end: date,
    model_rows: Iterable[Any],
    tool_rows: Iterable[Any],
    run_rows: Iterable[Sequence[Any]],
    *,
    price: Price = unpriced,
) -> DailyMetrics:
    """``model_rows``: ``metrics_daily_models`` rows; ``tool_rows``: ``metrics_daily_tools``
    rows; ``run_rows``: ``(day, runs)`` pairs; ``price``: what a model's usage costs."""
    totals = {day: _Totals() for day in period_starts(start, end, granularity)}
    for row in model_rows:
        _add_model(totals[period_start(row.day, granularity)], row)
    for row in tool_rows:
        _add_tool(totals[period_start(row.day, granularity)], row)
    for day, runs in run_rows:
        totals[period_start(day, granularity)].runs += runs
    periods = [_period(day, granularity, total, price) for day, total in totals.items()]
    return DailyMetrics(granularity=granularity, start_date=start, end_date=end, periods=periods)


def _add_model(total: _Totals, row: Any) -> None:
    usage = Usage(**{kind: getattr(row, kind) for kind in USAGE_KINDS})
    total.rounds += row.rounds
    total.failed_rounds += row.failed_rounds
    total.tokens += usage
    rounds, tokens = total.models.get(row.model, (0, Usage()))
    total.models[row.model] = (rounds + row.rounds, tokens + usage)


def _add_tool(total: _Totals, row: Any) -> None:
    total.tool_calls += row.calls
    total.tool_failures += row.failures
    calls, failures = total.tools.get(row.tool_name, (0, 0))
    total.tools[row.tool_name] = (calls + row.calls, failures + row.failures)


def _period(start: date, granularity: Granularity, total: _Totals, price: Price) -> MetricsPeriod:
    cost = CostSum(price)
    models = [
        PeriodModel(model=model, rounds=rounds, tokens=tokens, cost_usd=cost.add(model, tokens))
        for model, (rounds, tokens) in sorted(total.models.items())
    ]
    return MetricsPeriod(
        start=start,
        end=period_end(start, granularity),
        runs=total.runs,
        rounds=total.rounds,
        failed_rounds=total.failed_rounds,
        tool_calls=total.tool_calls,
        tool_failures=total.tool_failures,
        tokens=total.tokens,
        cost_usd=cost.cost,
        models=models,
        tools=[
            PeriodTool(tool_name=name, calls=calls, failures=failures)
            for name, (calls, failures) in sorted(total.tools.items())
        ],
    )
