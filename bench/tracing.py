"""Tracing overhead: the agent loop's CPU per round with traces exported, with the no-op tracer
(no exporter configured), and with tracing stubbed out entirely (the floor).

Each sample is a fresh process (its own ``CULM_HOME``, SQLite) running ``--runs`` runs of
``--rounds`` rounds on a scripted zero-latency model; every round but the last calls a no-op
read-only tool and the last streams ``--tokens`` tokens. The figure is the process's CPU time
(user + system: the exporter's thread included) over the runs, divided by the rounds. With
``export`` the spans go over OTLP/HTTP to a receiver in another process (its CPU not counted).
The modes are interleaved ``--repeat`` times (the machine may be loaded: compare the ratios of
neighbouring samples, not absolute figures); the medians and their ratios are printed.

    .venv/bin/python bench/tracing.py                     # defaults, ~1 min
    .venv/bin/python bench/tracing.py --repeat 7 --json
    .venv/bin/python bench/tracing.py --paired --runs 300 # off/export in one process
    .venv/bin/python bench/tracing.py --isolated --runs 250 --repeat 9  # the span calls alone

``--paired``: one process whose engine switches between the no-op tracer and export for each
batch of ``--concurrency`` runs; the figure is the median of the neighbouring batches' ratios,
which a loaded machine disturbs less than separate processes. ``--isolated``: the span calls
of a run without the loop (what export adds per round, steady even on a loaded machine).

Targets (issue 20): export on < 5 % added CPU per round; the no-op tracer not measurable (< 1 %).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

MODES = ("bare", "off", "export")


def _receiver(port_file: str) -> None:
    """An OTLP/HTTP sink: 200 to every POST (the spans are read, not decoded)."""

    class Sink(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("content-length", "0")))
            self.send_response(200)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Sink)
    Path(port_file).write_text(str(server.server_address[1]))
    server.serve_forever()


def _stub_tracing() -> None:
    """Replace the loop's span makers with empty ones: the cost of tracing's calls at all."""
    from culm.tracing import spans

    class _Chat:
        first_chunk_ms = None

        def chunk(self) -> None:
            pass

        def usage(self, *args: Any) -> None:
            pass

        def answered(self, *args: Any) -> None:
            pass

        def request(self, *args: Any) -> None:
            pass

    @contextmanager
    def agent(self: Any) -> Any:
        yield None

    @contextmanager
    def chat(self: Any, model: str) -> Any:
        yield _Chat()

    @contextmanager
    def tool(self: Any, name: str, call_id: str, arguments: str) -> Any:
        yield None

    spans.RunTracing.agent = agent  # type: ignore[method-assign]
    spans.RunTracing.chat = chat  # type: ignore[method-assign,assignment]
    spans.RunTracing.tool = tool  # type: ignore[method-assign]
    spans.RunTracing.tool_failed = lambda *args: None  # type: ignore[method-assign]
    spans.RunTracing.tool_result = lambda *args: None  # type: ignore[method-assign]


async def _workload(args: argparse.Namespace) -> dict[str, float]:
    import culm

    call = {"tool_call": {"name": "list_dir", "arguments": {"path": "."}}}
    last = [{"text": "t"} for _ in range(args.tokens)]
    script = {"turns": [[call] for _ in range(args.rounds - 1)] + [last]}
    with tempfile.TemporaryDirectory() as home:
        engine = culm.Engine(culm.Settings(home=Path(home), max_rounds=args.rounds + 1))
        async with engine:
            engine.scripts.register("bench", script)
            warm = await engine.run("go", model="scripted:bench", tools=["list_dir"])
            await engine.wait(warm.run_id, timeout=60)
            if engine.tracing.provider is not None:  # the first export's imports: not counted
                await asyncio.to_thread(engine.tracing.provider.force_flush)
            cpu, wall = time.process_time(), time.perf_counter()
            for _ in range(args.runs // args.concurrency):
                runs = [
                    await engine.run("go", model="scripted:bench", tools=["list_dir"])
                    for _ in range(args.concurrency)
                ]
                for run in runs:
                    assert (await engine.wait(run.run_id, timeout=120)).status.value == "completed"
            wall = time.perf_counter() - wall
            exporting = engine.tracing.exporting
        # Until the engine is closed: its close sends the spans still queued (export's CPU is
        # on the batch processor's thread, counted in the process's time).
        cpu = time.process_time() - cpu
    rounds = (args.runs // args.concurrency) * args.concurrency * args.rounds
    return {"cpu_us_per_round": cpu / rounds * 1e6, "wall_s": wall, "exporting": exporting}


async def _paired(args: argparse.Namespace, endpoint: str) -> dict[str, list[float]]:
    """One process, one engine, its tracing switched between the no-op tracer and export for
    each batch of ``--concurrency`` runs (which goes first alternates); an export batch's CPU
    includes sending its spans (a flush, so more and smaller exports than the batch processor
    makes alone: if anything, export is over-counted). Neighbouring batches share the
    machine's load, so their ratio is steadier than that of separate processes."""
    import culm
    from culm.tracing import build_tracing

    call = {"tool_call": {"name": "list_dir", "arguments": {"path": "."}}}
    last = [{"text": "t"} for _ in range(args.tokens)]
    script = {"turns": [[call] for _ in range(args.rounds - 1)] + [last]}
    samples: dict[str, list[float]] = {"off": [], "export": []}
    with tempfile.TemporaryDirectory() as home:
        engine = culm.Engine(culm.Settings(home=Path(home), max_rounds=args.rounds + 1))
        os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"] = endpoint
        tracings = {"off": engine.tracing, "export": build_tracing()}
        assert tracings["export"].exporting and not tracings["off"].exporting
        async with engine:
            engine.scripts.register("bench", script)

            async def batch(mode: str) -> float:
                engine.tracing = tracings[mode]
                cpu = time.process_time()
                runs = [
                    await engine.run("go", model="scripted:bench", tools=["list_dir"])
                    for _ in range(args.concurrency)
                ]
                for run in runs:
                    assert (await engine.wait(run.run_id, timeout=120)).status.value == "completed"
                if tracings[mode].provider is not None:
                    await asyncio.to_thread(tracings[mode].provider.force_flush)
                return (time.process_time() - cpu) / (args.concurrency * args.rounds) * 1e6

            await batch("off"), await batch("export")  # warm-up: imports, first connection
            for index in range(args.runs // args.concurrency):
                order = ("off", "export") if index % 2 == 0 else ("export", "off")
                for mode in order:
                    samples[mode].append(await batch(mode))
            engine.tracing = tracings["off"]
        await tracings["export"].aclose()
    return samples


def _isolated(args: argparse.Namespace, endpoint: str) -> dict[str, list[float]]:
    """The span calls a run makes in the loop (an ``agent`` span; per round a ``chat`` span
    with its chunks, usage and answer; a ``tool`` span per round but the last), without the
    loop: µs of CPU per round with the no-op tracer and with export (the batch processor and
    the OTLP/HTTP exporter to the sink, flushed at the end of each sample), interleaved."""
    from culm.domain.models import Usage
    from culm.tracing import RunTracing, build_tracing

    os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"] = endpoint
    tracings = {"off": build_tracing({}), "export": build_tracing()}
    usage = Usage(prompt_tokens=7, completion_tokens=1)

    def one_run(tracing: RunTracing) -> None:
        with tracing.agent():
            for round_ in range(args.rounds):
                last = round_ == args.rounds - 1
                with tracing.chat("scripted:bench") as chat:
                    chat.request(None, [])
                    for _ in range(args.tokens if last else 1):
                        chat.chunk()
                    chat.usage(usage)
                    chat.answered("stop" if last else "tool_calls", "bench", None)
                if not last:
                    with tracing.tool("list_dir", f"call_{round_}", '{"path": "."}') as span:
                        tracing.tool_result(span, "a\nb")

    def sample(mode: str, runs: int) -> float:
        tracing = tracings[mode]
        run_tracing = RunTracing(tracing.tracer)
        cpu = time.process_time()
        for _ in range(runs):
            one_run(run_tracing)
        if tracing.provider is not None:
            tracing.provider.force_flush()
        return (time.process_time() - cpu) / (runs * args.rounds) * 1e6

    sample("off", 50), sample("export", 50)  # warm-up: imports, first connection
    samples: dict[str, list[float]] = {"off": [], "export": []}
    for _ in range(args.repeat):
        for mode in samples:
            samples[mode].append(sample(mode, args.runs))
    return samples


def _sample(mode: str, args: argparse.Namespace, endpoint: str) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    if mode == "export":
        env["OTEL_EXPORTER_OTLP_ENDPOINT"] = endpoint
    argv = [sys.executable, __file__, "--child", mode, *_forward(args)]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600, check=True)
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["exporting"] == (mode == "export"), result
    return result


def _forward(args: argparse.Namespace) -> list[str]:
    return [
        f"--runs={args.runs}",
        f"--rounds={args.rounds}",
        f"--tokens={args.tokens}",
        f"--concurrency={args.concurrency}",
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=20)
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--child", choices=MODES)
    parser.add_argument("--receiver")
    parser.add_argument("--paired", action="store_true", help="off and export in one process")
    parser.add_argument("--isolated", action="store_true", help="the span calls without the loop")
    args = parser.parse_args()
    if args.receiver:
        _receiver(args.receiver)
        return 0
    if args.child:
        if args.child == "bare":
            _stub_tracing()
        print(json.dumps(asyncio.run(_workload(args))))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        port_file = Path(tmp) / "port"
        sink = subprocess.Popen([sys.executable, __file__, "--receiver", str(port_file)])
        try:
            deadline = time.monotonic() + 10
            while not port_file.exists() or not port_file.read_text():
                if time.monotonic() > deadline:
                    raise RuntimeError("the OTLP sink did not start")
                time.sleep(0.05)
            endpoint = f"http://127.0.0.1:{port_file.read_text()}"
            if args.isolated:
                return _report_isolated(_isolated(args, endpoint), args)
            if args.paired:
                return _report_paired(asyncio.run(_paired(args, endpoint)), args)
            samples: dict[str, list[float]] = {mode: [] for mode in MODES}
            for _ in range(args.repeat):
                for mode in MODES:
                    samples[mode].append(_sample(mode, args, endpoint)["cpu_us_per_round"])
        finally:
            sink.terminate()
            sink.wait(timeout=10)
    medians = {mode: statistics.median(values) for mode, values in samples.items()}
    report = {
        "samples_cpu_us_per_round": samples,
        "median_cpu_us_per_round": medians,
        "off_vs_bare": medians["off"] / medians["bare"] - 1,
        "export_vs_off": medians["export"] / medians["off"] - 1,
    }
    if args.json:
        print(json.dumps(report))
    else:
        for mode in MODES:
            spread = ", ".join(f"{v:.0f}" for v in samples[mode])
            print(f"{mode:>6}: median {medians[mode]:8.0f} µs CPU/round  ({spread})")
        print(f"no-op tracer vs none: {report['off_vs_bare']:+.1%}  (target: not measurable)")
        print(f"export vs no-op:      {report['export_vs_off']:+.1%}  (target: < +5 %)")
    return 0


def _report_isolated(samples: dict[str, list[float]], args: argparse.Namespace) -> int:
    medians = {mode: statistics.median(values) for mode, values in samples.items()}
    added = medians["export"] - medians["off"]
    if args.json:
        print(json.dumps({"samples_cpu_us_per_round": samples, "median": medians, "added": added}))
        return 0
    for mode, values in samples.items():
        spread = ", ".join(f"{v:.0f}" for v in values)
        print(f"{mode:>6}: median {medians[mode]:6.1f} µs CPU/round  ({spread})")
    print(f"export adds {added:.1f} µs CPU per round (the span calls alone)")
    return 0


def _report_paired(samples: dict[str, list[float]], args: argparse.Namespace) -> int:
    ratios = [e / o for o, e in zip(samples["off"], samples["export"], strict=True)]
    medians = {mode: statistics.median(values) for mode, values in samples.items()}
    quartiles = statistics.quantiles(ratios, n=4)
    report = {
        "samples_cpu_us_per_round": samples,
        "median_cpu_us_per_round": medians,
        "export_vs_off_median_of_pairs": statistics.median(ratios) - 1,
        "export_vs_off_quartiles": [q - 1 for q in quartiles],
        "export_vs_off_medians": medians["export"] / medians["off"] - 1,
    }
    if args.json:
        print(json.dumps(report))
        return 0
    for mode in ("off", "export"):
        print(
            f"{mode:>6}: median {medians[mode]:8.0f} µs CPU/round  ({len(samples[mode])} batches)"
        )
    print(
        f"export vs no-op: {report['export_vs_off_median_of_pairs']:+.1%} median of "
        f"{len(ratios)} neighbouring pairs (quartiles {quartiles[0] - 1:+.1%}, "
        f"{quartiles[2] - 1:+.1%}); ratio of medians {report['export_vs_off_medians']:+.1%}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
