"""A metrics store on a freshly migrated engine database, on each SQL backend."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from culm.metrics.queries import MetricsQueries
from culm.metrics.store import MetricsStore
from culm.storage.sql import SqlStore
from tests.providers.fakes import FakeUpstream

BACKENDS = ["sqlite", "postgres"]


async def _started(url: str) -> AsyncIterator[SqlStore]:
    store = SqlStore(url)
    await store.start()
    try:
        yield store
    finally:
        await store.aclose()


@pytest.fixture
async def sqlite_sql_store(tmp_path: Path) -> AsyncIterator[SqlStore]:
    async for store in _started(f"sqlite+aiosqlite:///{tmp_path / 'culm.db'}"):
        yield store


@pytest.fixture
async def postgres_sql_store(postgres_url: str) -> AsyncIterator[SqlStore]:
    async for store in _started(postgres_url):
        yield store


@pytest.fixture(params=BACKENDS)
def sql_store(request: pytest.FixtureRequest) -> SqlStore:
    """The engine's store with migrations applied, on a fresh database of the backend."""
    store: SqlStore = request.getfixturevalue(f"{request.param}_sql_store")
    return store


@pytest.fixture
def metrics_store(sql_store: SqlStore) -> MetricsStore:
    return MetricsStore(sql_store.write, sql_store.read_connection, sql_store.dialect.name)


@pytest.fixture
def queries(metrics_store: MetricsStore) -> MetricsQueries:
    return MetricsQueries(metrics_store.connect)


@pytest.fixture
async def upstream() -> AsyncIterator[FakeUpstream]:
    async with FakeUpstream() as server:
        yield server
