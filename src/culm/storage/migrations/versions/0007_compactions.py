"""Compactions of a session's context (``culm.context``): summary, the messages it stands for,
the elided tool outputs and the token counts; the stored messages stay as they are.

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from culm.storage.schema import JSONType, UTCDateTime

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "compactions",
        sa.Column("session_id", sa.String(36), nullable=False),
        sa.Column("seq", sa.Integer, nullable=False, autoincrement=False),
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
        sa.ForeignKeyConstraint(
            ["session_id"],
            ["sessions.session_id"],
            name="fk_compactions_session_id_sessions",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("session_id", "seq", name="pk_compactions"),
    )


def downgrade() -> None:
    op.drop_table("compactions")
