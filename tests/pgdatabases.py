"""Fresh PostgreSQL databases at the engine's head schema, for many tests at a small cost.

Creating the engine's tables in an empty database takes PostgreSQL 0.2 to 2 s (more under load),
and ``DROP DATABASE`` forces a checkpoint (1 to 2 s under load): on two cores they were about
2.4 s per PostgreSQL test, more than most tests' own work. So each process (each xdist worker)
keeps:

- a *template*: a database made once by a store start on an empty database (the engine's own
  create-at-once path), copied by ``CREATE DATABASE ... TEMPLATE`` for a test that needs one;
- *spares*: the databases of finished tests, emptied for the next test instead of dropped.

A database is taken back only in the state its copy had: after the test, its connections are
ended and it is renamed to a name no one knows (so a process the test left behind cannot reach it
and write into the next test's rows: it finds its database gone, as after a drop), then every
row is deleted and every sequence restarted, and it is kept only if its catalog (tables, columns,
defaults, indexes, constraints, functions, triggers, types, schemas, database settings, the
alembic revision) is still the template's. Anything else (a test that altered the schema,
a connection that would not end) is dropped as before. The next test gets it renamed to a fresh
name of its own.
"""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import sqlalchemy as sa

from culm.storage.sql import SqlStore

# One text per thing the engine's schema is made of: equal texts, equal catalogs (for this use).
CATALOG = """
SELECT md5(string_agg(item, E'\\n' ORDER BY item)) FROM (
    SELECT 'rel ' || c.relname || ' ' || c.relkind::text || ' ' || coalesce(pg_get_indexdef(c.oid), '') AS item
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')
    UNION ALL
    SELECT 'col ' || a.attrelid::regclass::text || '.' || a.attname || ' '
        || format_type(a.atttypid, a.atttypmod) || ' ' || a.attnotnull::text || ' '
        || coalesce(pg_get_expr(d.adbin, d.adrelid), '')
    FROM pg_attribute a
    JOIN pg_class c ON c.oid = a.attrelid
    JOIN pg_namespace n ON n.oid = c.relnamespace
    LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
    WHERE n.nspname = 'public' AND a.attnum > 0 AND NOT a.attisdropped
    UNION ALL
    SELECT 'con ' || conrelid::regclass::text || ' ' || conname || ' ' || pg_get_constraintdef(oid)
    FROM pg_constraint WHERE connamespace = 'public'::regnamespace
    UNION ALL SELECT 'fun ' || proname FROM pg_proc WHERE pronamespace = 'public'::regnamespace
    UNION ALL SELECT 'trg ' || tgname FROM pg_trigger WHERE NOT tgisinternal
    UNION ALL
    SELECT 'nsp ' || nspname FROM pg_namespace  -- not a session's temporary ones: they stay
    WHERE nspname NOT LIKE 'pg\\_temp\\_%' AND nspname NOT LIKE 'pg\\_toast\\_temp\\_%'
    UNION ALL SELECT 'typ ' || typname FROM pg_type WHERE typnamespace = 'public'::regnamespace
    UNION ALL SELECT 'ext ' || extname FROM pg_extension
    UNION ALL
    SELECT 'set ' || array_to_string(setconfig, ',') FROM pg_db_role_setting
    WHERE setdatabase = (SELECT oid FROM pg_database WHERE datname = current_database())
    UNION ALL SELECT 'alembic ' || version_num FROM alembic_version
) AS catalog
"""


def _new_name() -> str:
    return f"culm_test_{uuid.uuid4().hex[:16]}"


class HeadDatabases:
    """The template and spares of one process (tests of one process run one at a time)."""

    def __init__(self) -> None:
        self._template: str | None = None
        self._catalog: str | None = None
        self._spares: list[str] = []

    async def take(self, admin: Any, admin_url: sa.URL) -> str:
        """The name of a database of its own for one test, at the head with no rows."""
        name = _new_name()
        if self._spares:
            await admin.execute(f'ALTER DATABASE "{self._spares.pop()}" RENAME TO "{name}"')
        else:
            template = await self._template_of(admin, admin_url)
            await admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
        return name

    async def give_back(self, admin: Any, admin_url: sa.URL, name: str) -> None:
        """Empty the database of a finished test for the next, or drop it if it cannot be."""
        spare = _new_name()
        try:
            await admin.execute(
                "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity WHERE datname = $1",
                name,
            )
            await admin.execute(f'ALTER DATABASE "{name}" RENAME TO "{spare}"')
        except asyncpg.PostgresError:  # a connection came back in between, or the test's own
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            return
        try:
            emptied = await self._emptied(admin_url.set(database=spare))
        except (OSError, asyncpg.PostgresError):  # e.g. a test left it refusing connections
            emptied = False
        if emptied:
            self._spares.append(spare)
        else:
            await admin.execute(f'DROP DATABASE IF EXISTS "{spare}" WITH (FORCE)')

    @property
    def holds_any(self) -> bool:
        return self._template is not None or bool(self._spares)

    @property
    def spares(self) -> int:
        return len(self._spares)

    async def aclose(self, admin: Any) -> None:
        """Drop the template and the spares (at the session's end)."""
        for name in [*self._spares, *([self._template] if self._template else [])]:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        self._spares.clear()
        self._template = None

    async def _template_of(self, admin: Any, admin_url: sa.URL) -> str:
        if self._template is None:
            name = _new_name()
            await admin.execute(f'CREATE DATABASE "{name}"')
            try:
                store = SqlStore(admin_url.set(database=name).render_as_string(False))
                await store.start()
                await store.aclose()
                connection = await connect(admin_url.set(database=name))
                try:
                    self._catalog = await connection.fetchval(CATALOG)
                finally:
                    await connection.close()  # a database being copied has no connection
            except BaseException:
                await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                raise
            self._template = name
        return self._template

    async def _emptied(self, url: sa.URL) -> bool:
        """Delete every row but the revision's and restart every sequence; whether the catalog
        is still the template's."""
        connection = await connect(url)
        try:
            async with connection.transaction():
                tables = await connection.fetch(
                    "SELECT quote_ident(tablename) FROM pg_tables "
                    "WHERE schemaname = 'public' AND tablename <> 'alembic_version'"
                )
                sequences = await connection.fetch(
                    "SELECT quote_ident(sequencename) FROM pg_sequences WHERE schemaname = 'public'"
                )
                # Foreign keys are triggers: off for this transaction, the order does not matter.
                await connection.execute(
                    "SET LOCAL session_replication_role = replica;"
                    + "".join(f"DELETE FROM {table};" for (table,) in tables)
                    + "".join(f"ALTER SEQUENCE {sequence} RESTART;" for (sequence,) in sequences)
                )
                catalog = await connection.fetchval(CATALOG)
                revisions = await connection.fetchval("SELECT count(*) FROM alembic_version")
        finally:
            await connection.close()
        return catalog == self._catalog and revisions == 1


async def connect(url: sa.URL) -> Any:
    """A plain asyncpg connection to ``url``'s database."""
    return await asyncpg.connect(
        host=url.host,
        port=url.port or 5432,
        user=url.username,
        password=url.password,
        database=url.database,
        timeout=5,
    )
