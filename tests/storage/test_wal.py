"""SQLite's write-ahead log stays bounded: one long run once left a 16 MB WAL behind."""

from __future__ import annotations

from pathlib import Path

from culm.domain.time import new_id
from culm.storage.sql import SqlStore
from tests.storage.test_store import a_run, tokens


async def test_the_wal_stays_bounded_through_a_long_run(
    sqlite_store: SqlStore, tmp_path: Path
) -> None:
    run = a_run(new_id())
    wal = tmp_path / "culm.db-wal"
    largest = 0
    for event in tokens(run, 3000):  # a commit each, as a run whose model streams slowly
        await sqlite_store.append_events([event])
        largest = max(largest, wal.stat().st_size)
    # Unbounded, these 3000 commits grew it to ~30 MB.
    assert largest < 10 * 1024 * 1024
    assert wal.stat().st_size < 10 * 1024 * 1024
    assert len(await sqlite_store.read_events(run.run_id)) == 3000
