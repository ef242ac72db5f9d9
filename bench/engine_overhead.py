"""Engine overhead: what culm itself costs per run and per event, with a zero-latency model.

Three scenarios, each in a fresh process (so one scenario's memory never shows in another's
figures) with a fresh ``CULM_HOME`` (SQLite, WAL) in a temporary directory:

* ``throughput``: ``--runs`` concurrent runs of ``--rounds`` rounds; each round streams
  ``--tokens`` one-character tokens (one ``token`` event each) and, except the last, calls a
  no-op read-only tool. One subscriber per run consumes every event. Reports runs/s, events/s
  (all persisted and all delivered), emit→subscriber latency (p50/p99/max, and for the terminal
  event alone), CPU use and RSS, then checks that every subscriber saw seq 1..n once and in order
  and that the store holds exactly those events.
* ``slow``: ``--slow-model-runs`` concurrent runs that wait on a model that answers after an
  hour. Reports RSS once all of them are waiting, then how long cancelling all of them (with
  ``wait=True``) took.
* ``churn``: ``--churn`` short runs in waves of ``--wave`` concurrent runs; every
  ``--sample-every`` runs (default: a tenth of them) it samples RSS after a ``gc.collect()``, the
  number of live Python objects and ``len(engine.registry)``, to show whether memory stays flat.

Run it from the repository root (``make bench`` runs the first line)::

    .venv/bin/python bench/engine_overhead.py                               # defaults, < 1 min
    .venv/bin/python bench/engine_overhead.py --only churn --churn 10000    # ~2 min
    .venv/bin/python bench/engine_overhead.py --only throughput --runs 200 --json

Results, and where the time goes: ``docs/benchmarks.md``.

Missed targets print MISS but exit 0; the exit status is 1 only when something is wrong (an
event missing or duplicated, a run not ending as expected, the registry not emptying).
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import gc
import json
import multiprocessing
import platform
import resource
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, ClassVar

import psutil

import culm

TOOL_NAME = "bench_noop"
EVENTS_PER_SECOND_TARGET = 20_000
SLOW_RSS_TARGET_MB = 200.0
# RSS growth from 20% of the churn runs to the end that still counts as flat (SQLite page
# caches and allocator arenas settle within a few MB).
FLAT_RSS_GROWTH_MB = 10.0

Result = dict[str, Any]


class NoopTool(culm.Tool):
    """A read-only tool that returns at once: the round trip costs only the engine."""

    name: ClassVar[str] = TOOL_NAME
    description: ClassVar[str] = "Does nothing and returns 'ok'."
    parameters: ClassVar[dict[str, Any]] = {"type": "object", "properties": {}}
    read_only: ClassVar[bool] = True

    async def run(self, arguments: dict[str, Any], ctx: culm.ToolContext) -> str:
        return "ok"


# Measuring


def rss_mb() -> float:
    return float(psutil.Process().memory_info().rss) / 2**20


def peak_rss_mb() -> float:
    """The process's peak RSS so far (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def percentile(values: list[float], fraction: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


class Consumer:
    """One subscriber per run: checks the order, counts, and (with ``record``) keeps each event's
    latency and each stream's last event type. Churn turns ``record`` off, so that the bench's
    own lists do not show as growing memory."""

    def __init__(self, *, record: bool = True) -> None:
        self.record = record
        self.delivered = 0
        self.latencies: list[float] = []
        self.errors: list[str] = []
        self.terminal: dict[str, str] = {}
        # The terminal event is handed out only once the run's end is stored: a slower path.
        self.terminal_latencies: list[float] = []

    async def consume(self, engine: culm.Engine, run_id: str) -> None:
        expected = 1
        last_type = ""
        latency = float("nan")
        latencies = self.latencies
        async for event in engine.subscribe(run_id):
            latency = time.time() - event.ts.timestamp()
            if self.record:
                latencies.append(latency)
            if event.seq != expected:
                self.errors.append(f"run {run_id}: got seq {event.seq}, expected {expected}")
            expected = event.seq + 1
            last_type = event.type
            self.delivered += 1
        if self.record:
            self.terminal[run_id] = last_type
            self.terminal_latencies.append(latency)


async def verify_store(
    engine: culm.Engine, run_ids: list[str], status: culm.RunStatus, consumer: Consumer | None
) -> tuple[int, list[str]]:
    """The number of events stored for ``run_ids``; errors where a run or its events are off."""
    stored = 0
    errors: list[str] = []
    for run_id in run_ids:
        run = await engine.get_run(run_id)
        events = await engine.store.read_events(run_id)
        stored += len(events)
        if run.status is not status:
            errors.append(f"run {run_id}: status {run.status.value}, expected {status.value}")
        if [event.seq for event in events] != list(range(1, run.last_seq + 1)):
            errors.append(f"run {run_id}: stored seqs are not 1..{run.last_seq}")
    if consumer is not None:
        errors += consumer.errors
        if consumer.delivered != stored:
            errors.append(f"subscribers received {consumer.delivered} events, store holds {stored}")
    if len(engine.registry):
        errors.append(f"{len(engine.registry)} runners still registered after every run ended")
    return stored, errors


# Scenarios


def open_engine(home: str) -> culm.Engine:
    return culm.Engine(culm.Settings(home=Path(home)), tools=[NoopTool()])


def throughput_script(rounds: int, tokens: int, token_yield: bool) -> dict[str, Any]:
    """``rounds`` turns of ``tokens`` one-character chunks; all but the last call the no-op tool.

    With ``token_yield`` every token is its own step after a zero delay, so the model yields to
    the event loop between tokens as a network stream does; without it a turn's tokens are
    produced in one synchronous burst.
    """
    if token_yield:
        text = [{"delay": 0, "text": "x"}] * tokens
    else:
        text = [{"text": "x" * tokens, "chunk_size": 1}]
    call = {"tool_call": {"name": TOOL_NAME, "arguments": {}}}
    return {"turns": [[*text, call]] * (rounds - 1) + [text]}


async def throughput(args: argparse.Namespace, home: str) -> Result:
    async with open_engine(home) as engine:
        script = throughput_script(args.rounds, args.tokens, args.token_yield)
        engine.scripts.register("bench", script)
        sessions = [
            await engine.create_session(model="scripted:bench", tools=[TOOL_NAME], workspace=home)
            for _ in range(args.runs)
        ]
        consumer = Consumer() if args.subscribe else None
        run_ids: list[str] = []
        baseline = rss_mb()

        async def one(session_id: str) -> None:
            run = await engine.start_run(session_id, "go")
            run_ids.append(run.run_id)
            if consumer is not None:
                await consumer.consume(engine, run.run_id)
            else:
                await engine.wait(run.run_id)

        started = time.perf_counter()
        cpu = time.process_time(), time.thread_time()
        async with asyncio.TaskGroup() as group:
            for session in sessions:
                group.create_task(one(session.session_id))
        elapsed = time.perf_counter() - started
        process_cpu, loop_cpu = time.process_time() - cpu[0], time.thread_time() - cpu[1]
        after = rss_mb()
        stored, errors = await verify_store(engine, run_ids, culm.RunStatus.COMPLETED, consumer)
    latencies = consumer.latencies if consumer else []
    terminal = consumer.terminal_latencies if consumer else []
    return {
        "runs": args.runs,
        "rounds": args.rounds,
        "tokens_per_round": args.tokens,
        "subscribe": args.subscribe,
        "token_yield": args.token_yield,
        "seconds": elapsed,
        "runs_per_s": args.runs / elapsed,
        "events": stored,
        "events_delivered": consumer.delivered if consumer else 0,
        "events_per_s": stored / elapsed,
        # CPU use of the event-loop thread and of the whole process (all threads), as a share
        # of the wall time: a loop well under 100% is waiting, not computing.
        "loop_cpu_pct": 100 * loop_cpu / elapsed,
        "process_cpu_pct": 100 * process_cpu / elapsed,
        "latency_p50_ms": percentile(latencies, 0.50) * 1000,
        "latency_p99_ms": percentile(latencies, 0.99) * 1000,
        "latency_max_ms": max(latencies, default=float("nan")) * 1000,
        "terminal_latency_p50_ms": percentile(terminal, 0.50) * 1000,
        "terminal_latency_max_ms": max(terminal, default=float("nan")) * 1000,
        "rss_baseline_mb": baseline,
        "rss_after_mb": after,
        "rss_peak_mb": peak_rss_mb(),
        "errors": errors,
    }


async def wait_until(predicate: Callable[[], bool], timeout: float) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.01)


async def slow_model(args: argparse.Namespace, home: str) -> Result:
    count = args.slow_model_runs
    async with open_engine(home) as engine:
        engine.scripts.register("sleepy", {"turns": [[{"delay": 3600}, {"text": "late"}]]})
        sessions = [
            await engine.create_session(model="scripted:sleepy", workspace=home)
            for _ in range(count)
        ]
        consumer = Consumer() if args.subscribe else None
        baseline = rss_mb()
        started = time.perf_counter()
        starts = (engine.start_run(session.session_id, "go") for session in sessions)
        runs = await asyncio.gather(*starts)
        run_ids = [run.run_id for run in runs]
        async with asyncio.TaskGroup() as group:
            if consumer is not None:
                for run_id in run_ids:
                    group.create_task(consumer.consume(engine, run_id))

            def all_waiting() -> bool:
                # Waiting = the runner has emitted runner_progress (seq 2) and sits in the model.
                return all(
                    (runner := engine.registry.get(run_id)) is not None and runner.last_seq >= 2
                    for run_id in run_ids
                )

            await wait_until(all_waiting, timeout=args.timeout / 2)
            start_seconds = time.perf_counter() - started
            gc.collect()
            waiting_rss = rss_mb()
            cancel_started = time.perf_counter()
            await asyncio.gather(*(engine.cancel(run_id, wait=True) for run_id in run_ids))
            cancel_seconds = time.perf_counter() - cancel_started
        stored, errors = await verify_store(engine, run_ids, culm.RunStatus.CANCELLED, consumer)
        if consumer is not None:
            errors += [
                f"run {run_id}: stream ended with {kind!r}, not 'cancelled'"
                for run_id, kind in consumer.terminal.items()
                if kind != "cancelled"
            ]
    return {
        "runs": count,
        "subscribe": args.subscribe,
        "start_seconds": start_seconds,
        "rss_baseline_mb": baseline,
        "rss_waiting_mb": waiting_rss,
        "rss_per_run_kb": (waiting_rss - baseline) * 1024 / count,
        "rss_peak_mb": peak_rss_mb(),
        "cancel_all_seconds": cancel_seconds,
        "events": stored,
        "errors": errors,
    }


def churn_sample(engine: culm.Engine, done: int) -> dict[str, Any]:
    gc.collect()
    return {
        "runs_done": done,
        "rss_mb": rss_mb(),
        "objects": len(gc.get_objects()),
        "registry": len(engine.registry),
    }


async def churn(args: argparse.Namespace, home: str) -> Result:
    total, wave = args.churn, args.wave
    # About ten samples, each after a whole wave.
    sample_every = args.sample_every or max(wave, total // 10 // wave * wave)
    async with open_engine(home) as engine:
        engine.scripts.register("short", {"turns": [[{"text": "short answer", "chunk_size": 4}]]})
        consumer = Consumer(record=False) if args.subscribe else None
        series = [churn_sample(engine, 0)]
        errors: list[str] = []

        async def one() -> None:
            run = await engine.run("go", model="scripted:short", workspace=home)
            if consumer is not None:
                await consumer.consume(engine, run.run_id)
            finished = await engine.wait(run.run_id)
            if finished.status is not culm.RunStatus.COMPLETED:
                errors.append(f"run {run.run_id}: {finished.status.value} {finished.error}")

        started = time.perf_counter()
        done = 0
        while done < total:
            size = min(wave, total - done)
            async with asyncio.TaskGroup() as group:
                for _ in range(size):
                    group.create_task(one())
            done += size
            if done % sample_every == 0 or done == total:
                series.append(churn_sample(engine, done))
        elapsed = time.perf_counter() - started
    if consumer is not None:
        errors += consumer.errors
    if series[-1]["registry"]:
        errors.append(f"{series[-1]['registry']} runners still registered at the end")
    # Compare from 20% of the runs on (run 2,000 of 10,000): by then caches have warmed up.
    reference = next(s for s in series if s["runs_done"] >= total // 5)
    growth = series[-1]["rss_mb"] - reference["rss_mb"]
    return {
        "runs": total,
        "wave": wave,
        "subscribe": args.subscribe,
        "seconds": elapsed,
        "runs_per_s": total / elapsed,
        "series": series,
        "rss_growth_mb": growth,
        "rss_growth_from": reference["runs_done"],
        "objects_growth": series[-1]["objects"] - reference["objects"],
        "flat": growth <= FLAT_RSS_GROWTH_MB and series[-1]["registry"] == 0,
        "errors": errors,
    }


SCENARIOS: dict[str, Callable[[argparse.Namespace, str], Coroutine[Any, Any, Result]]] = {
    "throughput": throughput,
    "slow": slow_model,
    "churn": churn,
}


def run_scenario(name: str, args: argparse.Namespace) -> Result:
    """Entry point of the scenario's own process."""

    async def bounded(home: str) -> Result:
        async with asyncio.timeout(args.timeout):
            return await SCENARIOS[name](args, home)

    with tempfile.TemporaryDirectory(prefix=f"culm-bench-{name}-") as home:
        try:
            return asyncio.run(bounded(home))
        except TimeoutError:
            return {"errors": [f"did not finish within --timeout {args.timeout:g} s"]}
        except Exception as exc:  # reported, and turned into a non-zero exit by the parent
            return {"errors": [f"{type(exc).__name__}: {exc}"]}


def run_isolated(name: str, args: argparse.Namespace) -> Result:
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=context) as pool:
        return pool.submit(run_scenario, name, args).result()


# Reporting


def targets(results: dict[str, Result]) -> list[tuple[str, str, bool]]:
    """(target, measured, met) for every target a scenario that ran can speak to."""
    out = []
    if (tp := results.get("throughput")) and "events_per_s" in tp:
        measured = f"{tp['events_per_s']:,.0f} events/s"
        if not tp["subscribe"]:
            measured += " (no subscribers)"
        ok = tp["events_per_s"] >= EVENTS_PER_SECOND_TARGET and tp["subscribe"]
        out.append((f">= {EVENTS_PER_SECOND_TARGET:,} events/s stored and delivered", measured, ok))
    if (slow := results.get("slow")) and "rss_waiting_mb" in slow:
        ok = slow["rss_waiting_mb"] < SLOW_RSS_TARGET_MB and slow["runs"] >= 1000
        measured = f"{slow['rss_waiting_mb']:.1f} MB with {slow['runs']:,} waiting"
        out.append((f"1,000 waiting runs < {SLOW_RSS_TARGET_MB:.0f} MB RSS", measured, ok))
    if (ch := results.get("churn")) and "flat" in ch:
        measured = (
            f"+{ch['rss_growth_mb']:.1f} MB from run {ch['rss_growth_from']:,} to {ch['runs']:,}"
        )
        out.append((f"memory flat (<= {FLAT_RSS_GROWTH_MB:.0f} MB growth)", measured, ch["flat"]))
    return out


def print_rows(title: str, rows: list[tuple[str, str]]) -> None:
    print(f"\n{title}")
    width = max(len(label) for label, _ in rows)
    for label, value in rows:
        print(f"  {label:<{width}}  {value}")


def print_throughput(tp: Result) -> None:
    shape = f"{tp['runs']} runs x {tp['rounds']} rounds x {tp['tokens_per_round']} tokens"
    if tp["token_yield"]:
        shape += " (yield per token)"
    latency = " / ".join(
        f"{tp[key]:.1f}" for key in ("latency_p50_ms", "latency_p99_ms", "latency_max_ms")
    )
    terminal = f"{tp['terminal_latency_p50_ms']:.1f} / {tp['terminal_latency_max_ms']:.1f}"
    cpu = f"{tp['process_cpu_pct']:.0f}"
    print_rows(
        f"throughput: {shape}",
        [
            ("wall time", f"{tp['seconds']:.2f} s"),
            ("runs/s", f"{tp['runs_per_s']:,.1f}"),
            ("events stored / delivered", f"{tp['events']:,} / {tp['events_delivered']:,}"),
            ("events/s", f"{tp['events_per_s']:,.0f}"),
            ("CPU: event loop / process", f"{tp['loop_cpu_pct']:.0f}% / {cpu}% of one core"),
            ("latency p50 / p99 / max", f"{latency} ms"),
            ("terminal event p50 / max", f"{terminal} ms"),
            ("RSS baseline / after / peak", _mb(tp, "rss_baseline_mb", "rss_after_mb")),
        ],
    )


def print_slow(slow: Result) -> None:
    print_rows(
        f"slow model: {slow['runs']:,} concurrent runs waiting",
        [
            ("all started and waiting after", f"{slow['start_seconds']:.2f} s"),
            ("RSS baseline / waiting / peak", _mb(slow, "rss_baseline_mb", "rss_waiting_mb")),
            ("RSS per waiting run", f"{slow['rss_per_run_kb']:.1f} KB"),
            ("cancel all (wait=True)", f"{slow['cancel_all_seconds']:.2f} s"),
        ],
    )


def print_churn(ch: Result) -> None:
    print(f"\nchurn: {ch['runs']:,} short runs in waves of {ch['wave']}")
    print(f"  {'runs done':>10}  {'RSS MB':>8}  {'objects':>9}  {'registry':>8}")
    for sample in ch["series"]:
        done, rss, objects = sample["runs_done"], sample["rss_mb"], sample["objects"]
        print(f"  {done:>10,}  {rss:>8.1f}  {objects:>9,}  {sample['registry']:>8}")
    since = ch["rss_growth_from"]
    print(
        f"  {ch['runs_per_s']:,.0f} runs/s; objects {ch['objects_growth']:+,} since run {since:,}"
    )


def print_report(results: dict[str, Result]) -> None:
    printers = {"throughput": print_throughput, "slow": print_slow, "churn": print_churn}
    for name, result in results.items():
        if "runs" in result:  # absent when the scenario died before measuring
            printers[name](result)
    rows = targets(results)
    if rows:
        verdicts = [(target, f"{'PASS' if ok else 'MISS'}  {m}") for target, m, ok in rows]
        print_rows("targets", verdicts)
    for name, result in results.items():
        for error in result.get("errors", [])[:20]:
            print(f"ERROR [{name}] {error}")


def _json_safe(value: Any) -> Any:
    """``value`` with NaN (no latency without subscribers) as null, which JSON allows."""
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_json_safe(item) for item in value]
    return value


def _mb(result: Result, baseline: str, current: str) -> str:
    return f"{result[baseline]:.1f} / {result[current]:.1f} / {result['rss_peak_mb']:.1f} MB"


# Command line


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=100, help="concurrent runs (throughput)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds per run (throughput)")
    parser.add_argument("--tokens", type=int, default=100, help="tokens per round (throughput)")
    parser.add_argument(
        "--subscribe",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="one subscriber per run consumes every event (default: on)",
    )
    parser.add_argument(
        "--slow-model-runs", type=int, default=1000, help="runs waiting on a slow model (0: skip)"
    )
    parser.add_argument(
        "--token-yield",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="the model yields to the event loop between tokens (default: off, one burst)",
    )
    parser.add_argument("--churn", type=int, default=1000, help="short runs in total (0: skip)")
    parser.add_argument("--wave", type=int, default=100, help="concurrent runs per churn wave")
    parser.add_argument(
        "--sample-every", type=int, default=0, help="churn runs per sample (0: a tenth)"
    )
    parser.add_argument("--only", choices=sorted(SCENARIOS), action="append", help="repeatable")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per scenario")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.tokens < 1 or args.runs < 1 or args.wave < 1:
        parser.error("--runs, --rounds, --tokens and --wave must be at least 1")
    if args.sample_every % args.wave:
        parser.error("--sample-every must be a multiple of --wave")
    return args


def selected(args: argparse.Namespace) -> list[str]:
    if args.only:
        return list(dict.fromkeys(args.only))
    chosen = ["throughput"]
    if args.slow_model_runs > 0:
        chosen.append("slow")
    if args.churn > 0:
        chosen.append("churn")
    return chosen


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    results: dict[str, Result] = {}
    for name in selected(args):
        if not args.json:
            print(f"running {name} …", file=sys.stderr, flush=True)
        results[name] = run_isolated(name, args)
    machine = {
        "python": platform.python_version(),
        "cpus": psutil.cpu_count(),
        "platform": platform.platform(),
    }
    if args.json:
        report = {
            "machine": machine,
            "results": results,
            "targets": [{"target": t, "measured": m, "met": ok} for t, m, ok in targets(results)],
        }
        print(json.dumps(_json_safe(report), indent=2))
    else:
        print(f"culm {culm.__version__}, Python {machine['python']}, {machine['cpus']} CPUs")
        print_report(results)
    failed = any(result.get("errors") for result in results.values())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
