"""Metrics: sessions, rounds, tool calls, forward requests, system events, daily rollups.

The tables of ``culm.metrics.tables`` (a test compares the two). Written out here, not imported,
so this revision stays what it was when later ones change the tables.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op

from culm.storage.schema import UTCDateTime

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

USAGE_KINDS = (
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
)


def _tokens() -> list[sa.Column[Any]]:
    return [
        sa.Column(kind, sa.BigInteger, nullable=False, server_default="0") for kind in USAGE_KINDS
    ]


def _pk(table: str) -> sa.PrimaryKeyConstraint:
    return sa.PrimaryKeyConstraint(*_PKS[table], name=f"pk_{table}")


_PKS = {
    "metrics_sessions": ("run_id",),
    "metrics_rounds": ("round_id",),
    "metrics_tool_calls": ("session_id", "event_id"),
    "metrics_forward_requests": ("request_id",),
    "metrics_system_events": ("event_id",),
    "metrics_daily_models": ("day", "model"),
    "metrics_daily_runs": ("day", "model", "status"),
    "metrics_daily_tools": ("day", "tool_name"),
}


def upgrade() -> None:
    _sessions_and_rounds()
    _tool_calls_and_forward()
    _system_and_rollups()


def _sessions_and_rounds() -> None:
    op.create_table(
        "metrics_sessions",
        sa.Column("run_id", sa.String(64), nullable=False),
        sa.Column("session_id", sa.String(64), nullable=False),
        sa.Column("model", sa.String(200), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("started_at", UTCDateTime, nullable=True),
        sa.Column("completed_at", UTCDateTime, nullable=True),
        sa.Column("day", sa.Date, nullable=False),
        sa.Column("message_count", sa.Integer, nullable=False, server_default="0"),
        sa.Column("last_at", UTCDateTime, nullable=False),
        _pk("metrics_sessions"),
    )
    op.create_index("ix_metrics_sessions_session_id", "metrics_sessions", ["session_id"])
    op.create_index("ix_metrics_sessions_last_at", "metrics_sessions", ["last_at"])
    op.create_index("ix_metrics_sessions_day", "metrics_sessions", ["day", "session_id"])
    running = sa.text("status = 'running'")
    op.create_index(
        "ix_metrics_sessions_running",
        "metrics_sessions",
        ["session_id"],
        sqlite_where=running,
        postgresql_where=running,
    )
    op.create_table(
        "metrics_rounds",
        sa.Column("round_id", sa.String(128), nullable=False),
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
        _pk("metrics_rounds"),
    )
    open_ = sa.text("completed_at IS NULL")
    op.create_index(
        "ix_metrics_rounds_open",
        "metrics_rounds",
        ["run_id"],
        sqlite_where=open_,
        postgresql_where=open_,
    )
    op.create_index("ix_metrics_rounds_session_id", "metrics_rounds", ["session_id"])
    op.create_index("ix_metrics_rounds_day", "metrics_rounds", ["day"])


def _tool_calls_and_forward() -> None:
    op.create_table(
        "metrics_tool_calls",
        sa.Column("session_id", sa.String(64), nullable=False),
        sa.Column("event_id", sa.String(64), nullable=False),
        sa.Column("tool_call_id", sa.String(200), nullable=False),
        sa.Column("round_id", sa.String(128), nullable=False),
        sa.Column("run_id", sa.String(64), nullable=True),
        sa.Column("tool_name", sa.String(200), nullable=False),
        sa.Column("success", sa.Boolean, nullable=False),
        sa.Column("latency_ms", sa.BigInteger, nullable=False),
        sa.Column("occurred_at", UTCDateTime, nullable=False),
        sa.Column("day", sa.Date, nullable=False),
        _pk("metrics_tool_calls"),
        sqlite_with_rowid=False,
    )
    op.create_index(
        "ix_metrics_tool_calls_day_tool",
        "metrics_tool_calls",
        ["day", "tool_name", "latency_ms", "success"],
    )
    op.create_table(
        "metrics_forward_requests",
        sa.Column("request_id", sa.String(200), nullable=False),
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
        sa.Column("started_at", UTCDateTime, nullable=True),
        sa.Column("completed_at", UTCDateTime, nullable=True),
        sa.Column("day", sa.Date, nullable=False),
        _pk("metrics_forward_requests"),
    )
    op.create_index("ix_metrics_forward_requests_day", "metrics_forward_requests", ["day"])
    op.create_index(
        "ix_metrics_forward_requests_endpoint", "metrics_forward_requests", ["endpoint"]
    )


def _system_and_rollups() -> None:
    op.create_table(
        "metrics_system_events",
        sa.Column("event_id", sa.String(64), nullable=False),
        sa.Column("type", sa.String(32), nullable=False),
        sa.Column("occurred_at", UTCDateTime, nullable=False),
        sa.Column("day", sa.Date, nullable=False),
        sa.Column("count", sa.BigInteger, nullable=True),
        sa.Column("reason", sa.Text, nullable=True),
        sa.Column("error", sa.Text, nullable=True),
        sa.Column("event_type", sa.String(64), nullable=True),
        _pk("metrics_system_events"),
    )
    op.create_index("ix_metrics_system_events_day", "metrics_system_events", ["day"])
    op.create_index("ix_metrics_system_events_type", "metrics_system_events", ["type"])
    op.create_table(
        "metrics_daily_models",
        sa.Column("day", sa.Date, nullable=False),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("rounds", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("failed_rounds", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("partial_rounds", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("latency_ms", sa.BigInteger, nullable=False, server_default="0"),
        *_tokens(),
        _pk("metrics_daily_models"),
    )
    op.create_table(
        "metrics_daily_runs",
        sa.Column("day", sa.Date, nullable=False),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("runs", sa.BigInteger, nullable=False, server_default="0"),
        _pk("metrics_daily_runs"),
    )
    op.create_table(
        "metrics_daily_tools",
        sa.Column("day", sa.Date, nullable=False),
        sa.Column("tool_name", sa.String(200), nullable=False),
        sa.Column("calls", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("failures", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("latency_ms", sa.BigInteger, nullable=False, server_default="0"),
        _pk("metrics_daily_tools"),
    )


def downgrade() -> None:
    for table in reversed(_PKS):
        op.drop_table(table)
