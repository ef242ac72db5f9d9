"""`culm serve` on a store that fills up: 503s in the error shape, a degraded health check, and a
SIGTERM that ends the process within its grace although the store never takes another write."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import httpx2
import pytest

from tests.api.test_serve import _scripts, culm_serve
from tests.runtime.test_storage_failure import fill, tiny_fs

__all__ = ["tiny_fs"]  # the fixture, used by name

STEADY = {"turns": [[{"delay": 0.002}, {"text": "t" * 50}] * 100000]}


@pytest.mark.timeout(120)
# SQLite only: a disk filling up is the SQLite file's tmpfs (PostgreSQL's disk is the server's).
@pytest.mark.backends("sqlite")
async def test_a_full_disk_gives_503s_and_sigterm_still_ends_the_server(
    tmp_path: Path, tiny_fs: Path
) -> None:
    home = tmp_path / "home"
    _scripts(home, steady=STEADY)
    env = {
        "CULM_DATABASE_URL": f"sqlite+aiosqlite:///{tiny_fs / 'culm.db'}",
        "CULM_STORAGE_RETRY_WINDOW": "1",
        "CULM_SHUTDOWN_TIMEOUT": "6",
    }
    async with (
        culm_serve(home, **env) as (process, url),
        httpx2.AsyncClient(base_url=url, timeout=30) as client,
    ):
        run = (
            await client.post("/v1/runs", json={"message": "go", "model": "scripted:steady"})
        ).json()
        async with asyncio.timeout(10):
            while (await client.get(f"/v1/runs/{run['run_id']}")).json()["last_seq"] < 5:
                await asyncio.sleep(0.05)
        fill(tiny_fs)
        async with asyncio.timeout(30):
            while (health := await client.get("/health")).status_code == 200:
                await asyncio.sleep(0.1)
        assert health.status_code == 503
        assert health.json()["status"] == "degraded"
        assert "full" in health.json()["store"]
        created = await client.post("/v1/sessions", json={"model": "scripted:steady"})
        assert created.status_code == 503
        assert created.json()["error"]["code"] == "storage_unavailable"
        assert "full" in created.json()["error"]["message"]
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(30):
            code = await process.wait()
        assert code in (0, -signal.SIGTERM)
        assert time.monotonic() - started < 12  # CULM_SHUTDOWN_TIMEOUT, with room to spare
