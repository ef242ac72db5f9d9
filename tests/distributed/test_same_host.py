"""Two workers with one host name, each in a PID namespace of its own (containers on the host
network), the second restarted again and again (kill -9 and clean stops, as a worker and as an
embedded `culm serve`): the first one's runs are never taken over.

The first worker's pid inside its namespace is one the others' namespaces do not have alive,
so a process that trusted "same host name, pid not alive" would end its live runs (the bug of
issue 14); in distributed mode a dead owner is found by its lease only.
"""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import pytest

from tests.distributed import invariants
from tests.distributed.harness import (
    Topology,
    namespaces_available,
    ns_pid,
    poll,
    rows,
    running_on,
    start_runs,
    statuses,
    streaming,
    topology,
    write_scripts,
)

pytestmark = pytest.mark.distributed

LEASE = 2.0
HEARTBEAT = 0.5
ENV = {"CULM_LEASE_SECONDS": str(LEASE), "CULM_HEARTBEAT_SECONDS": str(HEARTBEAT)}
HOST = "culm-shared-host"
RESTARTS = 4


@pytest.mark.timeout(120)
async def test_restarts_beside_a_live_worker_of_the_same_host_name_take_nothing_over(
    postgres_url: str, tmp_path: Path
) -> None:
    if not namespaces_available():
        pytest.skip("unshare --pid --uts --fork --mount-proc does not work on this machine")
    home = tmp_path / "home"
    write_scripts(home, long=streaming(60, every=0.1))
    async with topology(postgres_url, home, **ENV) as top:
        await top.start_api()
        first = await top.start_worker(hostname=HOST, pid_offset=20)
        assert first.worker_id is not None
        async with top.client() as client:
            run_ids = await start_runs(client, 4, "scripted:long")
        await poll(
            lambda: running_on(top, first.worker_id or "", run_ids),
            timeout=30, what="the runs running on the first worker",
        )  # fmt: skip
        pids = set()
        for restart in range(RESTARTS):
            start = top.start_serve if restart % 2 else top.start_worker
            second = await start(hostname=HOST, pid_offset=restart)
            pids.add(ns_pid(second.host_pid))
            await asyncio.sleep(3 * HEARTBEAT)  # it looks for dead owners and sweeps
            if restart % 2:
                second.signal(signal.SIGTERM)
                await second.wait()
            else:
                await second.kill()
        assert ns_pid(first.host_pid) not in pids  # the trap was set
        owners = await rows(
            top, "SELECT DISTINCT host FROM workers WHERE worker_id LIKE :h", h=f"{HOST}:%"
        )
        assert [row.host for row in owners] == [HOST], owners
        await asyncio.sleep(LEASE + HEARTBEAT)  # any lease the restarts broke has expired

        found = await statuses(top, run_ids)
        for row in found.values():
            assert (row.status, row.owner, row.epoch, row.attempt) == (
                "running", first.worker_id, 1, 1,
            ), row  # fmt: skip
        assert set((await invariants.takeovers(top.db, run_ids)).values()) == {0}
        await invariants.check(top.db, stuck_grace=HEARTBEAT + 2)
        # A cancel through the API reaches the owner (within a heartbeat: part 1's promise).
        async with top.client() as client:
            for run_id in run_ids:
                response = await client.post(f"/v1/runs/{run_id}/cancel")
                assert response.status_code in (200, 202), response.text
        await poll(
            lambda: _all_cancelled(top, run_ids), timeout=HEARTBEAT + 5, what="runs cancelled"
        )
        await invariants.check(top.db, stuck_grace=HEARTBEAT + 2)
        top.assert_clean_logs()


async def _all_cancelled(top: Topology, run_ids: list[str]) -> bool:
    return all(row.status == "cancelled" for row in (await statuses(top, run_ids)).values())
