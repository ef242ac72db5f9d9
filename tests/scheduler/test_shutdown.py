"""Stopping an engine while a fired run is at its very first writes.

The scheduler tests used to let every fired run store an event before stopping the engine: a
run cancelled during its first store writes could leave SQLite's write lock held and hang the
stop. This test stops the engine at each point of a fired run's first steps, on SQLite, and
requires every stop to finish and every run to end.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

import culm
from tests.scheduler.conftest import STUCK, FakeClock, cron, engine_settings


@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_stopping_while_a_fired_run_makes_its_first_writes_never_hangs(
    tmp_path: Path, clock: FakeClock
) -> None:
    home = tmp_path / "home"
    for turns in range(12):  # stop after 0, 1, 2 … loop turns of the fired run
        engine = culm.Engine(engine_settings(home), clock=clock)
        engine.scripts.register("stuck", STUCK)
        async with asyncio.timeout(20):  # a hang fails here, not at the test's timeout
            async with engine:
                body = cron("* * * * *", run_config={"message": "go", "model": "scripted:stuck"})
                await engine.schedules.create(body)
                clock.advance(minutes=1, seconds=1)
                await engine.schedules.tick()
                for _ in range(turns):
                    await asyncio.sleep(0)
            # stopped: the fired run was cancelled wherever it was
        clock.advance(hours=1)
    async with culm.Engine(engine_settings(home), clock=clock) as engine:
        assert await engine.list_runs(status="running") == []
        assert await engine.list_runs(status="pending") == []
