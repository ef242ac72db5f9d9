"""Many rows through one statement, cheaply.

Most of the CPU a batch of rows costs (a batch of run events, of metrics) was SQLAlchemy's
per-row parameter processing. On SQLite :class:`RowWriter` hands the driver tuples of plain
values instead: the SQL is still SQLAlchemy's (compiled once per statement and set of columns),
and values are converted the way SQLAlchemy's SQLite types store them — timestamps as naive UTC
text with microseconds, dates as ISO text, booleans as 0/1 — so what it writes reads back,
sorts and compares exactly like the rest. Other databases get ``conn.execute(statement, rows)``
(asyncpg is fast at it already). It runs inside a write transaction (see ``SqlStore.write``).
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.sql.dml import Insert

Row = dict[str, Any]
Convert = Callable[[Any], Any]


@dataclass(frozen=True, slots=True)
class _Plan:
    sql: str
    values: Callable[[Row], tuple[Any, ...]]  # the row's values, in the statement's order
    conversions: tuple[tuple[int, Convert], ...]  # the positions whose values need converting

    def parameters(self, row: Row) -> tuple[Any, ...]:
        values = self.values(row)
        if not self.conversions:
            return values
        converted = list(values)
        for position, convert in self.conversions:
            converted[position] = convert(converted[position])
        return tuple(converted)


class RowWriter:
    def __init__(self, dialect: str) -> None:
        self._plain = dialect != "sqlite"
        self._plans: dict[tuple[int, tuple[str, ...]], _Plan] = {}

    def execute(self, conn: sa.Connection, statement: Insert, rows: Sequence[Row]) -> None:
        """Execute ``statement`` once per row (every row has the same keys)."""
        if not rows:
            return
        if self._plain:
            conn.execute(statement, list(rows))
            return
        plan = self._plan(conn, statement, tuple(rows[0]))
        conn.exec_driver_sql(plan.sql, [plan.parameters(row) for row in rows])

    def _plan(self, conn: sa.Connection, statement: Insert, keys: tuple[str, ...]) -> _Plan:
        key = (id(statement), keys)
        plan = self._plans.get(key)
        if plan is None:
            compiled = statement.compile(dialect=conn.dialect, column_keys=list(keys))
            names = compiled.positiontup or []
            table = statement.table
            assert isinstance(table, sa.Table)
            converters = [_converter(table.c[name].type) for name in names]
            plan = self._plans[key] = _Plan(
                sql=compiled.string,
                values=_getter(names),
                conversions=tuple((i, f) for i, f in enumerate(converters) if f is not None),
            )
        return plan


def _getter(names: Sequence[str]) -> Callable[[Row], tuple[Any, ...]]:
    if len(names) == 1:
        (name,) = names
        return lambda row: (row[name],)
    return operator.itemgetter(*names)


def _converter(column_type: Any) -> Convert | None:
    if isinstance(column_type, sa.types.TypeDecorator):
        column_type = column_type.impl
    if isinstance(column_type, sa.DateTime):
        return _timestamp
    if isinstance(column_type, sa.Date):
        return _date
    if isinstance(column_type, sa.Boolean):
        return _boolean
    return None


def _timestamp(value: datetime | None) -> str | None:
    if value is None:
        return None
    if value.tzinfo is not UTC:
        if value.tzinfo is not None:
            value = value.astimezone(UTC)
        value = value.replace(tzinfo=UTC)
    return value.isoformat(sep=" ", timespec="microseconds")[:26]  # without "+00:00"


def _date(value: date | None) -> str | None:
    return None if value is None else value.isoformat()


def _boolean(value: bool | None) -> int | None:
    return None if value is None else int(value)
