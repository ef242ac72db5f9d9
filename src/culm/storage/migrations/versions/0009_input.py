"""People in the loop: sessions' approval policy and input timeout, the ``input_requests``
table, and a run ``waiting`` for a person holding its session's slot (the partial unique index
of active runs takes the new status in).

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from culm.storage.schema import JSONType, UTCDateTime

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

_SLOT = "status IN ('pending', 'running', 'waiting') AND queued = false"
_OLD_SLOT = "status IN ('pending', 'running') AND queued = false"
_OPEN = sa.text("status = 'open'")


def _slot_index(predicate: str) -> None:
    op.drop_index("uq_runs_active_session", "runs")
    op.create_index(
        "uq_runs_active_session",
        "runs",
        ["session_id"],
        unique=True,
        sqlite_where=sa.text(predicate),
        postgresql_where=sa.text(predicate),
    )


def upgrade() -> None:
    with op.batch_alter_table("sessions") as batch:
        batch.add_column(sa.Column("require_approval", JSONType, nullable=True))
        batch.add_column(sa.Column("input_timeout", sa.Float, nullable=True))
        batch.add_column(
            sa.Column("input_timeout_action", sa.String(8), nullable=False, server_default="deny")
        )
    _slot_index(_SLOT)
    op.create_table(
        "input_requests",
        sa.Column("request_id", sa.String(36), nullable=False),
        sa.Column("run_id", sa.String(36), nullable=False),
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
        sa.ForeignKeyConstraint(
            ["run_id"], ["runs.run_id"], name="fk_input_requests_run_id_runs", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("request_id", name="pk_input_requests"),
    )
    op.create_index("ix_input_requests_run_id", "input_requests", ["run_id"])
    op.create_index(
        "ix_input_requests_expiring",
        "input_requests",
        ["expires_at"],
        sqlite_where=_OPEN,
        postgresql_where=_OPEN,
    )


def downgrade() -> None:
    op.drop_table("input_requests")
    _slot_index(_OLD_SLOT)
    with op.batch_alter_table("sessions") as batch:
        batch.drop_column("input_timeout_action")
        batch.drop_column("input_timeout")
        batch.drop_column("require_approval")
