"""Migrations on start: processes that start together on a fresh database all come up.

Without the migration lock this fails in most runs (one process dies on a duplicate ``pg_type``
row); with it, never: a race test, so it can pass by luck, not fail by luck."""

from __future__ import annotations

import asyncio
import sys

import pytest

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
