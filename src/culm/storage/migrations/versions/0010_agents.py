"""Named agents: the ``agents`` table (those defined through the API), and the agent a session
was made from and its runs ran as (``sessions.agent``, ``runs.agent``), with the session's own
loop limits (``sessions.max_rounds``, ``sessions.tool_timeout``).

Revision ID: 0010
Revises: 0009
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from culm.storage.schema import JSONType, UTCDateTime

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "agents",
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("definition", JSONType, nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("updated_at", UTCDateTime, nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_agents"),
    )
    op.add_column("sessions", sa.Column("agent", sa.String(100), nullable=True))
    op.add_column("sessions", sa.Column("max_rounds", sa.Integer, nullable=True))
    op.add_column("sessions", sa.Column("tool_timeout", sa.Float, nullable=True))
    op.add_column("runs", sa.Column("agent", sa.String(100), nullable=True))
    op.create_index("ix_runs_agent", "runs", ["agent"])


def downgrade() -> None:
    op.drop_index("ix_runs_agent", table_name="runs")
    op.drop_column("runs", "agent")
    op.drop_column("sessions", "tool_timeout")
    op.drop_column("sessions", "max_rounds")
    op.drop_column("sessions", "agent")
    op.drop_table("agents")
