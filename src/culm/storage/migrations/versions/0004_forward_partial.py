"""Forwarded requests: ``partial`` (the answer broke off; usage is what was seen by then), and
an index on ``trace_id`` (a run's proxied calls).

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "metrics_forward_requests",
        sa.Column("partial", sa.Boolean, nullable=False, server_default=sa.false()),
    )
    op.create_index(
        "ix_metrics_forward_requests_trace_id", "metrics_forward_requests", ["trace_id"]
    )


def downgrade() -> None:
    op.drop_index("ix_metrics_forward_requests_trace_id", "metrics_forward_requests")
    with op.batch_alter_table("metrics_forward_requests") as batch:
        batch.drop_column("partial")
