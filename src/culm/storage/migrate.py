"""Apply alembic migrations on start, inside one write transaction (so concurrent starts queue).

SQLite's write lock queues them by itself. PostgreSQL does not: two processes migrating a fresh
database at once both create the same tables and one fails (a duplicate ``pg_type`` row), which
is what N workers and M API processes started together do. So on PostgreSQL the transaction
first takes a transaction-scoped advisory lock: the others wait, then find nothing to do.

Two shortcuts, both inside that transaction: a database already at the head revision is left
alone without running alembic's environment (every process start), and a database with no
tables at all gets ``storage/schema.py``'s tables created at once and is stamped at the head (a
first start; the same tables the migrations make, which tests/storage/test_schema.py checks
catalog by catalog on both backends). Anything else goes through the migrations.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

MIGRATIONS = Path(__file__).parent / "migrations"
# The advisory lock's key on PostgreSQL: any constant that culm's other locks do not use.
MIGRATION_LOCK = 0x63756C6D  # "culm"


def _config(connection: sa.Connection | None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


@cache
def _scripts() -> ScriptDirectory:
    """The migration scripts (read once per process: they do not change under it)."""
    return ScriptDirectory.from_config(_config(None))


def head() -> str:
    revision = _scripts().get_current_head()
    assert revision is not None
    return revision


def upgrade(connection: sa.Connection) -> None:
    """Upgrade to the latest revision on ``connection`` (in the caller's write transaction)."""
    if connection.dialect.name == "postgresql":
        # Many statements, each a hop through a busy event loop: the idle-in-transaction limit
        # (storage/dialect.py) is for transactions that hold run rows, which this one never does.
        connection.execute(sa.text("SET LOCAL idle_in_transaction_session_timeout = 0"))
        connection.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
    context = MigrationContext.configure(connection)
    current = context.get_current_revision()
    if current == head():
        return
    if current is None and not sa.inspect(connection).get_table_names():
        create_fresh(connection)
        return
    migrate(connection)


def create_fresh(connection: sa.Connection) -> None:
    """An empty database: the head schema's tables at once, stamped at the head revision."""
    for metadata in head_metadata():
        metadata.create_all(connection)
    MigrationContext.configure(connection).stamp(_scripts(), head())


def head_metadata() -> list[sa.MetaData]:
    """Every table the migrations make, as declared in code: the engine's (``storage/schema.py``,
    the schedules' among them) and the metrics'. The migrations here own the whole database,
    so this module reaches up to the two packages that declare tables in it."""
    from culm.metrics.tables import metadata as metrics
    from culm.scheduler import schema as _schedules  # noqa: F401  (adds its tables to the engine's)
    from culm.storage.schema import metadata as engine

    return [engine, metrics]


def migrate(connection: sa.Connection, revision: str = "head") -> None:
    """Run the migrations from the database's revision up to ``revision``."""
    command.upgrade(_config(connection), revision)
