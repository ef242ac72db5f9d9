"""A backlog queued before any worker exists: 1,000 runs on 1,000 sessions, plus 200 runs
``enqueue``d on 20 sessions (10 each). Three workers then drain it: each run is claimed exactly
once (epoch 1, one attempt, one ``execution_started``) and each session's runs execute one
after the other, in the order they were enqueued."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx2
import pytest

from tests.distributed import invariants
from tests.distributed.harness import Topology, poll, rows, start_runs, topology, write_scripts

pytestmark = pytest.mark.distributed

SINGLE_RUNS = 1000
QUEUED_SESSIONS = 20
PER_SESSION = 10


@pytest.mark.timeout(180)
async def test_a_backlog_is_claimed_exactly_once_in_session_order(
    postgres_url: str, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    write_scripts(home, short={"turns": [[{"text": "done"}]]})
    async with topology(postgres_url, home) as top:
        await top.start_api()
        async with top.client() as client:
            singles, queues = await asyncio.gather(
                start_runs(client, SINGLE_RUNS, "scripted:short"),
                asyncio.gather(*(_enqueue(client) for _ in range(QUEUED_SESSIONS))),
            )
        everything = [*singles, *(run_id for queue in queues for run_id in queue)]
        pending = await rows(top, "SELECT count(*) AS n FROM runs WHERE status = 'pending'")
        assert pending[0].n == len(everything) == 1200  # nothing ran: no worker yet

        started = time.monotonic()
        workers = await top.start_workers(3)
        await poll(lambda: _all_completed(top), timeout=120, what="the backlog drained", every=0.2)
        print(f"drained {len(everything)} runs in {time.monotonic() - started:.1f} s")

        claimed = await rows(
            top,
            "SELECT r.run_id, r.epoch, r.attempt,"
            " count(e.seq) FILTER (WHERE e.type = 'execution_started') AS starts,"
            " count(e.seq) FILTER (WHERE e.type = 'run_recovered') AS recoveries"
            " FROM runs r LEFT JOIN run_events e ON e.run_id = r.run_id"
            " GROUP BY r.run_id, r.epoch, r.attempt",
        )
        assert len(claimed) == len(everything)
        for row in claimed:
            assert (row.epoch, row.attempt, row.starts, row.recoveries) == (1, 1, 1, 0), row
        for queue in queues:
            order = await rows(
                top,
                "SELECT run_id FROM runs WHERE run_id = ANY(:ids) ORDER BY started_at, run_id",
                ids=queue,
            )
            assert [row.run_id for row in order] == queue
        await invariants.check(top.db, stuck_grace=4.0)
        # Their counters, written at each heartbeat (2 s), add up to one claim per run.
        ids = [worker.worker_id for worker in workers]
        await poll(lambda: _claims_counted(top, ids, len(everything)), timeout=10,
                   what="claims counted in the workers rows")  # fmt: skip
        for worker in workers:
            assert await worker.stop() == 0, worker.log()
        top.assert_clean_logs()


async def _enqueue(client: httpx2.AsyncClient) -> list[str]:
    """A session and its 10 runs, posted one after the other with ``multitask=enqueue``."""
    session = await client.post("/v1/sessions", json={"model": "scripted:short"})
    assert session.status_code == 201, session.text
    path = f"/v1/sessions/{session.json()['session_id']}/runs"
    run_ids = []
    for i in range(PER_SESSION):
        response = await client.post(path, json={"message": f"turn {i}", "multitask": "enqueue"})
        assert response.status_code == 202, response.text
        run_ids.append(response.json()["run_id"])
    return run_ids


async def _all_completed(top: Topology) -> bool:
    found = await rows(top, "SELECT count(*) AS n FROM runs WHERE status <> 'completed'")
    return int(found[0].n) == 0


async def _claims_counted(top: Topology, worker_ids: list[str | None], total: int) -> bool:
    counted = await rows(
        top,
        "SELECT coalesce(sum(claims), 0) AS claims, coalesce(sum(takeovers), 0) AS takeovers"
        " FROM workers WHERE worker_id = ANY(:ids)",
        ids=worker_ids,
    )
    assert counted[0].claims <= total and counted[0].takeovers == 0, counted
    return int(counted[0].claims) == total
