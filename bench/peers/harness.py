"""The measuring side of one system's runner process, shared by every runner in bench/peers/.

Standard library only: it runs under culm's .venv (run_culm.py) and under bench/.venv-peers (the
peers' runners) alike. A runner gives a :class:`System` (open, one run that streams, close);
this module runs one scenario against it, checks every run's answer, and prints one JSON line
(the last line of stdout) for bench/peers.py:

* ``seq``: ``--runs`` runs one at a time, after ``--warmup`` unmeasured ones: wall per run,
  process CPU per run (every thread: culm's SQLite writer thread counts).
* ``conc``: ``--runs`` runs, ``--concurrency`` at a time: runs/s, CPU per run, first-token
  latency (from the moment a run is started to the first token its consumer sees).
* ``parked``: ``--runs`` runs at once against an upstream that does not answer: the time until
  the upstream holds every run's request at once (``/stats``: ``parked_now``; at most
  ``--park-timeout``), the process CPU until then, and the RSS they added, per run. The process
  then exits without waiting for them.
* ``cold``: one run in a fresh process; reports the wall time when it ended, so that the caller
  (which knows when it spawned the process) can tell the cold start.

A run's answer must be exactly the upstream's (``w0 w1 … w{n-1} ``, counted token by token as
the consumer saw them); anything else is an error in the output, and bench/peers.py fails.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import sys
import time
import traceback
import urllib.request
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

OnToken = Callable[[str], None]


class System(Protocol):
    name: str

    async def start(self, args: argparse.Namespace) -> None: ...

    async def run_once(self, on_token: OnToken) -> None:
        """One run of the two-round tool task; every streamed token goes to ``on_token``."""

    async def close(self) -> None: ...


class Run:
    """What one run's consumer saw: when it started, its first token, the text."""

    __slots__ = ("first_token", "pieces", "started")

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.first_token = 0.0
        self.pieces: list[str] = []

    def on_token(self, text: str) -> None:
        if not self.pieces:
            self.first_token = time.perf_counter() - self.started
        self.pieces.append(text)


class Scenario:
    def __init__(self, system: System, args: argparse.Namespace) -> None:
        self.system = system
        self.args = args
        self.expected = "".join(f"w{i} " for i in range(args.tokens))
        self.errors: list[str] = []
        self.started_runs = 0
        self.token_events = 0

    async def one(self) -> Run:
        run = Run()
        self.started_runs += 1
        try:
            await self.system.run_once(run.on_token)
        except Exception as exc:  # a failed run is a finding, reported with the others
            self.errors.append(f"run failed: {type(exc).__name__}: {exc}")
            return run
        text = "".join(run.pieces)
        self.token_events += len(run.pieces)
        if text != self.expected:
            self.errors.append(
                f"answer of {len(text)} chars in {len(run.pieces)} token events, expected "
                f"{len(self.expected)} chars: {text[:60]!r}"
            )
        return run


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] if ordered else 0.0


def upstream_parked(stats_url: str) -> int:
    """The requests the upstream holds now: a run whose client timed out and retried counts
    once, not once per try."""
    with urllib.request.urlopen(stats_url, timeout=5) as answer:
        return int(json.load(answer)["parked_now"])


async def sequential(s: Scenario) -> dict[str, Any]:
    for _ in range(s.args.warmup):
        await s.one()
    walls: list[float] = []
    cpu = cpu_seconds()
    for _ in range(s.args.runs):
        run = await s.one()
        walls.append(time.perf_counter() - run.started)
    cpu = cpu_seconds() - cpu
    return {
        "wall_ms_p50": percentile(walls, 0.5) * 1000,
        "wall_ms_mean": sum(walls) / len(walls) * 1000,
        "cpu_ms_per_run": cpu / s.args.runs * 1000,
    }


async def concurrent(s: Scenario) -> dict[str, Any]:
    for _ in range(s.args.warmup):
        await s.one()
    gate = asyncio.Semaphore(s.args.concurrency)
    firsts: list[float] = []

    async def gated() -> None:
        async with gate:
            run = await s.one()
            if run.pieces:
                firsts.append(run.first_token)

    cpu = cpu_seconds()
    started = time.perf_counter()
    await asyncio.gather(*(gated() for _ in range(s.args.runs)))
    wall = time.perf_counter() - started
    cpu = cpu_seconds() - cpu
    return {
        "runs_per_s": s.args.runs / wall,
        "wall_s": wall,
        "cpu_ms_per_run": cpu / s.args.runs * 1000,
        "first_token_ms_p50": percentile(firsts, 0.5) * 1000,
        "first_token_ms_p99": percentile(firsts, 0.99) * 1000,
    }


async def parked(s: Scenario) -> dict[str, Any]:
    """Start every run at once; wait until the upstream holds all their requests."""
    stats_url = s.args.stats_url
    base = await asyncio.to_thread(upstream_parked, stats_url)
    rss = rss_mb()
    started, started_at, cpu = time.perf_counter(), time.time(), cpu_seconds()
    tasks = [asyncio.create_task(s.one()) for _ in range(s.args.runs)]
    seen = 0
    while time.perf_counter() - started < s.args.park_timeout:
        await asyncio.sleep(0.02)
        seen = await asyncio.to_thread(upstream_parked, stats_url) - base
        if seen >= s.args.runs:
            break
    waited, cpu = time.perf_counter() - started, cpu_seconds() - cpu
    added = rss_mb() - rss
    failed = [t for t in tasks if t.done()]
    if failed:
        s.errors.append(f"{len(failed)} parked runs ended before the upstream answered")
    # Not all on the wire by the deadline (a capped connection pool) is a finding, not an error:
    # all_waiting_s is then the deadline, a lower bound, and all_waiting says so.
    return {
        "all_waiting_s": waited,
        "all_waiting": seen >= s.args.runs,
        "requests_seen": seen,
        "cpu_s": cpu,  # the process's, every thread, until all waited (or the deadline)
        "held_before": base,  # by the upstream when the runs started: 0 unless another's
        "runs_started_at": started_at,  # wall clock: the caller knows when it spawned us
        "rss_mb_added": added,
        "rss_kb_per_run": added * 1024 / s.args.runs,
    }


async def cold(s: Scenario) -> dict[str, Any]:
    await s.one()
    return {"first_run_done_at": time.time()}


SCENARIOS: dict[str, Callable[[Scenario], Awaitable[dict[str, Any]]]] = {
    "seq": sequential,
    "conc": concurrent,
    "parked": parked,
    "cold": cold,
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="one system's runner for bench/peers.py")
    parser.add_argument("scenario", choices=sorted(SCENARIOS))
    parser.add_argument("--base-url", required=True, help="the fake upstream, up to /v1")
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--tokens", type=int, default=100, help="the upstream's --chunks")
    parser.add_argument(
        "--park-timeout", type=float, default=45.0, help="under the upstream's --park-s"
    )
    parser.add_argument("--option", action="append", default=[], help="NAME=VALUE for the system")
    args = parser.parse_args(argv)
    args.stats_url = args.base_url.removesuffix("/v1") + "/stats"
    args.options = dict(item.split("=", 1) for item in args.option)
    return args


async def measure(system: System, args: argparse.Namespace) -> dict[str, Any]:
    scenario = Scenario(system, args)
    await system.start(args)
    figures = await SCENARIOS[args.scenario](scenario)
    result = {
        "system": system.name,
        "source": getattr(system, "source", None),  # where culm was imported from
        "scenario": args.scenario,
        "runs": args.runs,
        "runs_started": scenario.started_runs,
        "token_events": scenario.token_events,
        "errors": scenario.errors[:20],
        "error_count": len(scenario.errors),
        **figures,
    }
    if args.scenario == "parked":  # leave at once: the runs are still waiting, by design
        report(result)
        discard = getattr(system, "discard", None)  # what would outlive the process
        if discard is not None:
            discard()
        os._exit(0)
    await system.close()
    return result


def report(result: dict[str, Any]) -> None:
    print(json.dumps(result), flush=True)
    sys.stderr.flush()


def main(system: System, argv: list[str] | None = None) -> None:
    """Run one scenario and print its JSON line as the last line of stdout."""
    args = parse_args(argv)
    try:
        result = asyncio.run(measure(system, args))
    except Exception:
        traceback.print_exc()
        result = {"system": system.name, "scenario": args.scenario, "error_count": 1}
        result["errors"] = [traceback.format_exc(limit=3)]
    report(result)
