"""Engine core: sessions, messages, runs, run events.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from culm.storage.schema import JSONType, UTCDateTime

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

ACTIVE_SLOT = sa.text("status IN ('pending', 'running') AND queued = false")


def upgrade() -> None:
    op.create_table(
        "sessions",
        sa.Column("session_id", sa.String(36), primary_key=True),
        sa.Column("kind", sa.String(8), nullable=False),
        sa.Column("parent_session_id", sa.String(36), nullable=True),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("system_prompt", sa.Text, nullable=True),
        sa.Column("tools", JSONType, nullable=False),
        sa.Column("workspace", sa.Text, nullable=False),
        sa.Column("metadata", JSONType, nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
    )
    op.create_index("ix_sessions_parent_session_id", "sessions", ["parent_session_id"])
    op.create_index("ix_sessions_created_at", "sessions", ["created_at"])
    op.create_table(
        "messages",
        sa.Column("session_id", sa.String(36), nullable=False),
        sa.Column("idx", sa.Integer, nullable=False, autoincrement=False),
        sa.Column("run_id", sa.String(36), nullable=True),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("body", sa.Text, nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.PrimaryKeyConstraint("session_id", "idx", name="pk_messages"),
        sa.ForeignKeyConstraint(
            ["session_id"],
            ["sessions.session_id"],
            name="fk_messages_session_id_sessions",
            ondelete="CASCADE",
        ),
    )
    op.create_index("ix_messages_run_id", "messages", ["run_id"])
    op.create_table(
        "runs",
        sa.Column("run_id", sa.String(36), primary_key=True),
        sa.Column("session_id", sa.String(36), nullable=False),
        sa.Column("parent_run_id", sa.String(36), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("error", sa.Text, nullable=True),
        sa.Column("created_at", UTCDateTime, nullable=False),
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
        sa.ForeignKeyConstraint(
            ["session_id"],
            ["sessions.session_id"],
            name="fk_runs_session_id_sessions",
            ondelete="CASCADE",
        ),
    )
    op.create_index("ix_runs_session_id", "runs", ["session_id"])
    op.create_index("ix_runs_parent_run_id", "runs", ["parent_run_id"])
    op.create_index("ix_runs_status", "runs", ["status"])
    op.create_index("ix_runs_created_at", "runs", ["created_at"])
    # One active run per session, enforced by the database across processes.
    op.create_index(
        "uq_runs_active_session",
        "runs",
        ["session_id"],
        unique=True,
        sqlite_where=ACTIVE_SLOT,
        postgresql_where=ACTIVE_SLOT,
    )
    op.create_table(
        "run_events",
        sa.Column("run_id", sa.String(36), nullable=False),
        sa.Column("seq", sa.Integer, nullable=False, autoincrement=False),
        sa.Column("type", sa.String(32), nullable=False),
        sa.Column("ts", UTCDateTime, nullable=False),
        sa.Column("body", sa.Text, nullable=False),
        sa.PrimaryKeyConstraint("run_id", "seq", name="pk_run_events"),
    )


def downgrade() -> None:
    op.drop_table("run_events")
    op.drop_index("uq_runs_active_session", table_name="runs")
    op.drop_table("runs")
    op.drop_table("messages")
    op.drop_table("sessions")
