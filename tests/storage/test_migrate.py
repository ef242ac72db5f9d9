"""Migrations on start: processes that start together on a fresh database all come up.

Without the migration lock this fails in most runs (one process dies on a duplicate ``pg_type``
row); with it, never: a race test, so it can pass by luck, not fail by luck."""

from __future__ import annotations

import asyncio
import sys

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from culm.storage.migrate import MIGRATION_LOCK as LOCK
from culm.storage.migrate import upgrade

# Waits for its stdin to close (the start signal, the same instant for every process), then
# opens the store, which applies the migrations, and closes it.
START = """
import asyncio, sys
from culm.storage.sql import SqlStore

async def main() -> None:
    store = SqlStore(sys.argv[1])
    await store.start()
    await store.aclose()

sys.stdin.read()
asyncio.run(main())
"""


@pytest.mark.timeout(120)
async def test_processes_starting_together_on_a_fresh_postgres_database_all_start(
    postgres_url: str,
) -> None:
    processes = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            START,
            postgres_url,
            stdin=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        for _ in range(4)
    ]
    for process in processes:  # every one is waiting at its stdin: release them together
        assert process.stdin is not None
        process.stdin.close()
    results = [await process.communicate() for process in processes]
    errors = [stderr.decode()[-500:] for _, stderr in results]
    assert [process.returncode for process in processes] == [0, 0, 0, 0], errors


async def test_a_start_on_postgres_migrates_only_once_it_holds_the_migration_lock(
    postgres_url: str,
) -> None:
    """The lock itself, without a race to win: while another transaction holds the migration
    lock, a start waits for it (PostgreSQL shows its request as not granted) and creates the
    tables only once the holder is done."""
    engine = create_async_engine(postgres_url)
    try:
        async with engine.connect() as holder, engine.connect() as watch:
            await holder.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": LOCK})

            async def start() -> None:
                async with engine.begin() as conn:
                    await conn.run_sync(upgrade)

            starting = asyncio.create_task(start())
            waiting = sa.text(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
            )
            deadline = asyncio.get_running_loop().time() + 30
            while not await watch.scalar(waiting):
                assert not starting.done(), "the start migrated without waiting for the lock"
                assert asyncio.get_running_loop().time() < deadline, "the start never asked"
                await asyncio.sleep(0.02)
            assert not await watch.scalar(sa.text("SELECT to_regclass('runs') IS NOT NULL"))
            await holder.rollback()  # the holder is done: the lock is released
            await starting
            assert await watch.scalar(sa.text("SELECT to_regclass('runs') IS NOT NULL"))
    finally:
        await engine.dispose()
