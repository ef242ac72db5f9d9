"""The head databases of ``postgres_head_url`` (tests/pgdatabases.py): a finished test's database
is taken back only emptied to the template's state, and unreachable under its old name."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import pytest
import sqlalchemy as sa

from culm.storage.sql import SqlStore
from tests.conftest import _HEAD_DATABASES, POSTGRES_URL, _admin_connection
from tests.pgdatabases import HeadDatabases


@pytest.fixture
async def admin() -> AsyncIterator[Any]:
    connection = await _admin_connection(sa.make_url(POSTGRES_URL))
    try:
        yield connection
    finally:
        await connection.close()


@pytest.fixture
def databases() -> HeadDatabases:
    """The process's own (its template made once, its spares kept after the test)."""
    return _HEAD_DATABASES


async def _connect(name: str) -> Any:
    url = sa.make_url(POSTGRES_URL)
    return await asyncpg.connect(host=url.host, port=url.port, user=url.username, database=name)


async def _exists(admin: Any, name: str) -> bool:
    found: bool = await admin.fetchval(
        "SELECT count(*) = 1 FROM pg_database WHERE datname = $1", name
    )
    return found


async def test_a_database_comes_back_with_no_rows_and_under_a_new_name(
    admin: Any, databases: HeadDatabases
) -> None:
    url = sa.make_url(POSTGRES_URL)
    first = await databases.take(admin, url)
    connection = await _connect(first)
    oid = await connection.fetchval("SELECT oid FROM pg_database WHERE datname = $1", first)
    await connection.execute(
        "INSERT INTO sessions (session_id, kind, model, tools, workspace, metadata, created_at) "
        "VALUES ('s', 'chat', 'm', '[]', '/', '{}', now())"
    )
    # The connection stays open, as a process a test left behind would hold it.
    await databases.give_back(admin, url, first)
    assert connection.is_closed() or not await _alive(connection)

    second = await databases.take(admin, url)
    assert second != first and not await _exists(admin, first)
    again = await _connect(second)
    try:  # the same database (a spare, not a copy), at the head with no rows
        assert await again.fetchval("SELECT oid FROM pg_database WHERE datname = $1", second) == oid
        assert await again.fetchval("SELECT count(*) FROM sessions") == 0
    finally:
        await again.close()
    store = SqlStore(url.set(database=second).render_as_string(False))
    await store.start()  # at the head already: nothing to do
    await store.aclose()
    with pytest.raises(asyncpg.InvalidCatalogNameError):  # the old name reaches nothing
        await _connect(first)
    await databases.give_back(admin, url, second)


async def _alive(connection: Any) -> bool:
    try:
        await connection.fetchval("SELECT 1")
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
        return False
    return True


async def test_a_database_whose_schema_a_test_changed_is_dropped(
    admin: Any, databases: HeadDatabases
) -> None:
    url = sa.make_url(POSTGRES_URL)
    name = await databases.take(admin, url)
    spares = databases.spares
    connection = await _connect(name)
    await connection.execute("CREATE INDEX culm_test_extra ON sessions (created_at)")
    await connection.close()
    await databases.give_back(admin, url, name)
    assert databases.spares == spares and not await _exists(admin, name)

    fresh = await databases.take(admin, url)  # a new copy of the template
    connection = await _connect(fresh)
    try:
        indexes = await connection.fetchval(
            "SELECT count(*) FROM pg_indexes WHERE indexname = 'culm_test_extra'"
        )
    finally:
        await connection.close()
    assert indexes == 0
    await databases.give_back(admin, url, fresh)
    assert databases.spares == spares + 1
