"""Apply alembic migrations on start, inside one write transaction (so concurrent starts queue).

SQLite's write lock queues them by itself. PostgreSQL does not: two processes migrating a fresh
database at once both create the same tables and one fails (a duplicate ``pg_type`` row), which
is what N workers and M API processes started together do. So on PostgreSQL the transaction
first takes a transaction-scoped advisory lock: the others wait, then find nothing to do.
"""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config

MIGRATIONS = Path(__file__).parent / "migrations"
# The advisory lock's key on PostgreSQL: any constant that culm's other locks do not use.
MIGRATION_LOCK = 0x63756C6D  # "culm"


def _config(connection: sa.Connection) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def upgrade(connection: sa.Connection) -> None:
    """Upgrade to the latest revision on ``connection`` (in the caller's write transaction)."""
    if connection.dialect.name == "postgresql":
        connection.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
    command.upgrade(_config(connection), "head")
