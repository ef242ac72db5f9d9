"""Two `culm worker` processes, each with its schedule ticker, over one fake clock: each
scheduled time fires exactly once.

The clock (``CULM_TEST_SCHEDULE_CLOCK``, the same value for every process) runs 120 times
faster than real time, so an every-minute cron comes due every half second and both tickers
(looking every 20 ms) race for every fire.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx2
import pytest

from tests.distributed import invariants
from tests.distributed.harness import rows, topology

pytestmark = pytest.mark.distributed

SPEED = 120
T0 = datetime(2026, 11, 23, 8, 0, 10, tzinfo=UTC)


@pytest.mark.timeout(90)
async def test_two_worker_tickers_fire_each_time_exactly_once(
    postgres_url: str, tmp_path: Path
) -> None:
    env = {
        "CULM_TEST_SCHEDULE_CLOCK": f"{T0.isoformat()},{time.time()!r},{SPEED}",
        "CULM_SCHEDULE_TICK": "0.02",
        "CULM_SCHEDULE_MISFIRE_GRACE": "600",
    }
    async with topology(postgres_url, tmp_path / "home", **env) as top:
        await top.start_api()
        await top.start_workers(2)
        async with top.client() as client:
            created = await client.post("/v1/schedules", json=_every_minute())
            assert created.status_code == 201, created.text
            schedule_id = created.json()["schedule_id"]
            await asyncio.sleep(4)  # about eight fires
            paused = await client.patch(f"/v1/schedules/{schedule_id}", json={"enabled": False})
            assert paused.status_code == 200, paused.text
            fires = await _settled(client, f"/v1/schedules/{schedule_id}/runs")
        started = await rows(top, "SELECT run_id FROM runs WHERE trigger = 'schedule'")
        await invariants.check(top.db, stuck_grace=4.0)
        top.assert_clean_logs()

    times = [datetime.fromisoformat(fire["scheduled_for"]) for fire in fires]
    assert len(times) >= 4, fires
    assert times == [times[0] + timedelta(minutes=i) for i in range(len(times))]  # no gap
    assert all(fire["status"] == "success" and not fire["manual"] for fire in fires), fires
    run_ids = [fire["run_id"] for fire in fires]
    assert len(set(run_ids)) == len(run_ids)
    # Exactly one run per fire, whichever worker started it; none started twice.
    assert sorted(row.run_id for row in started) == sorted(run_ids)
    for worker in top.processes:
        for sign in ("Traceback", "claimed twice"):
            assert sign not in worker.log(), worker.log()


def _every_minute() -> dict[str, Any]:
    return {
        "name": "race",
        "trigger": {"type": "cron", "expr": "* * * * *"},
        "run_config": {"message": "tick", "model": "scripted:echo"},
        "overlap_policy": "allow",
    }


async def _settled(client: httpx2.AsyncClient, path: str) -> list[dict[str, Any]]:
    """The fires, oldest first, once none is queued or running."""
    async with asyncio.timeout(30):
        while True:
            fires: list[dict[str, Any]] = (await client.get(path)).json()["runs"]
            if fires and all(fire["status"] not in ("queued", "running") for fire in fires):
                return list(reversed(fires))
            await asyncio.sleep(0.1)
