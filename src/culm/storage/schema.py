"""The tables, in SQLAlchemy Core. Migrations in ``migrations/versions`` create them.

Portable SQL only: dialect specifics (pragmas, BEGIN modes, upserts) live in ``dialect.py``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Dialect as SADialect
from sqlalchemy.types import TypeDecorator

from culm.domain.time import as_utc


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp stored in UTC and always read back timezone-aware."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: SADialect) -> datetime | None:
        if value is None:
            return None
        value = as_utc(value)
        # SQLite keeps text: store naive UTC so that text order is time order.
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: SADialect) -> datetime | None:
        return None if value is None else as_utc(value)


JSONType = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")

# How constraints and indexes are named in every table culm declares (the metrics' too): the
# migrations made them under these names.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)

sessions = sa.Table(
    "sessions",
    metadata,
    sa.Column("session_id", sa.String(36), primary_key=True),
    sa.Column("kind", sa.String(8), nullable=False),
    sa.Column("parent_session_id", sa.String(36), nullable=True, index=True),
    sa.Column("model", sa.String(200), nullable=False),
    sa.Column("system_prompt", sa.Text, nullable=True),
    sa.Column("tools", JSONType, nullable=False),
    sa.Column("workspace", sa.Text, nullable=False),
    sa.Column("metadata", JSONType, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False, index=True),
    # People in the loop (culm.input): approval patterns, input timeout (seconds) and its action.
    sa.Column("require_approval", JSONType, nullable=True),
    sa.Column("input_timeout", sa.Float, nullable=True),
    sa.Column("input_timeout_action", sa.String(8), nullable=False, server_default="deny"),
    sa.Column("agent", sa.String(100), nullable=True),
    sa.Column("max_rounds", sa.Integer, nullable=True),
    sa.Column("tool_timeout", sa.Float, nullable=True),
    sa.Column("max_cost_usd", sa.Float, nullable=True),
    sa.Column("max_tokens", sa.BigInteger, nullable=True),
)

messages = sa.Table(
    "messages",
    metadata,
    sa.Column(
        "session_id",
        sa.String(36),
        sa.ForeignKey("sessions.session_id", ondelete="CASCADE"),
        primary_key=True,
    ),
    sa.Column("idx", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("run_id", sa.String(36), nullable=True, index=True),
    sa.Column("role", sa.String(16), nullable=False),
    sa.Column("body", sa.Text, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
)

# Statuses that hold a session's one active-run slot (queued runs wait outside it); a run
# waiting for a person's answer holds it too.
ACTIVE_SLOT = sa.text("status IN ('pending', 'running', 'waiting') AND queued = false")
# A ready run: holds its slot, waits for a worker to claim it (the claim's index).
READY = sa.text("status = 'pending' AND queued = false AND owner IS NULL")
# A run some worker holds a lease on (the sweeper's index).
LEASED = sa.text("status IN ('pending', 'running') AND owner IS NOT NULL")

runs = sa.Table(
    "runs",
    metadata,
    sa.Column("run_id", sa.String(36), primary_key=True),
    sa.Column(
        "session_id",
        sa.String(36),
        sa.ForeignKey("sessions.session_id", ondelete="CASCADE"),
        nullable=False,
        index=True,
    ),
    sa.Column("parent_run_id", sa.String(36), nullable=True, index=True),
    sa.Column("status", sa.String(16), nullable=False, index=True),
    sa.Column("error", sa.Text, nullable=True),
    sa.Column("created_at", UTCDateTime, nullable=False, index=True),
    sa.Column("started_at", UTCDateTime, nullable=True),
    sa.Column("completed_at", UTCDateTime, nullable=True),
    sa.Column("round_count", sa.Integer, nullable=False, server_default="0"),
    sa.Column("last_tool_name", sa.String(200), nullable=True),
    sa.Column("last_tool_phase", sa.String(16), nullable=True),
    sa.Column("last_event_at", UTCDateTime, nullable=True),
    sa.Column("last_seq", sa.Integer, nullable=False, server_default="0"),
    sa.Column("usage", JSONType, nullable=True),
    sa.Column("model", sa.String(200), nullable=False),
    sa.Column("trigger", sa.String(16), nullable=False),
    sa.Column("attempt", sa.Integer, nullable=False, server_default="1"),
    sa.Column("input", sa.Text, nullable=False, server_default=""),
    sa.Column("queued", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("queue_order", sa.Float, nullable=True),
    sa.Column("owner", sa.String(200), nullable=True),
    sa.Column("lease_expires_at", UTCDateTime, nullable=True),
    sa.Column("cancel_requested", sa.Text, nullable=True),
    sa.Column("epoch", sa.Integer, nullable=False, server_default="0"),
    # The highest seq the run may have shown a client before storing it (pre-commit delivery):
    # recovery appends after it. See culm.domain.liveness.SEQ_RESERVE.
    sa.Column("seq_reserved", sa.Integer, nullable=False, server_default="0"),
    sa.Column("agent", sa.String(100), nullable=True, index=True),
    sa.Column("max_cost_usd", sa.Float, nullable=True),
    sa.Column("max_tokens", sa.BigInteger, nullable=True),
    sa.Column("traceparent", sa.String(64), nullable=True),
    sa.Index("ix_runs_ready", "created_at", sqlite_where=READY, postgresql_where=READY),
    sa.Index("ix_runs_leased", "lease_expires_at", sqlite_where=LEASED, postgresql_where=LEASED),
    sa.Index(
        "uq_runs_active_session",
        "session_id",
        unique=True,
        sqlite_where=ACTIVE_SLOT,
        postgresql_where=ACTIVE_SLOT,
    ),
)

run_events = sa.Table(
    "run_events",
    metadata,
    sa.Column("run_id", sa.String(36), primary_key=True),
    sa.Column("seq", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("type", sa.String(32), nullable=False),
    sa.Column("ts", UTCDateTime, nullable=False),
    sa.Column("body", sa.Text, nullable=False),
    # The run's epoch the event was written under (None: written unfenced, by the store).
    sa.Column("epoch", sa.Integer, nullable=True),
)

# Worker processes (``culm worker``, embedded ``culm serve``, ``culm run``): liveness and
# cumulative counters, written at each heartbeat (database time).
workers = sa.Table(
    "workers",
    metadata,
    sa.Column("worker_id", sa.String(200), primary_key=True),
    sa.Column("host", sa.String(255), nullable=False),
    sa.Column("pid", sa.Integer, nullable=False),
    sa.Column("boot_id", sa.Text, nullable=True),
    sa.Column("pid_namespace", sa.Text, nullable=True),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("concurrency", sa.Integer, nullable=False),
    sa.Column("started_at", UTCDateTime, nullable=False),
    sa.Column("last_heartbeat_at", UTCDateTime, nullable=False),
    sa.Column("stopped_at", UTCDateTime, nullable=True),
    sa.Column("active_runs", sa.Integer, nullable=False, server_default="0"),
    sa.Column("claims", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("takeovers", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("fenced_writes", sa.BigInteger, nullable=False, server_default="0"),
)

# A session's compactions (``culm.context``): each one is the model's view of the transcript as
# of it (the latest is current); the stored messages are never changed. ``summary`` stands for
# messages ``[0, summary_end)``; ``state`` holds the kept user turns and the elided outputs.
compactions = sa.Table(
    "compactions",
    metadata,
    sa.Column(
        "session_id",
        sa.String(36),
        sa.ForeignKey("sessions.session_id", ondelete="CASCADE"),
        primary_key=True,
    ),
    sa.Column("seq", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("run_id", sa.String(36), nullable=True),
    sa.Column("trigger", sa.String(16), nullable=False),
    sa.Column("strategy", sa.String(32), nullable=False),
    sa.Column("summary", sa.Text, nullable=True),
    sa.Column("summary_end", sa.Integer, nullable=False),
    sa.Column("message_count", sa.Integer, nullable=False),
    sa.Column("messages_compacted", sa.Integer, nullable=False),
    sa.Column("tokens_before", sa.Integer, nullable=False),
    sa.Column("tokens_after", sa.Integer, nullable=False),
    sa.Column("summary_model", sa.String(200), nullable=True),
    sa.Column("summary_usage", JSONType, nullable=False),
    sa.Column("state", JSONType, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
)

# Requests of runs for a person's input (culm.input): approvals of tool calls and ``ask_user``
# questions. ``status``: open | answered | expired | applied; ``answer`` as the person (or the
# timeout) gave it. ``expires_at`` (database time) is checked by the sweepers.
OPEN_REQUEST = sa.text("status = 'open'")

input_requests = sa.Table(
    "input_requests",
    metadata,
    sa.Column("request_id", sa.String(36), primary_key=True),
    sa.Column(
        "run_id",
        sa.String(36),
        sa.ForeignKey("runs.run_id", ondelete="CASCADE"),
        nullable=False,
        index=True,
    ),
    sa.Column("session_id", sa.String(36), nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("tool_call_id", sa.String(200), nullable=False),
    sa.Column("tool_name", sa.String(200), nullable=False),
    sa.Column("arguments", JSONType, nullable=True),
    sa.Column("question", sa.Text, nullable=True),
    sa.Column("choices", JSONType, nullable=True),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("answer", JSONType, nullable=True),
    sa.Column("outcome", sa.String(16), nullable=True),
    sa.Column("attempt", sa.Integer, nullable=False, server_default="1"),
    sa.Column("position", sa.Integer, nullable=False, server_default="0"),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("expires_at", UTCDateTime, nullable=True),
    sa.Column("answered_at", UTCDateTime, nullable=True),
    sa.Index(
        "ix_input_requests_expiring",
        "expires_at",
        sqlite_where=OPEN_REQUEST,
        postgresql_where=OPEN_REQUEST,
    ),
)

# Named agents defined through the API (culm.agents): code- and config-defined ones are not
# stored. ``definition`` is the agent's settings as JSON.
agents = sa.Table(
    "agents",
    metadata,
    sa.Column("name", sa.String(100), primary_key=True),
    sa.Column("definition", JSONType, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
)
