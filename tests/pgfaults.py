"""Faults of a real PostgreSQL database, for tests that need the store to fail (without stopping
the shared server): :func:`cut_off` makes one database refuse every connection for a while."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg  # type: ignore[import-untyped]
import sqlalchemy as sa


@asynccontextmanager
async def cut_off(database_url: str) -> AsyncIterator[None]:
    """The database refuses new connections and its open ones are ended, until the block
    leaves (then it takes connections again)."""
    url = sa.make_url(database_url)
    admin = await asyncpg.connect(
        host=url.host, port=url.port or 5432, user=url.username, password=url.password,
        database="postgres",
    )  # fmt: skip
    try:
        await admin.execute(f'ALTER DATABASE "{url.database}" ALLOW_CONNECTIONS false')
        await admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1",
            url.database,
        )
        yield
    finally:
        await admin.execute(f'ALTER DATABASE "{url.database}" ALLOW_CONNECTIONS true')
        await admin.close()
