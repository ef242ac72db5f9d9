"""SQL building blocks the metrics reports share: a range of days, counter sums, a row's usage."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import date
from typing import Any

import sqlalchemy as sa

from culm.domain.models import Usage
from culm.metrics.costs import usage_of


def day_range(column: sa.Column[Any], start: date | None, end: date | None) -> list[Any]:
    conditions = []
    if start is not None:
        conditions.append(column >= start)
    if end is not None:
        conditions.append(column <= end)
    return conditions


def counter_sums(table: sa.Table, names: Iterable[str]) -> list[Any]:
    return [sa.func.coalesce(sa.func.sum(table.c[name]), 0).label(name) for name in names]


def row_usage(row: Any) -> Usage:
    """A row's token sums (none for no row)."""
    return Usage() if row is None else usage_of(row)
