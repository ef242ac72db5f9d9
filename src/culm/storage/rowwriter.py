"""Many rows through one statement, cheaply.

Most of the CPU a batch of rows costs (a batch of run events, of metrics) was SQLAlchemy's
per-row parameter processing. On SQLite :class:`RowWriter` hands the driver tuples of plain
values instead: the SQL is still SQLAlchemy's (compiled once per statement and set of columns),
and values are converted the way SQLAlchemy's SQLite types store them — timestamps as naive UTC
text with microseconds, dates as ISO text, booleans as 0/1 — so what it writes reads back,
sorts and compares exactly like the rest. Other databases get ``conn.execute(statement, rows)``
(asyncpg is fast at it already). It runs inside a write transaction (see ``SqlStore.write``).

The hottest statements other than inserts (an event batch's fence check and liveness update)
take the same road on SQLite through :meth:`RowWriter.fetch` and :meth:`RowWriter.execute_many`:
SQLAlchemy's SQL, compiled once, run on the driver's cursor.
"""

from __future__ import annotations

import operator
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import sqlite
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.dml import Insert

from culm.domain.text import storable_parameters

Row = dict[str, Any]
Convert = Callable[[Any], Any]


# Rows per statement: at most 128, and at most 999 parameters (SQLite's smallest limit).
_MAX_ROWS = 128
_MAX_PARAMETERS = 999


def _chunks(count: int, width: int) -> list[int]:
    """``count`` rows of ``width`` values as full statements, then statements of powers of two
    for the rest, so that a handful of statement texts serve every count (the driver keeps
    them prepared)."""
    most = _MAX_ROWS
    while most > 1 and most * width > _MAX_PARAMETERS:
        most //= 2
    sizes = [most] * (count // most)
    rest = count % most
    while rest:
        most //= 2
        if rest >= most:
            sizes.append(most)
            rest -= most
    return sizes


@dataclass(slots=True)
class _Plan:
    sql: str  # for one row
    names: tuple[str, ...]  # the columns, in the statement's order
    values: Callable[[Row], tuple[Any, ...]]  # a row's values, in that order
    conversions: tuple[tuple[int, Convert], ...]  # the positions whose values need converting
    # The SQL around its one row of placeholders, when that row is plain ``(?, ?, …)`` and no
    # other placeholder follows, so that repeating it makes a statement of many rows; else None.
    split: tuple[str, str, str] | None
    _multi: dict[int, str] = field(default_factory=dict)  # the statement for n rows

    def sizes(self, count: int) -> list[int]:
        """How many rows each statement takes (one each unless the SQL can be repeated)."""
        return _chunks(count, len(self.names)) if self.split is not None else [1] * count

    def sql_for(self, rows: int) -> str:
        if rows == 1:
            return self.sql
        sql = self._multi.get(rows)
        if sql is None:
            assert self.split is not None
            head, row, tail = self.split
            sql = self._multi[rows] = f"{head} VALUES {', '.join([row] * rows)}{tail}"
        return sql

    def parameters(self, values: tuple[Any, ...]) -> tuple[Any, ...]:
        """``values`` (in the statement's order) as the driver takes them."""
        return _converted(values, self.conversions)


class Prepared:
    """Rows made ready for one statement, before the write transaction (on any thread):
    :meth:`execute` then only hands them to the driver."""

    __slots__ = ("_plan", "_rows", "_statement")

    def __init__(self, statement: Insert, plan: _Plan | None, rows: list[Any]) -> None:
        self._statement = statement
        self._plan = plan  # None: not SQLite, the rows are dicts for SQLAlchemy
        self._rows = rows

    def execute(self, conn: sa.Connection) -> None:
        if not self._rows:
            return
        plan = self._plan
        if plan is None:
            conn.execute(self._statement, self._rows)
            return
        # Many rows per statement: each statement is one step of the driver, which lets go of
        # the GIL and must take it back, a wait of up to a switch interval when the event loop
        # is busy. A row per statement made the writer thread crawl under load.
        rows = self._rows
        cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
        sql = plan.sql
        try:
            start = 0
            for size in plan.sizes(len(rows)):
                sql = plan.sql_for(size)
                values = [value for row in rows[start : start + size] for value in row]
                try:
                    cursor.execute(sql, values)
                except UnicodeEncodeError:  # a lone surrogate (see culm.domain.text): U+FFFD
                    cursor.execute(sql, storable_parameters(values))
                start += size
        except sqlite3.Error as exc:  # as SQLAlchemy would raise it (IntegrityError …)
            raise sa.exc.DBAPIError.instance(sql, None, exc, sqlite3.Error) from exc
        finally:
            cursor.close()


class RowWriter:
    def __init__(self, dialect: str) -> None:
        self._sqlite = sqlite.pysqlite.dialect() if dialect == "sqlite" else None
        self._plans: dict[tuple[int, tuple[str, ...]], _Plan] = {}
        self._statements: dict[int, _Statement] = {}

    @property
    def direct(self) -> bool:
        """True on SQLite: :meth:`fetch` and :meth:`execute_many` may be used."""
        return self._sqlite is not None

    def fetch(
        self, conn: sa.Connection, statement: sa.ClauseElement, parameters: Row
    ) -> list[tuple[Any, ...]]:
        """SQLite only: the rows ``statement`` (its SQL compiled once, positional, no
        expanding parameters) returns for ``parameters``, straight from the driver's cursor.
        SQLAlchemy's own execution compiles nothing either (its cache), but still costs ~50 µs
        a statement in parameter processing and result set-up: more than SQLite takes to run
        a point query. The rows are plain tuples, the values as the driver returns them."""
        plan = self._statement(statement)
        return _run(conn, plan.sql, [plan.parameters(parameters)], many=False)

    def execute_many(
        self, conn: sa.Connection, statement: sa.ClauseElement, rows: Sequence[Row]
    ) -> None:
        """SQLite only: ``statement`` (an UPDATE or DELETE) once per row, straight to the
        driver (its ``executemany``), values converted as :meth:`prepare` does."""
        if rows:
            plan = self._statement(statement)
            _run(conn, plan.sql, [plan.parameters(row) for row in rows], many=True)

    def _statement(self, statement: sa.ClauseElement) -> _Statement:
        found = self._statements.get(id(statement))
        if found is None:
            compiled = statement.compile(dialect=self._sqlite)
            assert isinstance(compiled, SQLCompiler)
            names = tuple(compiled.positiontup or ())
            converters = [_converter(compiled.binds[name].type) for name in names]
            found = self._statements[id(statement)] = _Statement(
                compiled.string,
                _getter(names) if names else (lambda row: ()),
                tuple((i, f) for i, f in enumerate(converters) if f is not None),
                statement,  # kept: its id() is the key
            )
        return found

    def execute(self, conn: sa.Connection, statement: Insert, rows: Sequence[Row]) -> None:
        """Insert ``rows`` with ``statement`` (every row has the same keys)."""
        self.prepare(statement, rows).execute(conn)

    def prepare(self, statement: Insert, rows: Sequence[Row]) -> Prepared:
        if not rows or self._sqlite is None:
            return Prepared(statement, None, list(rows))
        plan = self._plan(statement, tuple(rows[0]))
        values = plan.values
        return Prepared(statement, plan, [plan.parameters(values(row)) for row in rows])

    def prepare_values(
        self, statement: Insert, columns: tuple[str, ...], rows: Sequence[tuple[Any, ...]]
    ) -> Prepared:
        """Rows given as tuples of the values of ``columns``, in that order (no dict per row,
        for the hottest inserts)."""
        if self._sqlite is None:
            dicts = [dict(zip(columns, row, strict=True)) for row in rows]
            return Prepared(statement, None, dicts)
        plan = self._plan(statement, columns)
        if plan.names != columns:
            raise ValueError(f"columns {columns} are not in the statement's order {plan.names}")
        return Prepared(statement, plan, [plan.parameters(row) for row in rows])

    def _plan(self, statement: Insert, keys: tuple[str, ...]) -> _Plan:
        key = (id(statement), keys)
        plan = self._plans.get(key)
        if plan is None:
            compiled = statement.compile(dialect=self._sqlite, column_keys=list(keys))
            names = tuple(compiled.positiontup or ())
            table = statement.table
            assert isinstance(table, sa.Table)
            converters = [_converter(table.c[name].type) for name in names]
            plan = self._plans[key] = _Plan(
                sql=compiled.string,
                names=names,
                split=_split(compiled.string, len(names)),
                values=_getter(names),
                conversions=tuple((i, f) for i, f in enumerate(converters) if f is not None),
            )
        return plan


@dataclass(slots=True)
class _Statement:
    """A statement compiled once for SQLite: its SQL and how a row of named parameters becomes
    the driver's tuple."""

    sql: str
    values: Callable[[Row], tuple[Any, ...]]
    conversions: tuple[tuple[int, Convert], ...]
    statement: sa.ClauseElement

    def parameters(self, row: Row) -> tuple[Any, ...]:
        return _converted(self.values(row), self.conversions)


def _converted(
    values: tuple[Any, ...], conversions: tuple[tuple[int, Convert], ...]
) -> tuple[Any, ...]:
    """``values`` with the value at each position of ``conversions`` converted."""
    if not conversions:
        return values
    converted = list(values)
    for position, convert in conversions:
        converted[position] = convert(converted[position])
    return tuple(converted)


def _run(
    conn: sa.Connection, sql: str, parameters: list[tuple[Any, ...]], *, many: bool
) -> list[tuple[Any, ...]]:
    """``sql`` on the connection's driver cursor; strings made storable (as every write through
    SQLAlchemy is, see ``culm.storage.dialect``) and errors raised as SQLAlchemy raises them."""
    parameters = storable_parameters(parameters)
    cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
    try:
        if many:
            cursor.executemany(sql, parameters)
            return []
        cursor.execute(sql, parameters[0])
        found: list[tuple[Any, ...]] = cursor.fetchall()
        return found
    except sqlite3.Error as exc:
        raise sa.exc.DBAPIError.instance(sql, None, exc, sqlite3.Error) from exc
    finally:
        cursor.close()


def _split(sql: str, width: int) -> tuple[str, str, str] | None:
    head, _, values = sql.partition(" VALUES ")
    row = "(" + ", ".join("?" * width) + ")"
    if not values.startswith(row) or "?" in values[len(row) :]:
        return None
    return head, row, values[len(row) :]  # the rest: "", or ON CONFLICT …


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
