"""Distributed deployment benchmark (issue 14): 1 API + 3 workers on PostgreSQL, real processes.

    .venv/bin/python bench/distributed.py [--postgres URL] [--latency-runs 200]
        [--drain-runs 1200] [--cancels 60] [--scenarios latency,drain,cancel,recovery] [--json]
    .venv/bin/python bench/distributed.py --cancel-bus [--cancels 60] [--cancel-rounds 2]
        [--redis URL]
    .venv/bin/python bench/distributed.py --bus [--redis URL] [--bus-tokens 300] [--bus-rate 50]

``--bus`` runs only the event bus scenarios of issue 15 (see ``bench/bus_delivery.py``): live
delivery from a worker to 100 and 1,000 subscribers on an API process fed by Redis, PostgreSQL
transactions/s at 0, 50, 100, 200 subscribers, against the same without Redis and in-process.

Scenarios, in one topology (`culm serve --no-worker` + 3 × `culm worker`, the default lease
10 s and heartbeat 2 s, ``CULM_RECOVERY_POLICY=requeue``) on a fresh database of the server
given by ``--postgres`` (default: the tests' ``CULM_TEST_POSTGRES_URL``):

- ``latency``: runs posted one at a time to idle workers (the next once the previous ended);
  enqueue → start is ``started_at - created_at`` of each run (both written by the database
  or this host's clock: one machine), p50/p99/max. Target p50 ≤ 5 ms, p99 ≤ 50 ms. Also from
  the client's 202 (the run committed) to ``started_at``, which leaves the API's own work out,
  and to the run's first event (``execution_started``, stamped by the worker once the run is
  running there, so after the transaction that started it committed).
- ``drain``: ``--drain-runs`` short runs posted as fast as 32 clients can; runs/s from the
  first POST to the last run's completion (end to end). Target ≥ 70 runs/s.
- ``cancel``: ``--cancels`` long runs executing on the workers, each cancelled through the API
  (``POST /v1/runs/{id}/cancel?wait=true``), staggered over a few seconds so the cancels fall
  at every phase of the owners' heartbeat; the seconds each request took, p50/p99/max.
  Target p99 ≤ 2.5 s (the owner sees the flag at its next heartbeat).
- ``recovery``: one worker alone executes 30 long runs, two more join, the first is killed
  (kill -9); the seconds until all 30 are requeued by the others. Target ≤ 12 s.

With ``--cancel-bus`` only cross-process cancel runs (issue 15), in three deployments that
alternate (``--cancel-rounds`` rounds, ``--cancels`` runs each): 2 API + 3 workers with Redis
(``--redis``), the same on PostgreSQL alone, and one embedded ``culm serve``; each cancel goes
through another API process than the one that started the run, ``?wait=true``, staggered over
4 s. Target with Redis: p50 ≤ 100 ms, p99 ≤ 1 s; the embedded figures give the ratio.

Then the distributed tests' invariant checks run on the database (gapless seq, fencing, one
active run per session …). The exit status is 1 only when a check fails; a missed target
prints MISS. Not a test: figures and the command are in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx2
import sqlalchemy as sa

# The topology and the invariant checks are the distributed tests' own.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.distributed import invariants
from tests.distributed.harness import (
    QUICK,
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

TARGETS = {
    "enqueue_to_start_p50_ms": ("<=", 5.0),
    "enqueue_to_start_p99_ms": ("<=", 50.0),
    "drain_runs_per_s": (">=", 70.0),
    "recovery_s": ("<=", 12.0),
    "cancel_p99_s": ("<=", 2.5),
    "cancel_redis_p50_ms": ("<=", 100.0),
    "cancel_redis_p99_ms": ("<=", 1000.0),
}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


@contextlib.asynccontextmanager
async def fresh_database(server: str) -> AsyncIterator[str]:
    url = sa.make_url(server)
    admin = await asyncpg.connect(
        host=url.host, port=url.port or 5432, user=url.username, password=url.password,
        database=url.database,
    )  # fmt: skip
    name = f"culm_bench_{uuid.uuid4().hex[:12]}"
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield url.set(database=name).render_as_string(hide_password=False)
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def latency(top: Topology, count: int) -> dict[str, float]:
    answered: dict[str, float] = {}
    async with top.client() as client:
        for i in range(count):
            posted = await client.post(
                "/v1/runs", json={"message": f"{i}", "model": "scripted:short"}
            )
            answered[posted.json()["run_id"]] = time.time()
            run_id = posted.json()["run_id"]
            waited = await client.get(f"/v1/runs/{run_id}/wait", params={"timeout": 30})
            assert waited.json()["status"] == "completed", waited.text
    found = await rows(
        top,
        "SELECT r.run_id, extract(epoch FROM r.started_at - r.created_at) * 1000 AS ms,"
        " extract(epoch FROM e.ts - r.created_at) * 1000 AS first_event_ms,"
        " extract(epoch FROM r.started_at) AS started FROM runs r"
        " JOIN run_events e ON e.run_id = r.run_id AND e.seq = 1 WHERE r.run_id = ANY(:ids)",
        ids=list(answered),
    )
    ms = [float(row.ms) for row in found]
    # The first event (``execution_started``) is stamped by the worker once the run is running
    # there: the start as a client can see it, after the transaction that started it committed.
    first_event = [float(row.first_event_ms) for row in found]
    # From the moment the client had its 202 (the run reserved and committed) to the start: the
    # API's own work before the reservation (the run's created_at is taken first) left out.
    after_answer = [(float(row.started) - answered[row.run_id]) * 1000 for row in found]
    return {
        "enqueue_to_start_p50_ms": percentile(ms, 0.5),
        "enqueue_to_start_p99_ms": percentile(ms, 0.99),
        "enqueue_to_start_max_ms": max(ms),
        "enqueue_to_first_event_p50_ms": percentile(first_event, 0.5),
        "enqueue_to_first_event_p99_ms": percentile(first_event, 0.99),
        "answered_to_start_p50_ms": percentile(after_answer, 0.5),
        "answered_to_start_p99_ms": percentile(after_answer, 0.99),
    }


async def drain(top: Topology, count: int) -> dict[str, float]:
    started = time.monotonic()
    async with top.client() as client:
        run_ids = await start_runs(client, count, "scripted:short", parallel=32)
    posted = time.monotonic() - started

    async def done() -> bool:
        found = await statuses(top, run_ids)
        return all(row.status == "completed" for row in found.values())

    await poll(done, timeout=300, what="drain", every=0.02)
    took = time.monotonic() - started
    return {"drain_runs": count, "drain_post_s": posted, "drain_s": took,
            "drain_runs_per_s": count / took}  # fmt: skip


async def cancel(top: Topology, count: int) -> dict[str, float]:
    async with top.client() as client:
        run_ids = await start_runs(client, count, "scripted:long")

        async def all_running() -> bool:
            found = await statuses(top, run_ids)
            return all(row.status == "running" for row in found.values())

        await poll(all_running, timeout=60, what="runs running")
        spread = 4.0  # two heartbeats: every phase of the owners' heartbeat

        async def one(i: int, run_id: str) -> float:
            await asyncio.sleep(spread * i / count)
            sent = time.monotonic()
            response = await client.post(
                f"/v1/runs/{run_id}/cancel", params={"wait": "true", "timeout": 30}
            )
            assert response.status_code == 200 and response.json()["status"] == "cancelled", (
                response.text
            )
            return time.monotonic() - sent

        took = await asyncio.gather(*(one(i, run_id) for i, run_id in enumerate(run_ids)))
    return {"cancel_p50_s": percentile(took, 0.5), "cancel_p99_s": percentile(took, 0.99),
            "cancel_max_s": max(took)}  # fmt: skip


async def recovery(top: Topology, home: Path) -> dict[str, float]:
    for worker in [p for p in top.processes if p.kind == "worker" and p.alive]:
        await worker.stop()
    victim = await top.start_worker()
    async with top.client() as client:
        run_ids = await start_runs(client, 30, "scripted:long")
    await poll(lambda: running_on(top, victim.worker_id or "", run_ids), timeout=60,
               what="30 runs on one worker")  # fmt: skip
    await top.start_workers(2)
    write_scripts(home, long=QUICK)
    killed = time.monotonic()
    await victim.kill()

    async def recovered() -> bool:
        found = await statuses(top, run_ids)
        return all(row.attempt >= 2 for row in found.values())

    await poll(recovered, timeout=60, what="recovery", every=0.05)
    took = time.monotonic() - killed

    async def completed() -> bool:
        found = await statuses(top, run_ids)
        return all(row.status == "completed" for row in found.values())

    await poll(completed, timeout=60, what="recovered runs completed")
    return {"recovery_s": took}


# --- --cancel-bus: cross-process cancel with the Redis bus (issue 15) --------------------------

CANCEL_DEPLOYMENTS = ("redis", "postgres", "embedded")


async def cancel_across(args: argparse.Namespace) -> dict[str, Any]:
    """``--cancels`` long runs per deployment, each cancelled with ``?wait=true`` through an
    API process other than the one that started it, staggered over 4 s (every phase of the
    owners' 2-s heartbeat): 2 ``serve --no-worker`` + 3 workers with Redis (``redis``), the
    same on PostgreSQL alone (``postgres``: the heartbeat fallback), and one embedded ``culm
    serve`` (``embedded``: the run is in the process asked). Deployments alternate per round."""
    took: dict[str, list[float]] = {name: [] for name in CANCEL_DEPLOYMENTS}
    for _ in range(args.cancel_rounds):
        for name in CANCEL_DEPLOYMENTS:
            took[name] += await _cancel_round(args, name)
    results: dict[str, Any] = {}
    for name, values in took.items():
        ms = [value * 1000 for value in values]
        results |= {f"cancel_{name}_p50_ms": percentile(ms, 0.5),
                    f"cancel_{name}_p99_ms": percentile(ms, 0.99),
                    f"cancel_{name}_max_ms": max(ms)}  # fmt: skip
    results["cancel_embedded_over_redis_p50"] = (
        results["cancel_redis_p50_ms"] / results["cancel_embedded_p50_ms"]
    )
    return results


async def _cancel_round(args: argparse.Namespace, deployment: str) -> list[float]:
    home = Path(tempfile.mkdtemp(prefix="culm-bench-cancel-"))
    write_scripts(home, long=streaming(120, every=0.05))
    env = {"CULM_REDIS_URL": args.redis, "CULM_REDIS_PREFIX": f"culm-bench-{uuid.uuid4().hex}:"}
    async with (
        fresh_database(args.postgres) as url,
        topology(url, home, **(env if deployment == "redis" else {})) as top,
    ):
        if deployment == "embedded":
            apis = [await top.start_serve()]
        else:
            apis = [await top.start_api(), await top.start_api()]
            await top.start_workers(3)
        # Idle connections dropped before the server's keep-alive (5 s) closes them under a request.
        limits = httpx2.Limits(keepalive_expiry=1.0)
        clients = [
            httpx2.AsyncClient(base_url=api.url or "", timeout=60, limits=limits) for api in apis
        ]
        try:
            run_ids = await start_runs(clients[0], args.cancels, "scripted:long")

            async def all_running() -> bool:
                found = await statuses(top, run_ids)
                return all(row.status == "running" for row in found.values())

            await poll(all_running, timeout=60, what="runs running")
            await asyncio.sleep(2)  # the workers' control listeners are up (after their start)

            async def one(i: int, run_id: str) -> float:
                await asyncio.sleep(4.0 * i / len(run_ids))
                sent = time.monotonic()
                response = await clients[(i + 1) % len(clients)].post(
                    f"/v1/runs/{run_id}/cancel", params={"wait": "true", "timeout": 30}
                )
                assert response.json()["status"] == "cancelled", response.text
                return time.monotonic() - sent

            return list(await asyncio.gather(*(one(i, r) for i, r in enumerate(run_ids))))
        finally:
            for client in clients:
                await client.aclose()


def machine() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "load_1m": os.getloadavg()[0],
    }


async def bus_main(args: argparse.Namespace) -> int:
    from bench.bus_delivery import TARGETS as BUS_TARGETS
    from bench.bus_delivery import bus_benchmark

    TARGETS.update(BUS_TARGETS)
    results: dict[str, Any] = {"machine": machine()}
    cases = await bus_benchmark(
        fresh_database, args.postgres, args.redis, args.bus_tokens, args.bus_rate, args.bus_case,
        args.bus_flush_interval,
    )  # fmt: skip
    for name, case in cases.items():
        for key in ("p50_ms", "p99_ms", "pg_xact_per_s"):
            if case[key] is not None:
                results[f"{name}_{key}"] = float(case[key])
    violations = sum(case["violations"] for case in cases.values())
    results["checks"] = "ok" if not violations else f"FAILED: {violations} stream violations"
    results["machine"]["load_1m_after"] = os.getloadavg()[0]
    if args.json:
        print(json.dumps({**results, "cases": cases}, indent=2, default=str))
    else:
        report(results)
    return 1 if violations else 0


async def main(args: argparse.Namespace) -> int:
    if args.bus:
        return await bus_main(args)
    results: dict[str, Any] = {"machine": machine()}
    if args.cancel_bus:
        results |= await cancel_across(args)
        results["machine"]["load_1m_after"] = os.getloadavg()[0]
        if args.json:
            print(json.dumps(results, indent=2, default=str))
        else:
            report(results)
        return 0
    home = Path(tempfile.mkdtemp(prefix="culm-bench-"))
    write_scripts(home, short={"turns": [[{"text": "done"}]]}, long=streaming(120, every=0.25))
    async with (
        fresh_database(args.postgres) as url,
        topology(url, home, CULM_RECOVERY_POLICY="requeue") as top,
    ):
        await top.start_api()
        await top.start_workers(3)
        await asyncio.sleep(3)  # a couple of heartbeats: the workers are idle and settled
        scenarios = args.scenarios.split(",")
        if "latency" in scenarios:
            results |= await latency(top, args.latency_runs)
        if "drain" in scenarios:
            results |= await drain(top, args.drain_runs)
        if "cancel" in scenarios:
            results |= await cancel(top, args.cancels)
        if "recovery" in scenarios:
            results |= await recovery(top, home)
        try:
            summary = await invariants.check(top.db, stuck_grace=4.0)
            results["checks"] = f"ok ({summary.runs} runs, {summary.events} events)"
            failed = False
        except AssertionError as exc:
            results["checks"] = f"FAILED: {exc}"
            failed = True
    results["machine"]["load_1m_after"] = os.getloadavg()[0]
    if args.json:
        print(json.dumps(results, indent=2, default=str))
    else:
        report(results)
    return 1 if failed else 0


def report(results: dict[str, Any]) -> None:
    for key, value in results.items():
        if key == "machine":
            print(f"machine: {value}")
            continue
        verdict = ""
        if key in TARGETS:
            op, target = TARGETS[key]
            checks = {"<=": value <= target, "<": value < target, ">=": value >= target}
            ok = checks[op]
            verdict = f"  target {op} {target}: {'ok' if ok else 'MISS'}"
        shown = f"{value:.3f}" if isinstance(value, float) else str(value)
        print(f"{key:28} {shown}{verdict}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--postgres",
        default=os.environ.get(
            "CULM_TEST_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
        ),
        help="a PostgreSQL server (URL of an existing database) to create the bench's in",
    )
    parser.add_argument("--latency-runs", type=int, default=200)
    parser.add_argument("--drain-runs", type=int, default=1200)
    parser.add_argument("--cancels", type=int, default=60)
    parser.add_argument(
        "--scenarios", default="latency,drain,cancel,recovery", help="which to run (comma list)"
    )
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--bus", action="store_true", help="the event bus scenarios only")
    parser.add_argument("--bus-tokens", type=int, default=300)
    parser.add_argument("--bus-rate", type=float, default=50.0)
    parser.add_argument(
        "--bus-flush-interval", type=float,
        help="CULM_EVENT_FLUSH_INTERVAL of the deployment's processes (default: culm's own)",
    )  # fmt: skip
    parser.add_argument(
        "--bus-case", action="append", help="only this case, e.g. redis:1000 (repeatable)"
    )
    parser.add_argument(
        "--cancel-bus", action="store_true",
        help="only cross-process cancel: with Redis, PostgreSQL alone, and embedded",
    )  # fmt: skip
    parser.add_argument("--cancel-rounds", type=int, default=2)
    parser.add_argument(
        "--redis", default=os.environ.get("CULM_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
    )
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(asyncio.run(main(parse_args())))
