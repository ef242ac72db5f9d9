"""Live streams across processes on the Redis bus: a run executes on worker B, its subscribers
are on API A. 100 subscribers reconnect 100 times at random (``Last-Event-ID`` over SSE, a
first frame ``{"after": N}`` over WebSocket): each gets exactly the stored sequence. The session
stream on A sees every live event of the run, and A's PostgreSQL load stays that of a few
queries per subscriber (the bus carries the events, no 250 ms poll)."""

from __future__ import annotations

import asyncio
import random
import uuid
from pathlib import Path
from typing import Any

import httpx2
import pytest

from tests.api.sse import frames
from tests.bus.conftest import drop_keys, reachable_redis
from tests.distributed.harness import rows, topology, write_scripts
from tests.distributed.streamers import TERMINAL, follow

pytestmark = pytest.mark.distributed

SUBSCRIBERS = 100
# ~300 tokens over ~6 s: long enough for every subscriber to reconnect while it streams.
STREAMING = {"turns": [[*([{"delay": 0.02}, {"text": "tok "}] * 300), {"text": "done"}]]}


async def _stored(top: Any, run_id: str) -> list[dict[str, Any]]:
    found = await rows(
        top, "SELECT seq, type FROM run_events WHERE run_id = :run_id ORDER BY seq", run_id=run_id
    )
    return [{"seq": row.seq, "type": row.type} for row in found]


async def _session_stream(client: httpx2.AsyncClient, session_id: str) -> list[dict[str, Any]]:
    got: list[dict[str, Any]] = []
    async with client.stream("GET", f"/v1/sessions/{session_id}/events") as response:
        assert response.status_code == 200
        async for frame in frames(response):
            if frame.comment is None:
                got.append(frame.json)
                if frame.json["type"] in TERMINAL:
                    return got
    return got


@pytest.mark.timeout(240)
async def test_a_hundred_reconnecting_subscribers_on_another_process_see_the_stored_sequence(
    postgres_url: str, tmp_path: Path
) -> None:
    redis_url = await reachable_redis()
    prefix = f"culm-test:{uuid.uuid4().hex[:12]}:"
    home = tmp_path / "home"
    write_scripts(home, stream=STREAMING)
    env = {"CULM_REDIS_URL": redis_url, "CULM_REDIS_PREFIX": prefix}
    try:
        async with topology(postgres_url, home, **env) as top:
            await top.start_api()
            await top.start_workers(1)
            limits = httpx2.Limits(max_connections=300)
            async with httpx2.AsyncClient(
                base_url=top.api_url, timeout=60, limits=limits
            ) as client:
                session = await client.post("/v1/sessions", json={"model": "scripted:stream"})
                session_id = session.json()["session_id"]
                watching = asyncio.create_task(_session_stream(client, session_id))
                await asyncio.sleep(0.5)  # the session stream is open before the run starts
                started = await client.post(
                    f"/v1/sessions/{session_id}/runs", json={"message": "go"}
                )
                assert started.status_code == 202, started.text
                run_id = started.json()["run_id"]
                rng = random.Random(15)
                # 100 reconnects in all, spread over the subscribers at random.
                plan = [0] * SUBSCRIBERS
                for _ in range(100):
                    plan[rng.randrange(SUBSCRIBERS)] += 1
                results = await asyncio.gather(
                    *(
                        follow(client, run_id, reconnects=n, rng=random.Random(i))
                        for i, n in enumerate(plan)
                    )
                )
                session_events = await asyncio.wait_for(watching, 60)
                health = (await client.get("/health")).json()
                metrics = (await client.get("/metrics")).text
            stored = await _stored(top, run_id)
            assert stored[-1]["type"] == "complete" and len(stored) > 300
            for got in results:
                assert [(e["seq"], e["type"]) for e in got] == [
                    (e["seq"], e["type"]) for e in stored
                ]
            assert [(e["run_id"], e["seq"]) for e in session_events] == [
                (run_id, e["seq"]) for e in stored
            ]
            assert health["redis"] == "ok"
            assert "culm_redis_up 1.0" in metrics
            received = [
                line for line in metrics.splitlines() if line.startswith("culm_bus_events_received")
            ]
            assert received and float(received[0].split()[-1]) > 0, metrics
            top.assert_clean_logs()
    finally:
        await drop_keys(redis_url, prefix)
