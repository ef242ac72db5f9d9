"""Live delivery across processes on the Redis event bus (issue 15), for ``distributed.py --bus``.

Three deployments on fresh PostgreSQL databases, measured in one run:

- ``redis``: ``culm serve --no-worker`` (API) + one ``culm worker``, ``CULM_REDIS_URL`` set (the
  shared Redis, a key prefix of the bench's own): the run executes on the worker, its
  subscribers are on the API, fed by the bus;
- ``postgres``: the same processes without Redis (the API follows runs by polling the store:
  the fallback, and the state before issue 15);
- ``in-process``: one embedded ``culm serve``: the subscribers are on the process that runs.

Per case a run on the scripted model waits until every subscriber is connected, then streams
``--bus-tokens`` one-character tokens at ``--bus-rate`` tokens/s; the subscribers are SSE
clients of ``GET /v1/runs/{id}/events`` in two client processes (``stream_fanout.py``'s raw
reader: latency = receive time - the event's ``ts``, and every subscriber must see seq 1, 2, 3 …
once). PostgreSQL load is ``xact_commit + xact_rollback`` of the bench's database in
``pg_stat_database`` (SQLAlchemy ends read-only transactions with a rollback), per second from
the moment the run is let go to its end (every process of the deployment counted).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import multiprocessing
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import asyncpg
import httpx2
import sqlalchemy as sa
from bench.stream_fanout import build_script, client_process, combine, split
from tests.distributed.harness import Topology, topology

SCRIPT = "bench_bus"
CLIENTS = 2
BLOCK = {"turns": [[{"delay": 600}, {"text": "never"}]]}
TARGETS = {
    "redis_100_p50_ms": ("<=", 20.0),
    "redis_100_p99_ms": ("<=", 100.0),
    "redis_1000_p99_ms": ("<", 100.0),
}


async def transactions(url: str) -> int:
    """Transactions of the database so far: commits and rollbacks (a read-only transaction of
    SQLAlchemy's pool ends with a rollback, so commits alone leave the reads out)."""
    parsed = sa.make_url(url)
    conn = await asyncpg.connect(
        host=parsed.host, port=parsed.port or 5432, user=parsed.username,
        password=parsed.password, database=parsed.database,
    )  # fmt: skip
    try:
        await conn.execute("SELECT pg_stat_clear_snapshot()")
        value = await conn.fetchval(
            "SELECT xact_commit + xact_rollback FROM pg_stat_database"
            " WHERE datname = current_database()"
        )
        return int(value)
    finally:
        await conn.close()


def _clients(url: str, subscribers: int) -> tuple[list[Any], list[Any]]:
    context = multiprocessing.get_context("spawn")
    processes, pipes, first = [], [], 0
    for count in split(subscribers, CLIENTS):
        parent, child = context.Pipe()
        process = context.Process(
            target=client_process, args=(url, "raw", first, count, None, child)
        )
        process.start()
        processes.append(process)
        pipes.append(parent)
        first += count
    return processes, pipes


async def _messages(pipes: list[Any], kind: str, timeout: float) -> list[Any]:
    """The first message of ``kind`` from every client process."""
    found: list[Any] = []
    deadline = time.monotonic() + timeout
    waiting = list(pipes)
    while waiting:
        assert time.monotonic() < deadline, f"clients did not send {kind!r}"
        for conn in list(waiting):
            while conn.poll():
                try:
                    got, value = conn.recv()
                except EOFError:  # the client process died (its traceback is on stderr)
                    raise RuntimeError(f"a client process ended before sending {kind!r}") from None
                if got == kind:
                    found.append(value)
                    waiting.remove(conn)
                    break
        await asyncio.sleep(0.02)
    return found


async def _post(client: httpx2.AsyncClient, path: str, body: dict[str, Any]) -> str:
    response = await client.post(path, json=body)
    response.raise_for_status()
    return str(response.json()["run_id"])


async def one_case(
    base_url: str, database_url: str, subscribers: int, tokens: int
) -> dict[str, Any]:
    """One run streamed to ``subscribers``: latency, and PostgreSQL commits/s meanwhile.

    The measured run is queued (``enqueue``) behind a blocking run of its session, and the
    subscribers connect while it waits; cancelling the blocker starts it, so every subscriber
    is attached before its first event whatever the machine's load."""
    async with httpx2.AsyncClient(base_url=base_url, timeout=30) as client:
        session = await client.post("/v1/sessions", json={"model": f"scripted:{SCRIPT}"})
        session.raise_for_status()
        runs = f"/v1/sessions/{session.json()['session_id']}/runs"
        blocker = await _post(client, runs, {"message": "wait", "model": "scripted:block"})
        run_id = await _post(client, runs, {"message": "go", "multitask": "enqueue"})
        url = f"{base_url}/v1/runs/{run_id}/events"
        processes, pipes = _clients(url, subscribers) if subscribers else ([], [])
        await _messages(pipes, "connected", timeout=300)
        await asyncio.sleep(1.0)  # settled: every stream is waiting
        commits_before, started = await transactions(database_url), time.monotonic()
        await client.post(f"/v1/runs/{blocker}/cancel")
        # The client's own 30-s read timeout would cut a run that 1,000 subscribers slow down.
        await client.get(f"/v1/runs/{run_id}/wait", params={"timeout": 120}, timeout=150)
        commits_after, window = await transactions(database_url), time.monotonic() - started
        summaries = await _messages(pipes, "result", timeout=120)
        for process in processes:
            process.join(timeout=10)
        run = (await client.get(f"/v1/runs/{run_id}")).json()
    result = combine(summaries, subscribers, run, tokens) if subscribers else {}
    return {
        "subscribers": subscribers,
        "p50_ms": result.get("latency_p50_ms"),
        "p99_ms": result.get("latency_p99_ms"),
        "max_ms": result.get("latency_max_ms"),
        "pg_xact_per_s": (commits_after - commits_before) / window,
        "window_s": window,
        "violations": result.get("violation_count", 0),
        "violation_sample": result.get("violations", [])[:3],
    }


@contextlib.asynccontextmanager
async def deployment(
    kind: str, database_url: str, home: Path, redis_url: str, flush_interval: float | None = None
) -> AsyncIterator[Topology]:
    env = {"CULM_REDIS_URL": redis_url, "CULM_REDIS_PREFIX": f"culm-bench:{uuid.uuid4().hex[:8]}:"}
    if kind != "redis":
        env = {}
    if flush_interval is not None:  # the event writer's linger (else the backend's default)
        env["CULM_EVENT_FLUSH_INTERVAL"] = str(flush_interval)
    async with topology(database_url, home, **env) as top:
        if kind == "in-process":
            serve = await top.start_serve()
            top.api = serve
        else:
            await top.start_api()
            await top.start_workers(1)
        yield top


async def bus_benchmark(
    fresh_database: Callable[[str], contextlib.AbstractAsyncContextManager[str]],
    postgres: str,
    redis_url: str,
    tokens: int,
    rate: float,
    only: list[str] | None = None,
    flush_interval: float | None = None,
) -> dict[str, Any]:
    cases = {
        "redis": [0, 50, 100, 200, 1000],
        "postgres": [0, 50, 200],
        "in-process": [100, 1000],
    }
    if only:  # "redis:1000" …
        cases = {}
        for case in only:
            kind, _, count = case.partition(":")
            cases.setdefault(kind, []).append(int(count))
    results: dict[str, Any] = {}
    for kind, counts in cases.items():
        for subscribers in counts:
            home = Path(f"/tmp/culm-bench-bus-{uuid.uuid4().hex[:8]}")
            script = build_script(tokens, rate, 0.02, 0.1, burst=False)
            (home / "scripts").mkdir(parents=True)
            (home / "scripts" / f"{SCRIPT}.json").write_text(json.dumps(script))
            (home / "scripts" / "block.json").write_text(json.dumps(BLOCK))
            try:
                async with (
                    fresh_database(postgres) as url,
                    deployment(kind, url, home, redis_url, flush_interval) as top,
                ):
                    case = await one_case(top.api_url, url, subscribers, tokens)
            except Exception as exc:  # a case that broke (a client process died …): say so
                case = {"subscribers": subscribers, "p50_ms": None, "p99_ms": None,
                        "pg_xact_per_s": None, "violations": 1, "error": repr(exc)}  # fmt: skip
            results[f"{kind}_{subscribers}"] = case
            print(f"{kind:10} {subscribers:5} subs: {case}", flush=True)
    return results
