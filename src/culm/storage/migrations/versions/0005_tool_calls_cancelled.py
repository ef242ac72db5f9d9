"""Tool calls their run's cancel ended: ``cancelled`` on each call, and a daily count beside
``failures`` (they are not failures).

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "metrics_tool_calls",
        sa.Column("cancelled", sa.Boolean, nullable=False, server_default=sa.false()),
    )
    op.add_column(
        "metrics_daily_tools",
        sa.Column("cancelled", sa.BigInteger, nullable=False, server_default="0"),
    )


def downgrade() -> None:
    with op.batch_alter_table("metrics_daily_tools") as batch:
        batch.drop_column("cancelled")
    with op.batch_alter_table("metrics_tool_calls") as batch:
        batch.drop_column("cancelled")
