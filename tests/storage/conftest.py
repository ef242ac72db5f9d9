"""The store conformance fixture: every test in ``test_store.py`` runs on each backend."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from culm.storage.sql import SqlStore

BACKENDS = ["sqlite", "postgres"]


@pytest.fixture
async def sqlite_store(tmp_path: Path) -> AsyncIterator[SqlStore]:
    store = SqlStore(f"sqlite+aiosqlite:///{tmp_path / 'culm.db'}")
    await store.start()
    try:
        yield store
    finally:
        await store.aclose()


@pytest.fixture
async def postgres_store(postgres_url: str) -> AsyncIterator[SqlStore]:
    store = SqlStore(postgres_url)
    await store.start()
    try:
        yield store
    finally:
        await store.aclose()


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest) -> SqlStore:
    """A started store with migrations applied, on a fresh database of the backend."""
    backend: str = request.param
    result: SqlStore = request.getfixturevalue(f"{backend}_store")
    return result
