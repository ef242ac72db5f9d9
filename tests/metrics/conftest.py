"""A metrics store on a freshly migrated engine database, on each SQL backend."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from culm.metrics.queries import MetricsQueries
from culm.metrics.store import MetricsStore
from culm.storage.sql import SqlStore
from tests.conftest import BACKENDS
from tests.providers.fakes import FakeUpstream


@pytest.fixture(params=BACKENDS)
def sql_store(request: pytest.FixtureRequest) -> SqlStore:
    """The engine's store with migrations applied, on a fresh database of each backend (not
    named ``store``: the worker tests have a store of their own)."""
    store: SqlStore = request.getfixturevalue(f"{request.param}_store")
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
