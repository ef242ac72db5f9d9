"""What a run reports is only what is stored: a client may resume from any seq it was told.

The run row's ``last_seq`` once ran ahead of the store (553 reported, 176 stored); after a crash
recovery reused 177 and 178, and a client resuming after 553 never saw the terminal event.
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

import culm
from tests.support import settings

# The store is held back by another connection holding SQLite's write lock; on PostgreSQL that
# lock blocks nothing, the events are stored as they come, and the test's "the run is ahead of
# the store" was a race it sometimes lost (seen: 12 < 12).
pytestmark = pytest.mark.backends("sqlite")


async def test_a_run_reports_no_seq_the_store_does_not_hold(tmp_path: Path) -> None:
    async with culm.Engine(settings(tmp_path, scheduler=False)) as engine:
        engine.scripts.register("steady", {"turns": [[{"delay": 0.005}, {"text": "t"}] * 2000]})
        run = await engine.run("go", model="scripted:steady")
        async for event in engine.subscribe(run.run_id):
            if event.seq >= 3:
                break
        runner = engine.registry.get(run.run_id)
        assert runner is not None
        # Another connection holds SQLite's write lock: the run goes on emitting events the
        # store cannot take yet.
        blocker = sqlite3.connect(tmp_path / "culm.db", isolation_level=None)
        try:
            blocker.execute("BEGIN IMMEDIATE")
            stored = await engine.store.last_event_seq(run.run_id)
            async with asyncio.timeout(10):
                while runner.last_seq < stored + 10:
                    await asyncio.sleep(0.01)
            reported = await engine.get_run(run.run_id)
            assert reported.status is culm.RunStatus.RUNNING
            assert reported.last_seq <= await engine.store.last_event_seq(run.run_id)
            assert reported.last_seq < runner.last_seq
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        await engine.cancel(run.run_id, wait=True, timeout=10)
        done = await engine.get_run(run.run_id)
        assert done.last_seq == await engine.store.last_event_seq(run.run_id)
        after = [e async for e in engine.subscribe(run.run_id, after=reported.last_seq)]
        assert after[-1].type == "cancelled"
