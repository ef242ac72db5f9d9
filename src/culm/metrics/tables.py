"""The metrics tables, in SQLAlchemy Core (created by ``storage/migrations/versions/0002_metrics``).

They live in the engine's database, next to its own tables. Times are UTC; ``day`` is the UTC
date a record counts for (a round's completion, a session's start, a tool call's end), so date
ranges and daily rollups need no date functions of the database.

- ``metrics_sessions``: one row per seed *session*, which in culm is one run of a session (the
  run's ``run_id`` is the events' ``trace_id``, and the key).
- ``metrics_rounds``: one row per round, keyed ``round_id``; usage per kind as reported.
- ``metrics_tool_calls``, ``metrics_forward_requests``, ``metrics_system_events``.
- ``metrics_daily_models``, ``metrics_daily_runs`` (runs by start day, model and current status),
  ``metrics_daily_tools``: per-day rollups, kept exact in the same transaction as the rows they
  sum, so the summary and daily queries never scan the rows.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Dialect as SADialect
from sqlalchemy.types import TypeDecorator

from culm.storage.schema import NAMING_CONVENTION

USAGE_KINDS = (
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
)


class UTCDateTime(TypeDecorator[datetime]):
    """A UTC timestamp, read back timezone-aware (naive UTC text on SQLite, so text order is time
    order). The same as the engine store's type; metrics depends on the domain only."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: SADialect) -> datetime | None:
        if value is None:
            return None
        value = value.astimezone(UTC) if value.tzinfo else value
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: SADialect) -> datetime | None:
        if not isinstance(value, datetime):
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)

RUNNING = sa.text("status = 'running'")
OPEN = sa.text("completed_at IS NULL")


def _tokens() -> list[sa.Column[Any]]:
    return [
        sa.Column(kind, sa.BigInteger, nullable=False, server_default="0") for kind in USAGE_KINDS
    ]


sessions = sa.Table(
    "metrics_sessions",
    metadata,
    sa.Column("run_id", sa.String(64), primary_key=True),
    sa.Column("session_id", sa.String(64), nullable=False),
    sa.Column("model", sa.String(200), nullable=True),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("started_at", UTCDateTime, nullable=True),
    sa.Column("completed_at", UTCDateTime, nullable=True),
    sa.Column("day", sa.Date, nullable=False),
    sa.Column("message_count", sa.Integer, nullable=False, server_default="0"),
    sa.Column("last_at", UTCDateTime, nullable=False),  # the run's latest event
    sa.Index("ix_metrics_sessions_session_id", "session_id"),
    sa.Index("ix_metrics_sessions_last_at", "last_at"),
    sa.Index("ix_metrics_sessions_day", "day", "session_id"),
    # Small: only runs in progress (active sessions, reconciling).
    sa.Index(
        "ix_metrics_sessions_running",
        "session_id",
        sqlite_where=RUNNING,
        postgresql_where=RUNNING,
    ),
)

rounds = sa.Table(
    "metrics_rounds",
    metadata,
    sa.Column("round_id", sa.String(128), primary_key=True),
    sa.Column("run_id", sa.String(64), nullable=True),
    sa.Column("session_id", sa.String(64), nullable=False),
    sa.Column("model", sa.String(200), nullable=True),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("partial", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("error", sa.Text, nullable=True),
    sa.Column("started_at", UTCDateTime, nullable=True),
    sa.Column("completed_at", UTCDateTime, nullable=True),
    sa.Column("day", sa.Date, nullable=True),
    sa.Column("latency_ms", sa.BigInteger, nullable=True),
    *_tokens(),
    # Small: only open rounds (closed when their run ends).
    sa.Index("ix_metrics_rounds_open", "run_id", sqlite_where=OPEN, postgresql_where=OPEN),
    sa.Index("ix_metrics_rounds_session_id", "session_id"),
    sa.Index("ix_metrics_rounds_day", "day"),
)

# Clustered by session (SQLite: WITHOUT ROWID), so a tool call costs one tree and a session's
# calls are read in one range; the event id makes each call unique.
tool_calls = sa.Table(
    "metrics_tool_calls",
    metadata,
    sa.Column("session_id", sa.String(64), primary_key=True),
    sa.Column("event_id", sa.String(64), primary_key=True),
    sa.Column("tool_call_id", sa.String(200), nullable=False),
    sa.Column("round_id", sa.String(128), nullable=False),
    sa.Column("run_id", sa.String(64), nullable=True),
    sa.Column("tool_name", sa.String(200), nullable=False),
    sa.Column("success", sa.Boolean, nullable=False),
    sa.Column("cancelled", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("latency_ms", sa.BigInteger, nullable=False),
    sa.Column("occurred_at", UTCDateTime, nullable=False),
    sa.Column("day", sa.Date, nullable=False),
    # Covers the per-tool queries (counts, failures, latency percentiles by date range).
    sa.Index("ix_metrics_tool_calls_day_tool", "day", "tool_name", "latency_ms", "success"),
    sqlite_with_rowid=False,
)

forward_requests = sa.Table(
    "metrics_forward_requests",
    metadata,
    sa.Column("request_id", sa.String(200), primary_key=True),
    sa.Column("trace_id", sa.String(200), nullable=True),
    sa.Column("endpoint", sa.String(200), nullable=True),
    sa.Column("model", sa.String(200), nullable=True),
    sa.Column("is_stream", sa.Boolean, nullable=True),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("status_code", sa.Integer, nullable=True),
    sa.Column("has_usage", sa.Boolean, nullable=False, server_default=sa.false()),
    *_tokens(),
    sa.Column("latency_ms", sa.BigInteger, nullable=True),
    sa.Column("error", sa.Text, nullable=True),
    sa.Column("partial", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("started_at", UTCDateTime, nullable=True),
    sa.Column("completed_at", UTCDateTime, nullable=True),
    sa.Column("day", sa.Date, nullable=False),
    sa.Index("ix_metrics_forward_requests_day", "day"),
    sa.Index("ix_metrics_forward_requests_endpoint", "endpoint"),
    sa.Index("ix_metrics_forward_requests_trace_id", "trace_id"),
)

system_events = sa.Table(
    "metrics_system_events",
    metadata,
    sa.Column("event_id", sa.String(64), primary_key=True),
    sa.Column("type", sa.String(32), nullable=False),
    sa.Column("occurred_at", UTCDateTime, nullable=False),
    sa.Column("day", sa.Date, nullable=False),
    sa.Column("count", sa.BigInteger, nullable=True),
    sa.Column("reason", sa.Text, nullable=True),
    sa.Column("error", sa.Text, nullable=True),
    sa.Column("event_type", sa.String(64), nullable=True),
    sa.Index("ix_metrics_system_events_day", "day"),
    sa.Index("ix_metrics_system_events_type", "type"),
)

daily_models = sa.Table(
    "metrics_daily_models",
    metadata,
    sa.Column("day", sa.Date, primary_key=True),
    sa.Column("model", sa.String(200), primary_key=True),
    sa.Column("rounds", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("failed_rounds", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("partial_rounds", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("latency_ms", sa.BigInteger, nullable=False, server_default="0"),
    *_tokens(),
)

daily_runs = sa.Table(
    "metrics_daily_runs",
    metadata,
    sa.Column("day", sa.Date, primary_key=True),
    sa.Column("model", sa.String(200), primary_key=True),
    sa.Column("status", sa.String(16), primary_key=True),
    sa.Column("runs", sa.BigInteger, nullable=False, server_default="0"),
)

daily_tools = sa.Table(
    "metrics_daily_tools",
    metadata,
    sa.Column("day", sa.Date, primary_key=True),
    sa.Column("tool_name", sa.String(200), primary_key=True),
    sa.Column("calls", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("failures", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("latency_ms", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("cancelled", sa.BigInteger, nullable=False, server_default="0"),
)

ALL_TABLES = (
    sessions,
    rounds,
    tool_calls,
    forward_requests,
    system_events,
    daily_models,
    daily_runs,
    daily_tools,
)
