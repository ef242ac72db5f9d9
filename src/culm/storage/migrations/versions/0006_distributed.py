"""Distributed workers: ``runs.epoch`` (fencing), ``run_events.epoch`` (audit), partial indexes
for the claim (ready runs by age) and the sweeper (leased runs by lease), and ``workers``.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from culm.storage.schema import LEASED, READY, UTCDateTime

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("runs", sa.Column("epoch", sa.Integer, nullable=False, server_default="0"))
    op.add_column("run_events", sa.Column("epoch", sa.Integer, nullable=True))
    op.create_index(
        "ix_runs_ready", "runs", ["created_at"], sqlite_where=READY, postgresql_where=READY
    )
    op.create_index(
        "ix_runs_leased",
        "runs",
        ["lease_expires_at"],
        sqlite_where=LEASED,
        postgresql_where=LEASED,
    )
    op.create_table(
        "workers",
        sa.Column("worker_id", sa.String(200), nullable=False),
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
        sa.PrimaryKeyConstraint("worker_id", name="pk_workers"),
    )


def downgrade() -> None:
    op.drop_table("workers")
    op.drop_index("ix_runs_leased", "runs")
    op.drop_index("ix_runs_ready", "runs")
    with op.batch_alter_table("run_events") as batch:
        batch.drop_column("epoch")
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("epoch")
