"""Redis stopped and restarted mid-stream (a private redis-server, no persistence: it comes back
empty): 20 runs on a worker, 100 subscribers on the API. Nothing is lost or duplicated for any
subscriber (they read the store while Redis is down), the runs go on, ``/health`` says
``redis: degraded`` meanwhile (still 200), the outage is logged once per process, and the bus
carries events again within 5 s of Redis returning."""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path
from typing import Any

import httpx2
import pytest

from tests.distributed.harness import poll, rows, start_runs, topology, write_scripts
from tests.distributed.streamers import follow
from tests.redisserver import private_redis

pytestmark = pytest.mark.distributed

RUNS = 20
SUBSCRIBERS = 100
# ~200 tokens over ~8 s per run.
STREAMING = {"turns": [[*([{"delay": 0.04}, {"text": "tok "}] * 200), {"text": "done"}]]}


def _counter(metrics: str, name: str) -> float:
    for line in metrics.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "_total "):
            return float(line.split()[-1])
    raise AssertionError(f"{name} not in /metrics:\n{metrics}")


@pytest.mark.timeout(300)
async def test_subscribers_lose_nothing_across_a_redis_restart_and_go_live_again(
    postgres_url: str, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    write_scripts(home, stream=STREAMING)
    async with private_redis(tmp_path) as redis_server:
        env = {"CULM_REDIS_URL": redis_server.url}
        async with topology(postgres_url, home, **env) as top:
            api = await top.start_api()
            await top.start_workers(1)
            limits = httpx2.Limits(max_connections=300)
            async with httpx2.AsyncClient(
                base_url=top.api_url, timeout=60, limits=limits
            ) as client:
                run_ids = await start_runs(client, RUNS, "scripted:stream")
                rng = random.Random(7)
                following = [
                    asyncio.create_task(
                        follow(client, run_ids[i % RUNS], reconnects=rng.randint(0, 2),
                               rng=random.Random(i))
                    )
                    for i in range(SUBSCRIBERS)
                ]  # fmt: skip
                await asyncio.sleep(2.5)  # streaming live over the bus
                redis_server.stop()
                await poll(
                    lambda: _redis_state(client, "degraded"), timeout=10, what="redis degraded"
                )
                await asyncio.sleep(1.5)  # the runs go on while Redis is away
                received_before = _counter(
                    (await client.get("/metrics")).text, "culm_bus_events_received"
                )
                await redis_server.start()
                back = time.monotonic()
                await poll(lambda: _redis_state(client, "ok"), timeout=5, what="redis ok again")

                async def bus_carries() -> bool:
                    metrics = (await client.get("/metrics")).text
                    return _counter(metrics, "culm_bus_events_received") > received_before

                await poll(bus_carries, timeout=5, what="events on the bus again", every=0.05)
                live_again = time.monotonic() - back
                results = await asyncio.gather(*following)
                metrics = (await client.get("/metrics")).text
            print(f"live again {live_again:.2f} s after Redis returned")
            assert live_again < 5
            assert _counter(metrics, "culm_redis_reconnects") >= 1
            for i, got in enumerate(results):
                stored = await _stored(top, run_ids[i % RUNS])
                assert stored[-1][1] == "complete"
                assert [(e["seq"], e["type"]) for e in got] == stored
            assert api.log().count("redis unreachable") == 1
            top.assert_clean_logs()


async def _redis_state(client: httpx2.AsyncClient, state: str) -> bool:
    response = await client.get("/health")
    assert response.status_code == 200  # Redis is not the truth: never a 503 for it
    health: dict[str, Any] = response.json()
    return health["redis"] == state


async def _stored(top: Any, run_id: str) -> list[tuple[int, str]]:
    found = await rows(
        top, "SELECT seq, type FROM run_events WHERE run_id = :run_id ORDER BY seq", run_id=run_id
    )
    return [(row.seq, row.type) for row in found]
