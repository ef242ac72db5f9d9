"""Pre-commit delivery: ``runs.seq_reserved``, the highest seq the run may have shown a client.

Every write of a run's events also moves this mark ahead of its last stored seq; a runner hands
an event to live subscribers before it is stored only when its seq is at or under the mark
already committed, and recovery appends after the mark. So no seq a client saw is ever reused,
even for events lost in a crash (their range is a ``gap`` on replay).

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("runs", sa.Column("seq_reserved", sa.Integer, nullable=False, server_default="0"))


def downgrade() -> None:
    op.drop_column("runs", "seq_reserved")
