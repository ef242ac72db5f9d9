"""Budgets: ``max_cost_usd`` and ``max_tokens`` on sessions (each run's default) and runs;
``runs.traceparent``, the trace context a run's spans continue.

Revision ID: 0011
Revises: 0010
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

TABLES = ("sessions", "runs")


def upgrade() -> None:
    for table in TABLES:
        op.add_column(table, sa.Column("max_cost_usd", sa.Float, nullable=True))
        op.add_column(table, sa.Column("max_tokens", sa.BigInteger, nullable=True))
    op.add_column("runs", sa.Column("traceparent", sa.String(64), nullable=True))


def downgrade() -> None:
    op.drop_column("runs", "traceparent")
    for table in TABLES:
        op.drop_column(table, "max_tokens")
        op.drop_column(table, "max_cost_usd")
