"""What 10,000 runs waiting for a person cost a server (issue 18, "waiting is durable and free").

    .venv/bin/python bench/waiting.py [--runs 10000] [--database-url URL] [--batch 200]

Starts a real embedded ``culm serve`` (SQLite under a fresh ``CULM_HOME``, or the PostgreSQL
database given), and measures its resident memory (RSS, from ``/proc``):

1. ``baseline``: after start-up and one completed run (imports and pools warm);
2. ``parked``: once ``--runs`` runs (each a session of its own, posted ``--batch`` at a time)
   have made their model call and parked ``waiting`` for an approval of ``list_dir``. The
   process executed every one of them, so this includes what its allocator kept of running
   ``worker_concurrency`` of them at once (CPython rarely gives freed memory back);
3. ``restarted``: a fresh ``culm serve`` on the same database, every run still waiting: what
   the waiting runs cost a process that never ran them (nothing, if they cost rows only).

Also the database's growth per waiting run (the SQLite file's size; PostgreSQL's
``pg_database_size``), and the time to park them all. Then one run is answered, and must
complete, as a check that the waiting runs are live. ``--control`` posts the same runs without
the approval (they complete), for what the process keeps of running that many runs at all. Not
a test: the figures are in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import asyncpg
import httpx2
import sqlalchemy as sa

LIST = {"tool_call": {"name": "list_dir", "arguments": {"path": "."}}}
SCRIPT = {"turns": [[LIST], [{"text": "ok"}]]}
BODY = {
    "message": "list it",
    "model": "scripted:lister",
    "tools": ["list_dir"],
    "require_approval": ["list_dir"],
}


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def serve(home: Path, env: dict[str, str]) -> tuple[asyncio.subprocess.Process, str]:
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "culm", "serve", "--port", str(port),
        env={**env, "CULM_HOME": str(home)}, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    async with httpx2.AsyncClient(base_url=url) as client, asyncio.timeout(60):
        while True:
            try:
                if (await client.get("/health")).status_code == 200:
                    return process, url
            except httpx2.TransportError:
                await asyncio.sleep(0.1)


async def stop(process: asyncio.subprocess.Process) -> None:
    process.send_signal(signal.SIGTERM)
    await process.wait()


async def scalar(url: str | None, home: Path, query: str) -> int:
    """One number read from the database (SQLite: the file, read without a server)."""
    if url is None:
        with sqlite3.connect(home / "culm.db") as conn:
            return int(conn.execute(query).fetchone()[0] or 0)
    parsed = sa.make_url(url)
    conn = await asyncpg.connect(
        host=parsed.host, port=parsed.port or 5432, user=parsed.username,
        password=parsed.password, database=parsed.database,
    )  # fmt: skip
    try:
        return int(await conn.fetchval(query) or 0)
    finally:
        await conn.close()


async def waiting_runs(url: str | None, home: Path) -> int:
    """Runs ``waiting`` now, counted in the database (the API lists at most 1,000)."""
    return await scalar(url, home, "SELECT count(*) FROM runs WHERE status = 'waiting'")


async def database_bytes(url: str | None, home: Path) -> int:
    if url is None:
        return sum(path.stat().st_size for path in home.glob("culm.db*"))
    return await scalar(url, home, "SELECT pg_database_size(current_database())")


async def park(
    client: httpx2.AsyncClient, args: argparse.Namespace, home: Path, status: str
) -> float:
    """Post ``args.runs`` runs and return once they are all ``status`` (``waiting``, or
    ``completed`` for the control: the same runs without the approval)."""
    body = BODY if status == "waiting" else {**BODY, "require_approval": []}
    started = time.perf_counter()
    for first in range(0, args.runs, args.batch):
        size = min(args.batch, args.runs - first)
        posted = await asyncio.gather(*(client.post("/v1/runs", json=body) for _ in range(size)))
        assert all(response.status_code == 202 for response in posted), posted[0].text
    query = f"SELECT count(*) FROM runs WHERE status = '{status}'"
    while await scalar(args.database_url, home, query) < args.runs + (status == "completed"):
        await asyncio.sleep(0.5)
    return time.perf_counter() - started


async def main(args: argparse.Namespace) -> dict[str, Any]:
    home = Path(tempfile.mkdtemp(prefix="culm-bench-waiting-"))
    (home / "scripts").mkdir()
    (home / "scripts" / "lister.json").write_text(json.dumps(SCRIPT))
    env = {k: v for k, v in os.environ.items() if not k.startswith("CULM_")}
    if args.database_url:
        env["CULM_DATABASE_URL"] = args.database_url
    process, url = await serve(home, env)
    figures: dict[str, Any] = {
        "runs": args.runs,
        "database": "postgresql" if args.database_url else "sqlite",
        "control": args.control,
    }
    async with httpx2.AsyncClient(base_url=url, timeout=120) as client:
        warm = (await client.post("/v1/runs", json={**BODY, "require_approval": []})).json()
        await client.get(f"/v1/runs/{warm['run_id']}/wait", params={"timeout": 60})
        figures["baseline_rss_mib"] = round(rss_mib(process.pid), 1)
        db_before = await database_bytes(args.database_url, home)
        parked = await park(client, args, home, "completed" if args.control else "waiting")
        figures["park_seconds"] = round(parked, 1)
        figures["parked_rss_mib"] = round(rss_mib(process.pid), 1)
        figures["db_bytes_per_waiting_run"] = round(
            (await database_bytes(args.database_url, home) - db_before) / args.runs
        )
    await stop(process)
    if args.control:
        return _per_run(figures, args.runs)
    process, url = await serve(home, env)
    async with httpx2.AsyncClient(base_url=url, timeout=120) as client:
        assert await waiting_runs(args.database_url, home) == args.runs
        figures["restarted_rss_mib"] = round(rss_mib(process.pid), 1)
        [run] = (await client.get("/v1/runs", params={"status": "waiting", "limit": 1})).json()[
            "runs"
        ]
        [request] = (await client.get(f"/v1/runs/{run['run_id']}/input")).json()["requests"]
        answer = {"request_id": request["request_id"], "approve": True}
        await client.post(f"/v1/runs/{run['run_id']}/input", json=answer)
        done = (await client.get(f"/v1/runs/{run['run_id']}/wait", params={"timeout": 60})).json()
        assert done["status"] == "completed", done
    await stop(process)
    return _per_run(figures, args.runs)


def _per_run(figures: dict[str, Any], runs: int) -> dict[str, Any]:
    grown = figures["parked_rss_mib"] - figures["baseline_rss_mib"]
    figures["parked_minus_baseline_bytes_per_run"] = round(grown * 1024 * 1024 / runs)
    return figures


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--batch", type=int, default=200)
    parser.add_argument("--database-url", default=None)
    parser.add_argument(
        "--control",
        action="store_true",
        help="the same runs without the approval: they complete (what running them leaves)",
    )
    print(json.dumps(asyncio.run(main(parser.parse_args())), indent=2))
