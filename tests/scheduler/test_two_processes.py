"""Two server processes on one database fire each scheduled time exactly once.

Both run the real server (uvicorn, the app, its ticker looking every 20 ms) on one SQLite file,
or one PostgreSQL database, with a schedule clock 120 times faster than real time: an
every-minute cron fires every half second, and the two tickers race for every fire.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx2
import pytest
import sqlalchemy as sa

from culm.storage.schema import runs
from culm.storage.sql import SqlStore

WORKER = Path(__file__).with_name("server_worker.py")
SPEED = 120  # schedule seconds per real second
T0 = datetime(2026, 11, 23, 8, 0, 10, tzinfo=UTC)


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'shared.db'}"
    url: str = request.getfixturevalue("postgres_head_url")
    return url


@contextlib.asynccontextmanager
async def server_process(
    url: str, home: Path, real0: float
) -> AsyncIterator[tuple[str, asyncio.subprocess.Process]]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(WORKER),
        url,
        str(home),
        T0.isoformat(),
        repr(real0),
        str(SPEED),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None
    try:
        line = await asyncio.wait_for(process.stdout.readline(), timeout=30)
        if not line.startswith(b"ready"):
            raise AssertionError(f"server did not start: {line!r} {await stderr_of(process)}")
        yield f"http://127.0.0.1:{int(line.split()[1])}", process
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
        await asyncio.wait_for(process.wait(), timeout=30)


async def stderr_of(process: asyncio.subprocess.Process) -> str:
    assert process.stderr is not None
    return (await process.stderr.read()).decode()


@pytest.mark.timeout(90)
async def test_two_server_processes_fire_each_time_exactly_once(
    database_url: str, tmp_path: Path
) -> None:
    real0 = time.time()
    async with contextlib.AsyncExitStack() as stack:
        url_a, proc_a = await stack.enter_async_context(
            server_process(database_url, tmp_path / "a", real0)
        )
        url_b, proc_b = await stack.enter_async_context(
            server_process(database_url, tmp_path / "b", real0)
        )
        async with httpx2.AsyncClient(timeout=30) as http:
            created = await http.post(f"{url_a}/v1/schedules", json=_every_minute())
            assert created.status_code == 201, created.text
            schedule_id = created.json()["schedule_id"]
            await asyncio.sleep(3.5)  # about seven fires
            paused = await http.patch(
                f"{url_b}/v1/schedules/{schedule_id}", json={"enabled": False}
            )
            assert paused.status_code == 200, paused.text
            fires = await _settled(http, f"{url_a}/v1/schedules/{schedule_id}/runs")
        owners = await _owners(database_url, [fire["run_id"] for fire in fires])
    errors = (await stderr_of(proc_a)) + (await stderr_of(proc_b))

    times = [datetime.fromisoformat(fire["scheduled_for"]) for fire in fires]
    assert len(times) >= 4, fires
    assert times == [times[0] + timedelta(minutes=i) for i in range(len(times))]  # no gap
    assert all(fire["status"] == "success" and not fire["manual"] for fire in fires), fires
    run_ids = [fire["run_id"] for fire in fires]
    assert len(set(run_ids)) == len(run_ids)
    # Exactly one run per fire, whichever process started it; none started twice.
    assert sorted(owners) == sorted(run_ids)
    for sign in ("Traceback", "ERROR", "claimed twice"):
        assert sign not in errors, errors


def _every_minute() -> dict[str, Any]:
    return {
        "name": "race",
        "trigger": {"type": "cron", "expr": "* * * * *"},
        "run_config": {"message": "tick", "model": "scripted:echo"},
        "overlap_policy": "allow",
    }


async def _settled(http: httpx2.AsyncClient, url: str) -> list[dict[str, Any]]:
    """The fires, oldest first, once none is queued or running."""
    async with asyncio.timeout(20):
        while True:
            fires: list[dict[str, Any]] = (await http.get(url)).json()["runs"]
            if fires and all(fire["status"] not in ("queued", "running") for fire in fires):
                return list(reversed(fires))
            await asyncio.sleep(0.1)


async def _owners(url: str, run_ids: list[str]) -> list[str]:
    """The ids of the runs triggered by a schedule, read from the database itself."""
    store = SqlStore(url)
    await store.start()
    try:
        async with store.read_connection() as conn:
            query = sa.select(runs.c.run_id).where(runs.c.trigger == "schedule")
            return list(await conn.scalars(query))
    finally:
        await store.aclose()
