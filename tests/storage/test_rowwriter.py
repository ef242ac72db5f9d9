"""Many rows per statement: every row lands, in order, whatever the count, and an upsert sees
the rows of its own statement one after another, as it would one statement per row."""

from __future__ import annotations

import time
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any

import pytest
import sqlalchemy as sa

from culm.storage.rowwriter import RowWriter, _chunks
from culm.storage.schema import UTCDateTime
from culm.storage.sql import SqlStore

metadata = sa.MetaData()
items = sa.Table(
    "rw_items",
    metadata,
    sa.Column("k", sa.Integer, primary_key=True),
    sa.Column("label", sa.String),
    sa.Column("hits", sa.Integer, nullable=False),
)


@pytest.mark.parametrize(("count", "width"), [(0, 3), (1, 3), (127, 3), (128, 3), (300, 3), (1000, 12), (5, 1000)])  # fmt: skip
def test_chunks_cover_every_row_within_the_parameter_limit(count: int, width: int) -> None:
    sizes = _chunks(count, width)
    assert sum(sizes) == count
    assert all(size == 1 or size * width <= 999 for size in sizes)
    assert len(set(sizes)) <= 8  # a handful of statement texts, kept prepared by the driver


@pytest.mark.parametrize("count", [1, 2, 129, 333])
async def test_every_row_is_inserted_once_in_order(store: SqlStore, count: int) -> None:
    rows = RowWriter(store.dialect.name)
    values = [(k, f"item {k}", k % 7) for k in range(count)]

    def transaction(conn: sa.Connection) -> list[tuple[int, str, int]]:
        metadata.create_all(conn)
        rows.prepare_values(items.insert(), ("k", "label", "hits"), values).execute(conn)
        stored = conn.execute(sa.select(items).order_by(items.c.k)).all()
        metadata.drop_all(conn)
        return [tuple(row) for row in stored]

    assert await store.write(transaction) == values


async def test_an_upsert_sees_the_rows_before_it_in_the_same_statement(store: SqlStore) -> None:
    insert = (
        sa.dialects.sqlite.insert(items)
        if store.dialect.name == "sqlite"
        else sa.dialects.postgresql.insert(items)
    )
    upsert = insert.on_conflict_do_update(
        index_elements=[items.c.k], set_={"hits": items.c.hits + insert.excluded.hits}
    )
    rows = RowWriter(store.dialect.name)
    # 200 rows for 3 keys: SQLite gets them as statements of many rows each.
    values = [{"k": i % 3, "label": "x", "hits": 1} for i in range(200)]

    def transaction(conn: sa.Connection) -> list[tuple[int, int]]:
        metadata.create_all(conn)
        rows.execute(conn, upsert, values)
        stored = conn.execute(sa.select(items.c.k, items.c.hits).order_by(items.c.k)).all()
        metadata.drop_all(conn)
        return [tuple(row) for row in stored]

    assert await store.write(transaction) == [(0, 67), (1, 67), (2, 66)]


def test_columns_out_of_the_statement_s_order_are_refused() -> None:
    with pytest.raises(ValueError, match="statement's order"):
        RowWriter("sqlite").prepare_values(items.insert(), ("label", "k", "hits"), [("x", 1, 0)])


class Lowered(sa.types.TypeDecorator[str]):
    """A column whose placeholder is wrapped in SQL: ``lower(?)``."""

    impl = sa.String
    cache_ok = True

    def bind_expression(self, bindvalue: Any) -> Any:
        return sa.func.lower(bindvalue)


async def test_a_row_that_is_not_plain_placeholders_goes_one_row_per_statement(
    sqlite_store: SqlStore,
) -> None:
    table = sa.Table(
        "rw_lowered",
        sa.MetaData(),
        sa.Column("k", sa.Integer, primary_key=True),
        sa.Column("name", Lowered),
    )
    rows = RowWriter("sqlite")

    def transaction(conn: sa.Connection) -> list[tuple[int, str]]:
        table.create(conn)
        rows.prepare_values(table.insert(), ("k", "name"), [(k, f"N{k}") for k in range(300)]).execute(conn)  # fmt: skip
        stored = conn.execute(sa.select(table).order_by(table.c.k)).all()
        table.drop(conn)
        return [tuple(row) for row in stored]

    assert await sqlite_store.write(transaction) == [(k, f"n{k}") for k in range(300)]


async def test_a_violated_constraint_raises_as_sqlalchemy_would(sqlite_store: SqlStore) -> None:
    rows = RowWriter("sqlite")

    def transaction(conn: sa.Connection) -> None:
        metadata.create_all(conn)
        try:
            rows.prepare_values(items.insert(), ("k", "label", "hits"), [(1, "a", 0)] * 2).execute(conn)  # fmt: skip
        finally:
            metadata.drop_all(conn)

    with pytest.raises(sa.exc.IntegrityError, match="UNIQUE constraint failed"):
        await sqlite_store.write(transaction)


typed = [
    sa.Table(
        name,
        metadata,
        sa.Column("k", sa.Integer, primary_key=True),
        sa.Column("at", UTCDateTime, nullable=True),
        sa.Column("day", sa.Date, nullable=True),
        sa.Column("flag", sa.Boolean, nullable=True),
    )
    for name in ("rw_typed_fast", "rw_typed_plain")
]


async def test_sqlite_values_are_stored_as_sqlalchemy_stores_them(
    sqlite_store: SqlStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Timestamps of any zone (and naive ones, which mean UTC), dates, booleans and NULLs: the
    same text and numbers as SQLAlchemy's own inserts, whatever the machine's zone."""
    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    at = datetime(2026, 3, 8, 6, 30, 15, 120, tzinfo=UTC)
    rows = [
        {"k": 1, "at": at, "day": date(2026, 3, 8), "flag": True},
        {"k": 2, "at": at.astimezone(timezone(timedelta(hours=2))), "day": None, "flag": False},
        {"k": 3, "at": at.replace(tzinfo=None), "day": date(1999, 12, 31), "flag": None},
        {"k": 4, "at": None, "day": None, "flag": True},
        {"k": 5, "at": at.replace(microsecond=0), "day": None, "flag": None},
    ]
    fast, plain = typed
    writer = RowWriter("sqlite")

    def transaction(conn: sa.Connection) -> list[list[tuple[Any, ...]]]:
        metadata.create_all(conn, tables=typed)
        writer.execute(conn, fast.insert(), rows)
        conn.execute(plain.insert(), rows)
        stored = [
            [tuple(row) for row in conn.execute(sa.text(f"SELECT * FROM {t.name} ORDER BY k"))]
            for t in typed
        ]
        metadata.drop_all(conn, tables=typed)
        return stored

    try:
        fast_rows, plain_rows = await sqlite_store.write(transaction)
    finally:
        monkeypatch.undo()
        time.tzset()
    assert fast_rows == plain_rows
    assert fast_rows[1][1] == fast_rows[0][1] == "2026-03-08 06:30:15.000120"
