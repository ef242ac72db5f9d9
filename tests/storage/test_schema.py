"""The migrations create exactly the tables the code declares (``storage/schema.py``, the
schedules' and the metrics' tables: columns, types, partial indexes), and a fresh database, which
``migrate.upgrade`` creates from those declarations at once, ends up with the very catalog the
migrations would have made, on every backend."""

from __future__ import annotations

import re
from typing import Any

import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from culm.storage import migrate
from culm.storage.dialect import dialect_for
from culm.storage.sql import SqlStore


async def test_the_migrations_create_the_declared_tables(shared_url: str) -> None:
    declared = migrate.head_metadata()
    tables = {name for metadata in declared for name in metadata.tables}

    def compare(connection: sa.Connection) -> list[Any]:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        return list(compare_metadata(context, declared))  # type: ignore[arg-type]

    diffs = await _on(shared_url, migrate.migrate, compare)
    assert [diff for diff in diffs if _table_of(diff) in tables] == []
    assert {_table_of(diff) for diff in diffs} <= {"alembic_version", None} | tables


async def test_a_fresh_database_gets_the_catalog_the_migrations_make(shared_url: str) -> None:
    migrated = await _on(shared_url, migrate.migrate, _catalog)
    await _on(shared_url, _drop_everything, lambda connection: None)
    created = await _on(shared_url, migrate.upgrade, _catalog)  # empty: the shortcut
    assert created.keys() == migrated.keys()
    assert [key for key in migrated if created[key] != migrated[key]] == []
    assert created["alembic_version"] == [(migrate.head(),)]


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


async def _on(url: str, prepare: Any, read: Any) -> Any:
    """``prepare`` in a write transaction on ``url``'s database, then ``read`` (both sync)."""
    writer, reader = dialect_for(url).create_engines()
    try:
        await writer.run(prepare)
        return await writer.run(read)
    finally:
        await writer.aclose()
        await reader.dispose()


def _drop_everything(connection: sa.Connection) -> None:
    if connection.dialect.name == "postgresql":
        connection.execute(sa.text("DROP SCHEMA public CASCADE"))
        connection.execute(sa.text("CREATE SCHEMA public"))
        return
    names = connection.execute(sa.text("SELECT name FROM sqlite_master WHERE type = 'table'"))
    connection.execute(sa.text("PRAGMA foreign_keys = OFF"))
    for (name,) in list(names):
        connection.execute(sa.text(f'DROP TABLE "{name}"'))


def _catalog(connection: sa.Connection) -> dict[str, Any]:
    """Every table, column, index, constraint and (on PostgreSQL) routine and trigger, in a
    form that does not depend on the order they were made in."""
    if connection.dialect.name == "postgresql":
        return _postgres_catalog(connection)
    return _sqlite_catalog(connection)


def _rows(connection: sa.Connection, query: str) -> list[tuple[Any, ...]]:
    return sorted(tuple(row) for row in connection.execute(sa.text(query)))


def _sqlite_catalog(connection: sa.Connection) -> dict[str, Any]:
    catalog: dict[str, Any] = {}
    objects = _rows(connection, "SELECT type, name, tbl_name, sql FROM sqlite_master")
    for kind, name, table, sql in objects:
        if name.startswith("sqlite_autoindex"):
            continue
        if kind == "table":
            columns = _rows(connection, f"PRAGMA table_info('{name}')")
            keys = _rows(connection, f"PRAGMA foreign_key_list('{name}')")
            catalog[name] = {
                "columns": sorted(column[1:] for column in columns),  # not the position
                "foreign_keys": sorted(key[2:] for key in keys),
                "checks": sorted(re.findall(r"CHECK \((.+?)\)[,\n]", sql or "")),
                "unique": sorted(re.findall(r"UNIQUE \((.+?)\)", sql or "")),
            }
        elif kind == "index":
            columns = _rows(connection, f"PRAGMA index_xinfo('{name}')")
            catalog[f"index {name}"] = (table, [column[2:] for column in columns], sql)
        else:
            catalog[f"{kind} {name}"] = sql
    catalog["alembic_version"] = _rows(connection, "SELECT version_num FROM alembic_version")
    return catalog


def _postgres_catalog(connection: sa.Connection) -> dict[str, Any]:
    public = "table_schema = 'public'"
    return {
        "columns": _rows(
            connection,
            "SELECT table_name, column_name, data_type, character_maximum_length,"
            f" numeric_precision, is_nullable, column_default FROM information_schema.columns"
            f" WHERE {public}",
        ),
        "indexes": _rows(
            connection,
            "SELECT tablename, indexname, indexdef FROM pg_indexes WHERE schemaname = 'public'",
        ),
        "constraints": _rows(
            connection,
            "SELECT conrelid::regclass::text, conname, contype, pg_get_constraintdef(oid)"
            " FROM pg_constraint WHERE connamespace = 'public'::regnamespace",
        ),
        "routines": _rows(
            connection,
            "SELECT proname, pg_get_functiondef(oid) FROM pg_proc"
            " WHERE pronamespace = 'public'::regnamespace",
        ),
        "triggers": _rows(
            connection,
            "SELECT tgrelid::regclass::text, tgname, pg_get_triggerdef(oid) FROM pg_trigger"
            " WHERE NOT tgisinternal",
        ),
        "sequences": _rows(
            connection,
            "SELECT sequence_name, data_type FROM information_schema.sequences"
            " WHERE sequence_schema = 'public'",
        ),
        "alembic_version": _rows(connection, "SELECT version_num FROM alembic_version"),
    }


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
