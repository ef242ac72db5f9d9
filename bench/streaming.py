"""Streaming cost: culm alone against a fake OpenAI upstream whose tokens come ``--delay-ms`` apart.

The figures issue #16 is about, measured on culm only (``bench/peers.py`` puts them side by
side with other frameworks): one run at a time (wall and CPU per run, the writer thread
included), ``--runs`` runs ``--concurrency`` at a time (runs/s, CPU per run, first-token latency
from ``start_run`` to the first ``token`` a subscriber receives), and ``--parked`` runs started at
once against an upstream that never answers (seconds until every one is waiting on its model).
Every run is one round of ``--tokens`` tokens; each event is consumed by a subscriber and the
check at the end fails (exit 1) if any run's stored events are not exactly seq 1..n.

    .venv/bin/python bench/streaming.py                      # ~1 min
    .venv/bin/python bench/streaming.py --only sequential --json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import culm

HERE = Path(__file__).resolve().parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_upstream(tokens: int, delay_ms: float) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    command = [sys.executable, str(HERE / "fake_openai.py"), "--port", str(port)]
    command += ["--chunks", str(tokens), "--chunk-delay-ms", str(delay_ms)]
    process = subprocess.Popen(command)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return process, port
        except OSError:
            time.sleep(0.05)
    process.kill()
    raise RuntimeError("the fake upstream did not start")


def percentile(values: list[float], fraction: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


async def one_run(engine: culm.Engine, first_token: list[float], errors: list[str]) -> None:
    session = await engine.create_session(model="openai:bench")
    began = time.perf_counter()
    run = await engine.start_run(session.session_id, "go")
    expected = 1
    seen_token = False
    async for event in engine.subscribe(run.run_id):
        if event.type == "token" and not seen_token:
            seen_token = True
            first_token.append(time.perf_counter() - began)
        if event.seq != expected:
            errors.append(f"run {run.run_id}: seq {event.seq}, expected {expected}")
        expected = event.seq + 1
    if event.type != "complete":
        errors.append(f"run {run.run_id}: ended with {event.type}")
    stored = [e.seq for e in await engine.store.read_events(run.run_id)]
    if stored != list(range(1, expected)):
        errors.append(f"run {run.run_id}: stored seqs are not 1..{expected - 1}")


async def sequential(engine: culm.Engine, args: argparse.Namespace) -> dict[str, Any]:
    first: list[float] = []
    errors: list[str] = []
    for _ in range(3):  # warm up: connections, statement caches
        await one_run(engine, [], errors)
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(args.sequential):
        await one_run(engine, first, errors)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    return {
        "runs": args.sequential,
        "wall_ms_per_run": 1000 * wall / args.sequential,
        "cpu_ms_per_run": 1000 * cpu / args.sequential,
        "first_token_p50_ms": 1000 * percentile(first, 0.5),
        "errors": errors,
    }


async def concurrent(engine: culm.Engine, args: argparse.Namespace) -> dict[str, Any]:
    first: list[float] = []
    errors: list[str] = []
    gate = asyncio.Semaphore(args.concurrency)

    async def bounded() -> None:
        async with gate:
            await one_run(engine, first, errors)

    cpu, wall = time.process_time(), time.perf_counter()
    async with asyncio.TaskGroup() as group:
        for _ in range(args.runs):
            group.create_task(bounded())
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    return {
        "runs": args.runs,
        "concurrency": args.concurrency,
        "runs_per_s": args.runs / wall,
        "cpu_ms_per_run": 1000 * cpu / args.runs,
        "first_token_p50_ms": 1000 * percentile(first, 0.5),
        "first_token_p99_ms": 1000 * percentile(first, 0.99),
        "errors": errors,
    }


async def parked(engine: culm.Engine, args: argparse.Namespace) -> dict[str, Any]:
    sessions = [await engine.create_session(model="openai:bench") for _ in range(args.parked)]
    began = time.perf_counter()
    runs = [await engine.start_run(s.session_id, "go") for s in sessions]
    started = time.perf_counter() - began
    while True:
        rows = [await engine.get_run(run.run_id) for run in runs]
        if all(row.round_count >= 1 for row in rows):
            break
        await asyncio.sleep(0.02)
    waiting = time.perf_counter() - began
    for run in runs:
        await engine.cancel(run.run_id)
    return {"runs": args.parked, "start_s": started, "all_waiting_s": waiting, "errors": []}


SCENARIOS = {"sequential": sequential, "concurrent": concurrent, "parked": parked}


async def scenario(name: str, args: argparse.Namespace, port: int) -> dict[str, Any]:
    os.environ["OPENAI_BASE_URL"] = f"http://127.0.0.1:{port}/v1"
    os.environ["OPENAI_API_KEY"] = "bench"
    with tempfile.TemporaryDirectory() as home:
        settings = culm.Settings(home=Path(home), worker_concurrency=max(64, args.parked))
        async with culm.Engine(settings) as engine:
            return await SCENARIOS[name](engine, args)


def loop_factory(uvloop: bool) -> Any:
    if not uvloop:
        return None
    import uvloop as module

    return module.new_event_loop


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=100)
    parser.add_argument("--delay-ms", type=float, default=5.0)
    parser.add_argument("--sequential", type=int, default=20)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--parked", type=int, default=1000)
    parser.add_argument("--only", choices=sorted(SCENARIOS), action="append")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--uvloop", action="store_true", help="run the engine on uvloop")
    args = parser.parse_args()
    results: dict[str, Any] = {"load": os.getloadavg()[0]}
    for name in args.only or list(SCENARIOS):
        tokens, delay = (1, 60_000.0) if name == "parked" else (args.tokens, args.delay_ms)
        upstream, port = start_upstream(tokens, delay)
        try:
            with asyncio.Runner(loop_factory=loop_factory(args.uvloop)) as runner:
                results[name] = runner.run(scenario(name, args, port))
        finally:
            upstream.terminate()
            upstream.wait()
    if args.json:
        print(json.dumps(results))
    else:
        for name, figures in results.items():
            print(name, figures)
    failed = [e for r in results.values() if isinstance(r, dict) for e in r["errors"]]
    for error in failed[:10]:
        print("ERROR", error, file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
