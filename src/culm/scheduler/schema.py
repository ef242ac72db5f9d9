"""The schedule tables, in SQLAlchemy Core (migration ``0003_schedules`` creates them).

``schedule_runs`` has one row per fire; its key (schedule_id, scheduled_for) is what makes a
time fire at most once, whichever process claims it. ``run_id`` links a fire to its run.
"""

from __future__ import annotations

import sqlalchemy as sa

from culm.storage.schema import JSONType, UTCDateTime, metadata

schedules = sa.Table(
    "schedules",
    metadata,
    sa.Column("schedule_id", sa.String(36), primary_key=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("enabled", sa.Boolean, nullable=False),
    sa.Column("timezone", sa.String(64), nullable=False),
    sa.Column("trigger", JSONType, nullable=False),
    sa.Column("run_config", JSONType, nullable=False),
    sa.Column("misfire_policy", sa.String(16), nullable=False),
    sa.Column("overlap_policy", sa.String(16), nullable=False),
    sa.Column("catch_up_limit", sa.Integer, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False, index=True),
    sa.Column("updated_at", UTCDateTime, nullable=False),
    sa.Column("anchor_at", UTCDateTime, nullable=False),
    sa.Column("next_fire_at", UTCDateTime, nullable=True, index=True),
    sa.Column("last_success_at", UTCDateTime, nullable=True),
    sa.Column("last_failure_at", UTCDateTime, nullable=True),
    sa.Column("last_error", sa.Text, nullable=True),
    sa.Column("consecutive_failures", sa.Integer, nullable=False, server_default="0"),
)

schedule_runs = sa.Table(
    "schedule_runs",
    metadata,
    sa.Column(
        "schedule_id",
        sa.String(36),
        sa.ForeignKey("schedules.schedule_id", ondelete="CASCADE"),
        primary_key=True,
    ),
    sa.Column("scheduled_for", UTCDateTime, primary_key=True),
    sa.Column("status", sa.String(16), nullable=False, index=True),
    sa.Column("run_id", sa.String(36), nullable=True, index=True),
    sa.Column("manual", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("started_at", UTCDateTime, nullable=True),
    sa.Column("completed_at", UTCDateTime, nullable=True),
    sa.Column("error", sa.Text, nullable=True),
)
