"""Database time: leases, heartbeats and the times the store stamps are the database's ``now``,
never a host clock (hosts' clocks differ; the database's is one for everyone).

PostgreSQL: ``now()`` (the transaction's start; store transactions are short). SQLite: its own
``'now'`` (the same host anyway), rendered in the text format SQLAlchemy stores timestamps in
(``YYYY-MM-DD HH:MM:SS.ffffff``, naive UTC) so that text order stays time order.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import sqlalchemy as sa

from culm.storage.schema import UTCDateTime

# SQLite's %f is seconds with milliseconds ("SS.SSS"): three more digits make microseconds.
_SQLITE_FORMAT = "%Y-%m-%d %H:%M:%f"


def now(dialect: str) -> sa.ColumnElement[datetime]:
    """The database's current time, as a SQL expression of the timestamp type."""
    return later(dialect, 0.0)


def statement_now(dialect: str) -> sa.ColumnElement[datetime]:
    """The database's time when the statement runs (PostgreSQL's ``clock_timestamp()``, not
    the transaction's start): for a stamp that must not precede what the statement saw
    committed, such as a claimed run's start after the end of the run it queued behind."""
    if dialect == "sqlite":
        return now(dialect)  # one writer at a time: its transaction starts when it writes
    return sa.type_coerce(sa.func.clock_timestamp(), UTCDateTime)


def later(dialect: str, seconds: float) -> sa.ColumnElement[datetime]:
    """The database's current time plus ``seconds`` (may be negative)."""
    if dialect == "sqlite":
        text = sa.func.strftime(_SQLITE_FORMAT, "now", f"{seconds:+.6f} seconds").op("||")("000")
        return sa.type_coerce(text, UTCDateTime)
    moment: sa.ColumnElement[datetime] = sa.func.now()
    if seconds:
        moment = moment + sa.literal(timedelta(seconds=seconds), sa.Interval)
    return sa.type_coerce(moment, UTCDateTime)


def read_now(conn: sa.Connection, dialect: str) -> datetime:
    """The database's current time, read (for the timestamps of events the store writes)."""
    value: datetime | None = conn.scalar(sa.select(now(dialect)))
    assert value is not None
    return value
