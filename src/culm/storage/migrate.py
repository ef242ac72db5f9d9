"""Apply alembic migrations on start, inside one write transaction (so concurrent starts queue)."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config

MIGRATIONS = Path(__file__).parent / "migrations"


def _config(connection: sa.Connection) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def upgrade(connection: sa.Connection) -> None:
    """Upgrade to the latest revision on ``connection`` (in the caller's write transaction)."""
    command.upgrade(_config(connection), "head")
