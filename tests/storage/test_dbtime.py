"""The database's time as the store reads it: to the microsecond on SQLite too (its
``CURRENT_TIMESTAMP`` has whole seconds, and stamps a few milliseconds apart must differ), and
a statement's own time on PostgreSQL where the transaction's start would be too early."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from culm.storage import dbtime


def test_sqlite_time_is_read_with_sub_second_precision_and_as_utc() -> None:
    engine = sa.create_engine("sqlite://")
    with engine.connect() as conn:
        first = dbtime.read_now(conn, "sqlite")
        time.sleep(0.05)
        second = dbtime.read_now(conn, "sqlite")
        later = conn.scalar(sa.select(dbtime.later("sqlite", 90.0)))
        earlier = conn.scalar(sa.select(dbtime.later("sqlite", -90.0)))
    assert first.tzinfo is not None and first.utcoffset() == timedelta(0)
    assert abs(first - datetime.now(UTC)) < timedelta(minutes=1)
    assert first < second  # whole seconds would make them equal (unless a second ticked)
    assert later is not None and earlier is not None
    assert timedelta(seconds=179) < later - earlier < timedelta(seconds=181)


def test_sqlite_statement_time_is_its_time_now() -> None:
    engine = sa.create_engine("sqlite://")
    with engine.connect() as conn:
        before = dbtime.read_now(conn, "sqlite")
        time.sleep(0.05)
        stamp = conn.scalar(sa.select(dbtime.statement_now("sqlite")))
    assert stamp is not None and stamp.utcoffset() == timedelta(0)
    assert before < stamp < before + timedelta(minutes=1)


async def test_postgres_statement_time_is_when_the_statement_runs(postgres_head_url: str) -> None:
    """Not the transaction's start, as ``now()`` is: a stamp that must not precede what the
    statement saw committed."""

    def read(conn: sa.Connection) -> tuple[datetime, datetime, datetime]:
        start = dbtime.read_now(conn, "postgresql")
        time.sleep(0.05)
        stamp = conn.scalar(sa.select(dbtime.statement_now("postgresql")))
        assert stamp is not None
        return start, stamp, dbtime.read_now(conn, "postgresql")

    engine = create_async_engine(postgres_head_url)
    try:
        async with engine.begin() as conn:
            start, stamp, still = await conn.run_sync(read)
    finally:
        await engine.dispose()
    assert still == start  # now() is the transaction's start
    assert stamp.utcoffset() == timedelta(0)
    assert start + timedelta(milliseconds=40) < stamp < start + timedelta(minutes=1)
