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
