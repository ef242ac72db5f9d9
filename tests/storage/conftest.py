"""The store conformance fixture (``store``, in tests/conftest.py): every test in
``test_store.py`` runs on each backend. ``two_stores``: two stores on one database, as two
processes would have them (the run-queue tests)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from culm.storage.sql import SqlStore


@pytest.fixture(params=["sqlite", "postgres"])
def shared_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The URL of one fresh database of the backend."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'culm.db'}"
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture
async def two_stores(shared_url: str) -> AsyncIterator[tuple[SqlStore, SqlStore]]:
    """Two started stores on one database."""
    first, second = SqlStore(shared_url), SqlStore(shared_url)
    await first.start()
    try:
        await second.start()
        try:
            yield first, second
        finally:
            await second.aclose()
    finally:
        await first.aclose()
