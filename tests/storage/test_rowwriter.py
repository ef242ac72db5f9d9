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


@pytest.mark.parametrize(
    ("count", "width", "sizes"),
    [(1000, 12, [64] * 15 + [32, 8]), (300, 3, [128, 128, 32, 8, 4]), (3, 500, [1, 1, 1])],
)
def test_chunks_are_full_statements_then_powers_of_two(
    count: int, width: int, sizes: list[int]
) -> None:
    """The most rows (a power of two) that fit 999 parameters, then the rest in powers of two:
    the same few statement texts for every count."""
    assert _chunks(count, width) == sizes


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

    with pytest.raises(sa.exc.IntegrityError, match="UNIQUE constraint failed") as raised:
        await sqlite_store.write(transaction)
    assert (
        raised.value.statement
        == "INSERT INTO rw_items (k, label, hits) VALUES (?, ?, ?), (?, ?, ?)"
    )


async def test_a_violation_on_the_direct_road_raises_as_sqlalchemy_would(
    sqlite_store: SqlStore,
) -> None:
    rows = RowWriter("sqlite")
    renumber = items.update().where(items.c.k == sa.bindparam("old")).values(k=sa.bindparam("new"))

    def transaction(conn: sa.Connection) -> None:
        metadata.create_all(conn)
        try:
            conn.execute(items.insert(), [{"k": 1, "hits": 0}, {"k": 2, "hits": 0}])
            rows.execute_many(conn, renumber, [{"old": 1, "new": 2}])
        finally:
            metadata.drop_all(conn)

    with pytest.raises(sa.exc.IntegrityError, match="UNIQUE constraint failed") as raised:
        await sqlite_store.write(transaction)
    assert raised.value.statement == "UPDATE rw_items SET k=? WHERE rw_items.k = ?"


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


async def test_execute_many_runs_its_statement_once_per_row_with_converted_values(
    sqlite_store: SqlStore,
) -> None:
    """SQLite's direct road for updates (the liveness of many runs): every row's update lands,
    its timestamps and booleans as SQLAlchemy writes them, and ``fetch`` reads back through the
    same compiled statement."""
    fast, _ = typed
    at = datetime(2026, 3, 8, 6, 30, 15, 120, tzinfo=UTC)
    update = (
        fast.update()
        .where(fast.c.k == sa.bindparam("b_k"))
        .values(
            at=sa.bindparam("b_at", type_=UTCDateTime),
            flag=sa.bindparam("b_flag", type_=sa.Boolean),
        )
    )
    lookup = sa.select(fast.c.k, fast.c.at, fast.c.flag).where(fast.c.k >= sa.bindparam("low"))
    writer = RowWriter("sqlite")

    def transaction(conn: sa.Connection) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
        metadata.create_all(conn, tables=[fast])
        conn.execute(fast.insert(), [{"k": k, "at": None, "flag": None} for k in (1, 2, 3)])
        writer.execute_many(conn, update, [])  # nothing to do: no statement
        writer.execute_many(
            conn,
            update,
            [
                {"b_k": 1, "b_at": at, "b_flag": True},
                {"b_k": 3, "b_at": at + timedelta(seconds=1), "b_flag": False},
            ],
        )
        found = writer.fetch(conn, lookup.order_by(fast.c.k), {"low": 2})
        stored = [tuple(row) for row in conn.execute(sa.text("SELECT * FROM rw_typed_fast ORDER BY k"))]  # fmt: skip
        metadata.drop_all(conn, tables=[fast])
        return found, stored

    found, stored = await sqlite_store.write(transaction)
    assert stored == [
        (1, "2026-03-08 06:30:15.000120", None, 1),
        (2, None, None, None),
        (3, "2026-03-08 06:30:16.000120", None, 0),
    ]
    assert found == [(2, None, None), (3, "2026-03-08 06:30:16.000120", 0)]


async def test_fetch_compiles_each_statement_it_is_given_even_once_freed(
    sqlite_store: SqlStore,
) -> None:
    """Compiled statements are found by ``id()``: the writer keeps each statement, so that a
    new one made after an old one is freed (often at the same address) is never taken for it.
    The statements have no parameters at all."""
    writer = RowWriter("sqlite")

    def transaction(conn: sa.Connection) -> list[list[tuple[Any, ...]]]:
        found = []
        for i in range(50):
            # The statement is freed as soon as the call returns, unless the writer keeps it.
            found.append(writer.fetch(conn, sa.select(sa.literal_column(str(i))), {}))
        return found

    assert await sqlite_store.write(transaction) == [[(i,)] for i in range(50)]
