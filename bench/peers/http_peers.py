"""`culm serve` against `langgraph dev`, over their HTTP APIs (bench/peers.py's ``http`` scenario).

Each measurement starts a fresh server process on a free port, waits until it answers, and
drives ``--conc-runs`` runs ``--concurrency`` at a time from this process (httpx2), with the
same two-round task at the same fake upstream:

* culm: ``POST /v1/runs`` (a headless run; its tool is the built-in ``list_dir`` on an empty
  workspace, since ``culm serve`` loads no bench tool), then ``GET /v1/runs/{id}/events`` (SSE)
  to the terminal event; every event stored in SQLite;
* LangGraph: ``POST /runs/stream`` (a stateless run of bench/peers/graph.py, ``stream_mode``
  ``messages-tuple``) on ``langgraph dev`` (in-memory runtime, ``--n-jobs-per-worker`` set to the
  concurrency, as culm's worker concurrency is).

Figures: runs/s, first-token p50/p99 (from the POST to the first token event the client reads),
and the server's CPU per run (the process and its children, from /proc).
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

import harness
import httpx2

HERE = Path(__file__).resolve().parent
TICK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def tree_cpu_seconds(root: int) -> float:
    """utime + stime of ``root`` and every live descendant (ended children are not counted)."""
    parents: dict[int, int] = {}
    times: dict[int, float] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(entry.name)] = int(fields[1])
        times[int(entry.name)] = (int(fields[11]) + int(fields[12])) / TICK
    total = 0.0
    for pid, cpu in times.items():
        ancestor = pid
        while ancestor not in (0, 1, root):
            ancestor = parents.get(ancestor, 0)
        if ancestor == root:
            total += cpu
    return total


class Server:
    """One server process; ``run_once`` is one run through its HTTP API (harness.System)."""

    name = ""
    health = ""

    def __init__(self, base_url: str, concurrency: int) -> None:
        self.upstream = base_url
        self.concurrency = concurrency
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.home = tempfile.TemporaryDirectory(prefix="peers-http-")
        self.log = open(Path(self.home.name) / "server.log", "w+b")  # noqa: SIM115 (closed in stop)
        self.process: subprocess.Popen[bytes] | None = None
        self.client: httpx2.AsyncClient | None = None

    def command(self) -> tuple[list[str], dict[str, str], Path | None]:
        raise NotImplementedError

    def start_process(self) -> None:
        command, env, cwd = self.command()
        self.process = subprocess.Popen(
            command, env={**os.environ, **env}, cwd=cwd, stdout=self.log, stderr=self.log
        )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            try:
                if httpx2.get(self.url + self.health, timeout=2).status_code == 200:
                    return
            except httpx2.HTTPError:
                pass
            time.sleep(0.2)
        self.log.seek(0)
        raise RuntimeError(f"{self.name} did not start: {self.log.read()[-3000:]!r}")

    def stop_process(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()
        self.home.cleanup()

    async def start(self, args: argparse.Namespace) -> None:
        limits = httpx2.Limits(max_connections=None, max_keepalive_connections=None)
        self.client = httpx2.AsyncClient(base_url=self.url, timeout=120, limits=limits)

    async def close(self) -> None:
        if self.client is not None:
            await self.client.aclose()

    async def run_once(self, on_token: harness.OnToken) -> None:
        raise NotImplementedError


class CulmServe(Server):
    health = "/health"

    def __init__(
        self, base_url: str, concurrency: int, name: str = "culm", env: dict[str, str] | None = None
    ) -> None:
        super().__init__(base_url, concurrency)
        self.name = name
        self.env = env or {}  # culm@NAME: PYTHONPATH to another checkout's src

    def command(self) -> tuple[list[str], dict[str, str], Path | None]:
        env = {
            "CULM_HOME": self.home.name,
            "OPENAI_BASE_URL": self.upstream,
            "OPENAI_API_KEY": "bench",
            "CULM_WORKER_CONCURRENCY": str(max(64, self.concurrency)),
        }
        if "PYTHONPATH" in self.env:
            env["PYTHONPATH"] = self.env["PYTHONPATH"]
        return [sys.executable, "-m", "culm", "serve", "--port", str(self.port)], env, None

    async def run_once(self, on_token: harness.OnToken) -> None:
        assert self.client is not None
        body = {
            "message": "Call the tool, then answer.",
            "model": "openai:gpt-bench",
            "tools": ["list_dir"],
        }
        answer = await self.client.post("/v1/runs", json=body)
        answer.raise_for_status()
        run_id = answer.json()["run_id"]
        last = ""
        async with self.client.stream("GET", f"/v1/runs/{run_id}/events") as events:
            async for line in events.aiter_lines():
                if line.startswith("data:"):
                    event = json.loads(line[5:])
                    if event["type"] == "token":
                        on_token(event["content"])
                    last = event["type"]
        if last != "complete":
            raise RuntimeError(f"run {run_id} ended with {last!r}")


class LangGraphDev(Server):
    name = "langgraph-dev"
    health = "/ok"

    def __init__(self, base_url: str, concurrency: int, peers_python: Path) -> None:
        super().__init__(base_url, concurrency)
        self.cli = peers_python.parent / "langgraph"

    def command(self) -> tuple[list[str], dict[str, str], Path | None]:
        command = [str(self.cli), "dev", "--port", str(self.port), "--no-browser", "--no-reload"]
        command += ["--n-jobs-per-worker", str(self.concurrency)]
        # langgraph.json as here, with absolute paths: the server runs in its temporary
        # directory, where the dev server flushes its in-memory state.
        config = Path(self.home.name) / "langgraph.json"
        spec = {"dependencies": [str(HERE)], "graphs": {"bench": f"{HERE / 'graph.py'}:graph"}}
        config.write_text(json.dumps(spec))
        command += ["--config", str(config)]
        env = {
            "BENCH_UPSTREAM": self.upstream,
            "LANGSMITH_TRACING": "false",
            "LANGGRAPH_CLI_NO_ANALYTICS": "1",
        }
        return command, env, Path(self.home.name)

    async def run_once(self, on_token: harness.OnToken) -> None:
        assert self.client is not None
        body = {
            "assistant_id": "bench",
            "input": {"messages": [{"role": "user", "content": "Call noop, then answer."}]},
            "stream_mode": ["messages-tuple"],
        }
        kind = ""
        async with self.client.stream("POST", "/runs/stream", json=body) as events:
            events.raise_for_status()
            async for line in events.aiter_lines():
                if line.startswith("event:"):
                    kind = line[6:].strip()
                elif line.startswith("data:") and kind == "messages":
                    chunk = json.loads(line[5:])[0]
                    if chunk.get("type") == "AIMessageChunk" and chunk.get("content"):
                        on_token(chunk["content"])
                elif line.startswith("data:") and kind == "error":
                    raise RuntimeError(f"langgraph dev: {line[5:].strip()}")


def measure(server: Server, args: argparse.Namespace) -> dict[str, Any]:
    """Warm-up runs, then ``--conc-runs`` runs ``--concurrency`` at a time; the same JSON as a
    runner process's, with the server's CPU per run."""
    runner_args = argparse.Namespace(
        runs=args.conc_runs, warmup=args.warmup, concurrency=args.concurrency, tokens=args.tokens
    )
    scenario = harness.Scenario(server, runner_args)
    server.start_process()
    try:

        async def drive() -> dict[str, Any]:
            await server.start(runner_args)
            try:
                for _ in range(args.warmup):
                    await scenario.one()
                runner_args.warmup = 0
                assert server.process is not None
                cpu = tree_cpu_seconds(server.process.pid)
                figures = await harness.concurrent(scenario)
                cpu = tree_cpu_seconds(server.process.pid) - cpu
                figures["client_cpu_ms_per_run"] = figures.pop("cpu_ms_per_run")
                figures["server_cpu_ms_per_run"] = cpu / args.conc_runs * 1000
                return figures
            finally:
                await server.close()

        figures = asyncio.run(drive())
    finally:
        server.stop_process()
    return {
        "system": server.name,
        "scenario": "http",
        "runs": args.conc_runs,
        "runs_started": scenario.started_runs,
        "token_events": scenario.token_events,
        "errors": scenario.errors[:20],
        "error_count": len(scenario.errors),
        **figures,
    }
