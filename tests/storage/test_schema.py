"""The migrations create exactly the engine's tables as ``storage/schema.py`` declares them
(columns, types, partial indexes), on every backend."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from culm.storage import schema
from culm.storage.sql import SqlStore


async def test_the_migrations_create_the_engine_tables(store: SqlStore) -> None:
    def compare(connection: sa.Connection) -> list[Any]:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        return list(compare_metadata(context, schema.metadata))

    async with store.read_connection() as conn:
        diffs = await conn.run_sync(compare)
    ours = [diff for diff in diffs if _table_of(diff) in schema.metadata.tables]
    assert ours == []


def _table_of(diff: Any) -> str | None:
    """The table an alembic diff is about (a modification comes as a list of tuples)."""
    if isinstance(diff, list):
        diff = diff[0]
    kind, target = diff[0], diff[1]
    if kind.endswith("_table"):
        return str(target.name)
    if kind.endswith(("_index", "_constraint")):
        return str(target.table.name)
    return str(diff[2])  # add_column/remove_column/modify_*: (kind, schema, table, ...)


async def test_migration_0006_upgrades_a_database_with_runs(shared_url: str) -> None:
    from alembic import command

    from culm.storage import migrate
    from culm.storage.dialect import dialect_for
    from tests.storage.queue_support import T0

    writer, reader = dialect_for(shared_url).create_engines()
    try:
        await writer.run(lambda conn: command.upgrade(migrate._config(conn), "0005"))

        def old_rows(conn: sa.Connection) -> None:
            conn.execute(
                sa.text(
                    "INSERT INTO sessions (session_id, kind, model, tools, workspace, metadata,"
                    " created_at) VALUES ('s', 'chat', 'm', '[]', '/w', '{}', :t)"
                ),
                {"t": T0},
            )
            conn.execute(
                sa.text(
                    "INSERT INTO runs (run_id, session_id, status, created_at, model, trigger)"
                    " VALUES ('r', 's', 'pending', :t, 'm', 'api')"
                ),
                {"t": T0},
            )

        await writer.run(old_rows)
    finally:
        await writer.aclose()
        await reader.dispose()
    store = SqlStore(shared_url)
    await store.start()  # upgrades to head
    try:
        run = await store.get_run("r")
        assert run is not None and run.epoch == 0
        [claimed] = await store.claim_runs("w1", limit=5, lease_seconds=60)
        assert (claimed.run_id, claimed.epoch) == ("r", 1), "an unowned pending run is ready"
        assert await store.list_workers(lease_seconds=10) == []
    finally:
        await store.aclose()
