"""PostgreSQL restarted for 5 s, less than a lease (the default 10 s), under 1 API + 3 workers
with runs streaming: no run is taken over (each keeps epoch 1 and its one attempt, and
completes), and meanwhile the API answers 503 (store unavailable), never 500.

The server restarted is a private one (:mod:`tests.distributed.pgcluster`), never the shared
server the other tests use.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest

from tests.conftest import CI
from tests.distributed import invariants
from tests.distributed.harness import (
    Topology,
    poll,
    start_runs,
    statuses,
    streaming,
    topology,
    write_scripts,
)
from tests.distributed.pgcluster import PrivateCluster
from tests.distributed.watch import Watcher

pytestmark = pytest.mark.distributed

OUTAGE = 5.0


@pytest.fixture
def cluster() -> Iterator[PrivateCluster]:
    try:
        private = PrivateCluster()
    except (FileNotFoundError, RuntimeError) as exc:
        if CI:
            pytest.fail(f"no private PostgreSQL cluster: {exc}; CI=true requires one")
        pytest.skip(f"no private PostgreSQL cluster: {exc}")
    try:
        private.start()
        yield private
    finally:
        private.remove()


@pytest.mark.timeout(120)
async def test_a_short_postgresql_restart_takes_nothing_over_and_the_api_says_503(
    cluster: PrivateCluster, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    write_scripts(home, long=streaming(14, every=0.1))
    # The default lease (10 s) and heartbeat (2 s): the outage is shorter than a lease.
    async with topology(cluster.url, home) as top:
        await top.start_api()
        workers = await top.start_workers(3)
        watcher = Watcher(top.api_url)
        try:
            async with top.client() as client:
                run_ids = await start_runs(client, 6, "scripted:long")
            for run_id in run_ids:
                watcher.follow(run_id)
            await poll(lambda: _running(top, run_ids), timeout=30, what="runs running")
            await invariants.check(top.db, seen=watcher.seen, stuck_grace=4.0)
            await top.db.dispose()  # the test's own connections would be cut too

            cluster.stop()
            down_at = time.monotonic()
            answers = await _ask_while_down(top, run_ids[0], until=down_at + OUTAGE)
            cluster.start()
            print(f"database down {time.monotonic() - down_at:.1f} s; API answers: {answers}")
            assert answers["POST /v1/runs"] == {503}, answers
            assert all(500 not in codes for codes in answers.values()), answers
            assert 503 in answers["GET /health"], answers

            await poll(lambda: _completed(top, run_ids), timeout=60, what="runs completed")
            found = await statuses(top, run_ids)
            for row in found.values():
                assert (row.status, row.epoch, row.attempt) == ("completed", 1, 1), row
            assert set((await invariants.takeovers(top.db, run_ids)).values()) == {0}
            await watcher.wait(timeout=30)
            await invariants.check(top.db, seen=watcher.seen, stuck_grace=4.0)
            assert all(worker.alive for worker in workers), top.logs()
            async with top.client() as client:
                assert (await client.get("/health")).status_code == 200
            top.assert_clean_logs(tracebacks=False)
        finally:
            await watcher.aclose()


async def _ask_while_down(top: Topology, run_id: str, *, until: float) -> dict[str, set[int]]:
    """Every 100 ms, a read, a write and /health through the API; the statuses seen."""
    answers: dict[str, set[int]] = {}
    calls = Counter[str]()
    async with top.client(timeout=10) as client:
        while time.monotonic() < until:
            for what, method, path, body in (
                ("GET /v1/runs/{id}", "GET", f"/v1/runs/{run_id}", None),
                ("POST /v1/runs", "POST", "/v1/runs", {"message": "x", "model": "scripted:echo"}),
                ("GET /health", "GET", "/health", None),
            ):
                try:
                    response = await client.request(method, path, json=body)
                except httpx2.TransportError as exc:
                    raise AssertionError(f"{what}: the API did not answer ({exc!r})") from exc
                answers.setdefault(what, set()).add(response.status_code)
                calls[what] += 1
            await asyncio.sleep(0.1)
    assert min(calls.values()) >= 10, calls
    return answers


async def _running(top: Topology, run_ids: list[str]) -> bool:
    return all(row.status == "running" for row in (await statuses(top, run_ids)).values())


async def _completed(top: Topology, run_ids: list[str]) -> bool:
    return all(row.status == "completed" for row in (await statuses(top, run_ids)).values())
