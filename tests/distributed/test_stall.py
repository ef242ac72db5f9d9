"""A worker stalled (SIGSTOP) for two leases comes back as a zombie, then SIGCONT.

Meanwhile the other workers took its runs over (requeued, run again). Once it wakes: none of
its writes for those runs lands (0 events under its stale epoch), it cancels them locally
within one heartbeat ("lease lost"), and it then completes new runs normally.
"""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import pytest

from tests.distributed import invariants
from tests.distributed.harness import (
    QUICK,
    Culm,
    Topology,
    poll,
    rows,
    running_on,
    start_runs,
    statuses,
    streaming,
    topology,
    write_scripts,
)
from tests.distributed.watch import Watcher

pytestmark = pytest.mark.distributed

LEASE = 3.0
HEARTBEAT = 1.0
ENV = {
    "CULM_LEASE_SECONDS": str(LEASE),
    "CULM_HEARTBEAT_SECONDS": str(HEARTBEAT),
    "CULM_RECOVERY_POLICY": "requeue",
}
STALLED_RUNS = 5
# How long after SIGCONT the test allows for the "lease lost" lines to reach its log reader.
LOG_SLACK = 0.5


@pytest.mark.timeout(120)
async def test_a_stalled_worker_writes_nothing_stale_and_then_works_normally(
    postgres_url: str, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    write_scripts(home, long=streaming(60, every=0.05))
    async with topology(postgres_url, home, **ENV) as top:
        await top.start_api()
        zombie = await top.start_worker()
        watcher = Watcher(top.api_url)
        try:
            async with top.client() as client:
                run_ids = await start_runs(client, STALLED_RUNS, "scripted:long")
            for run_id in run_ids:
                watcher.follow(run_id)
            await poll(
                lambda: running_on(top, zombie.worker_id or "", run_ids),
                timeout=30, what="the runs running on the worker to stall",
            )  # fmt: skip
            others = await top.start_workers(2)
            write_scripts(home, long=QUICK)  # the takeovers complete at once

            zombie.signal(signal.SIGSTOP)
            await asyncio.sleep(2 * LEASE)
            found = await statuses(top, run_ids)
            assert all(row.attempt == 2 for row in found.values()), found
            await poll(lambda: _completed(top, run_ids), timeout=30, what="takeovers completed")
            await invariants.check(top.db, seen=watcher.seen)  # (the zombie cannot sweep)

            woke = time.monotonic()
            zombie.signal(signal.SIGCONT)
            took = await poll(
                lambda: _lost_logged(zombie, run_ids), timeout=10 * HEARTBEAT,
                what="the zombie logging each of its runs as lease lost", every=0.01,
            )  # fmt: skip
            print(f"lease lost logged {took:.2f} s after SIGCONT")
            assert time.monotonic() - woke <= HEARTBEAT + LOG_SLACK, took
            await asyncio.sleep(2 * HEARTBEAT)  # anything it still tried to write, it tried
            await _nothing_stale(top, zombie, run_ids)
            await watcher.wait(timeout=30)
            await invariants.check(top.db, seen=watcher.seen, stuck_grace=HEARTBEAT + 2)

            # With the others stopped, the woken worker completes new runs on its own.
            for other in others:
                assert await other.stop() == 0, other.log()
            async with top.client() as client:
                fresh = await start_runs(client, 3, "scripted:long")
            await poll(lambda: _completed(top, fresh), timeout=30, what="new runs completed")
            executed = await rows(
                top,
                "SELECT DISTINCT owner FROM runs WHERE run_id = ANY(:ids)",
                ids=fresh,
            )
            assert {row.owner for row in executed} <= {zombie.worker_id, None}
            await invariants.check(top.db, seen=watcher.seen, stuck_grace=HEARTBEAT + 2)
            top.assert_clean_logs()
        finally:
            await watcher.aclose()


async def _completed(top: Topology, run_ids: list[str]) -> bool:
    return all(row.status == "completed" for row in (await statuses(top, run_ids)).values())


async def _lost_logged(zombie: Culm, run_ids: list[str]) -> bool:
    lines = [line for line in zombie.log().splitlines() if "lease lost" in line.lower()]
    return all(any(run_id in line for line in lines) for run_id in run_ids)


async def _nothing_stale(top: Topology, zombie: Culm, run_ids: list[str]) -> None:
    """No event of the zombie's epoch (1) after the takeover; the run's history is one
    attempt under epoch 1, the takeover (epoch 2) and the new attempt (epoch 3)."""
    for run_id in run_ids:
        events = await rows(
            top, "SELECT seq, type, epoch FROM run_events WHERE run_id = :r ORDER BY seq", r=run_id
        )
        recovered = [e.seq for e in events if e.type == "run_recovered"]
        assert len(recovered) == 1, events
        assert all(e.epoch == 1 for e in events if e.seq < recovered[0]), events
        assert all(e.epoch > 1 for e in events if e.seq >= recovered[0]), events
    workers = await rows(
        top, "SELECT fenced_writes FROM workers WHERE worker_id = :w", w=zombie.worker_id
    )
    print(f"zombie's fenced writes: {workers[0].fenced_writes if workers else None}")
