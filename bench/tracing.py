"""Tracing overhead: the agent loop's CPU per round with traces exported, with the no-op tracer
(no exporter configured), and with tracing stubbed out entirely (the floor).

Export has two paths: ``export`` (culm's own spans and batch export, what culm uses when it
configures export itself) and ``sdk`` (the SDK's ``TracerProvider`` and batch processor, which
culm falls back to, here forced by setting ``OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT``).

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
    .venv/bin/python bench/tracing.py --paired --http --runs 400  # a model over HTTP
    .venv/bin/python bench/tracing.py --instructions --runs 10 --repeat 1  # valgrind counts

``--http``: the model is ``bench/fake_openai.py`` (its own process, CPU not counted) streaming
``--tokens`` tokens (default 100 then) over HTTP, the realistic round: each run is two rounds,
a call of ``list_dir`` and the streamed answer (``--rounds`` is ignored).

``--paired``: one process whose engine switches between the no-op tracer and export for each
batch of ``--concurrency`` runs; the figure is the median of the neighbouring batches' ratios,
which a loaded machine disturbs less than separate processes (the order of the modes rotates).
Separate processes and ``--paired`` print the median of the pair ratios with their quartiles
(a pair: the samples of one repeat, or neighbouring batches). ``--isolated``: the span calls
of a run without the loop (what export adds per round, steady even on a loaded machine).

Targets (issue 20): export on < 5 % added CPU per round; the no-op tracer not measurable (< 1 %).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

MODES = ("bare", "off", "export", "sdk")
EXPORTS = ("export", "sdk")
SDK_ENV = {"OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT": "128"}  # a span limit: culm uses the SDK's path


def _receiver(port_file: str) -> None:
    """An OTLP/HTTP sink: 200 to every POST (the spans are read, not decoded), keep-alive."""

    class Sink(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as a collector: no connection per export

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


def _engine(args: argparse.Namespace, home: str) -> Any:
    """The bench's engine and the model its runs use (scripted, or ``--http``'s upstream)."""
    import culm

    settings: dict[str, Any] = {"home": Path(home), "max_rounds": args.rounds + 1}
    if args.quiet:  # under valgrind: periodic work would count ~50 times what it does natively
        settings.update(QUIET)
    if args.http:
        settings.update(openai_base_url=f"{args.http}/v1", openai_api_key="bench")
    engine = culm.Engine(culm.Settings(**settings))
    return engine, "openai:bench" if args.http else "scripted:bench"


def _script(args: argparse.Namespace) -> dict[str, Any]:
    call = {"tool_call": {"name": "list_dir", "arguments": {"path": "."}}}
    last = [{"text": "t"} for _ in range(args.tokens)]
    return {"turns": [[call] for _ in range(args.rounds - 1)] + [last]}


async def _workload(args: argparse.Namespace) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as home:
        engine, model = _engine(args, home)
        async with engine:
            engine.scripts.register("bench", _script(args))
            warm = await engine.run("go", model=model, tools=["list_dir"])
            await engine.wait(warm.run_id, timeout=60)
            if engine.tracing.provider is not None:  # the first export's imports: not counted
                await asyncio.to_thread(engine.tracing.provider.force_flush)
            cpu, wall = time.process_time(), time.perf_counter()
            for _ in range(args.runs // args.concurrency):
                runs = [
                    await engine.run("go", model=model, tools=["list_dir"])
                    for _ in range(args.concurrency)
                ]
                for run in runs:
                    assert (await engine.wait(run.run_id, timeout=120)).status.value == "completed"
            wall = time.perf_counter() - wall
            exporting = type(engine.tracing.provider).__name__ if engine.tracing.exporting else None
        # Until the engine is closed: its close sends the spans still queued (export's CPU is
        # on the batch processor's thread, counted in the process's time).
        cpu = time.process_time() - cpu
        assert not getattr(engine.tracing.provider, "dropped", 0), "spans dropped"
    rounds = (args.runs // args.concurrency) * args.concurrency * args.rounds
    return {"cpu_us_per_round": cpu / rounds * 1e6, "wall_s": wall, "exporting": exporting}


async def _paired(args: argparse.Namespace, endpoint: str) -> dict[str, list[float]]:
    """One process, one engine, its tracing switched between the no-op tracer and export for
    each batch of ``--concurrency`` runs (which goes first alternates); an export batch's CPU
    includes sending its spans (a flush, so more and smaller exports than the batch processor
    makes alone: if anything, export is over-counted). Neighbouring batches share the
    machine's load, so their ratio is steadier than that of separate processes."""
    from culm.tracing import build_tracing

    samples: dict[str, list[float]] = {mode: [] for mode in args.modes.split(",") if mode != "bare"}
    with tempfile.TemporaryDirectory() as home:
        engine, model = _engine(args, home)
        os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"] = endpoint
        tracings = {
            "off": engine.tracing,
            "export": build_tracing(),
            "sdk": build_tracing(light=False),
        }
        assert tracings["export"].exporting and not tracings["off"].exporting
        assert type(tracings["export"].provider) is not type(tracings["sdk"].provider)
        async with engine:
            engine.scripts.register("bench", _script(args))

            async def batch(mode: str) -> float:
                engine.tracing = tracings[mode]
                cpu = time.process_time()
                runs = [
                    await engine.run("go", model=model, tools=["list_dir"])
                    for _ in range(args.concurrency)
                ]
                for run in runs:
                    assert (await engine.wait(run.run_id, timeout=120)).status.value == "completed"
                if tracings[mode].provider is not None:
                    await asyncio.to_thread(tracings[mode].provider.force_flush)
                    assert not getattr(tracings[mode].provider, "dropped", 0), "spans dropped"
                return float(time.process_time() - cpu) / (args.concurrency * args.rounds) * 1e6

            for mode in samples:  # warm-up: imports, first connection
                await batch(mode)
            modes = list(samples)
            for index in range(args.runs // args.concurrency):
                for mode in modes[index % len(modes) :] + modes[: index % len(modes)]:
                    samples[mode].append(await batch(mode))
            engine.tracing = tracings["off"]
        await tracings["export"].aclose()
        await tracings["sdk"].aclose()
    return samples


def _isolated(args: argparse.Namespace, endpoint: str) -> dict[str, list[float]]:
    """The span calls a run makes in the loop (an ``agent`` span; per round a ``chat`` span
    with its chunks, usage and answer; a ``tool`` span per round but the last), without the
    loop: µs of CPU per round with the no-op tracer and with export (the batch processor and
    the OTLP/HTTP exporter to the sink, flushed at the end of each sample), interleaved."""
    from culm.domain.models import Usage
    from culm.tracing import RunTracing, build_tracing

    os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"] = endpoint
    # No span dropped (a run's spans come faster than without the loop): all are sent.
    os.environ["OTEL_BSP_MAX_QUEUE_SIZE"] = str(20 * args.runs * args.rounds)
    tracings = {
        "off": build_tracing({}),
        "export": build_tracing(),
        "sdk": build_tracing(light=False),
    }
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
        assert not getattr(tracing.provider, "dropped", 0), "spans dropped"
        return (time.process_time() - cpu) / (runs * args.rounds) * 1e6

    for mode in tracings:  # warm-up: imports, first connection
        sample(mode, 50)
    samples: dict[str, list[float]] = {"off": [], "export": [], "sdk": []}
    for _ in range(args.repeat):
        for mode in samples:
            samples[mode].append(sample(mode, args.runs))
    return samples


def _sample(
    mode: str, args: argparse.Namespace, endpoint: str, prefix: Sequence[str] = ()
) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    if mode in EXPORTS:
        env["OTEL_EXPORTER_OTLP_ENDPOINT"] = endpoint
    if mode == "sdk":
        env.update(SDK_ENV)
    if prefix:  # valgrind: a batch leaves when full or at close, not every stretched 5 s
        env["OTEL_BSP_SCHEDULE_DELAY"] = "3600000"
    argv = [*prefix, sys.executable, __file__, "--child", mode, *_forward(args)]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=1800, check=True)
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    if prefix:
        counted = re.search(r"I\s+refs:\s+([\d,]+)", done.stderr)
        assert counted, done.stderr[-2000:]
        result["instructions"] = int(counted.group(1).replace(",", ""))
    expected = {"export": "BatchExport", "sdk": "TracerProvider"}.get(mode)
    assert result["exporting"] == expected, result
    return result


# The engine's periodic work (ticks, heartbeats, polls, metrics flushes), out of the way: its
# count grows with wall time, which valgrind stretches ~50 times (and the load varies).
QUIET = {
    "schedule_tick": 3600.0,
    "heartbeat_seconds": 3600.0,
    "lease_seconds": 7200.0,
    "claim_poll_seconds": 3600.0,
    "metrics_flush_interval": 3600.0,
    "metrics_maintenance_interval": 3600.0,
}
VALGRIND = ("valgrind", "--tool=cachegrind", "--cache-sim=no", "--cachegrind-out-file=/dev/null")


def _instructions(args: argparse.Namespace, endpoint: str) -> dict[str, list[float]]:
    """Instructions per round, counted by valgrind (cachegrind, no cache simulation): each mode
    runs in two processes, ``--runs`` and ``2 * --runs`` runs, and the difference is divided by
    the extra rounds (start-up and warm-up cancel out); the engine's periodic work is set
    out of the way (``QUIET``), as it would count per second, not per round, and so is the
    batch export's schedule (a batch leaves when full or at close, as it does natively, where
    a sample's ~1,000 spans leave in two or three exports). Not time: the machine's load does not
    change it (a count differs by well under 1 % between repeats)."""
    modes = tuple(args.modes.split(","))
    samples: dict[str, list[float]] = {mode: [] for mode in modes}
    small = argparse.Namespace(**{**vars(args), "runs": args.runs, "quiet": True})
    large = argparse.Namespace(**{**vars(args), "runs": 2 * args.runs, "quiet": True})
    extra_rounds = (args.runs // args.concurrency) * args.concurrency * args.rounds
    for index in range(args.repeat):
        for mode in modes[index % len(modes) :] + modes[: index % len(modes)]:
            low = _sample(mode, small, endpoint, VALGRIND)["instructions"]
            high = _sample(mode, large, endpoint, VALGRIND)["instructions"]
            samples[mode].append((high - low) / extra_rounds)
            print(f"{mode}: {samples[mode][-1]:.0f} instructions/round", file=sys.stderr)
    return samples


def _forward(args: argparse.Namespace) -> list[str]:
    return [
        f"--runs={args.runs}",
        f"--rounds={args.rounds}",
        f"--tokens={args.tokens}",
        f"--concurrency={args.concurrency}",
        *([f"--http={args.http}"] if args.http else []),
        *(["--quiet"] if args.quiet else []),
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--tokens", type=int, help="default 20, with --http 100")
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--child", choices=MODES)
    parser.add_argument("--receiver")
    parser.add_argument("--paired", action="store_true", help="off and export in one process")
    parser.add_argument("--isolated", action="store_true", help="the span calls without the loop")
    parser.add_argument(
        "--instructions", action="store_true", help="instructions per round (valgrind)"
    )
    parser.add_argument("--quiet", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--modes", default=",".join(MODES), help="with --instructions, --paired")
    parser.add_argument(
        "--http", nargs="?", const="start", help="a model over HTTP (bench/fake_openai.py)"
    )
    args = parser.parse_args()
    if args.tokens is None:
        args.tokens = 100 if args.http else 20
    if args.http:
        args.rounds = 2  # a tool call, then the streamed answer
    if args.receiver:
        _receiver(args.receiver)
        return 0
    if args.child:
        if args.child == "bare":
            _stub_tracing()
        print(json.dumps(asyncio.run(_workload(args))))
        return 0
    with tempfile.TemporaryDirectory() as tmp, _processes(args, Path(tmp)) as endpoint:
        if args.isolated:
            return _report_isolated(_isolated(args, endpoint), args)
        if args.paired:
            return _report_paired(asyncio.run(_paired(args, endpoint)), args)
        if args.instructions:
            samples = _instructions(args, endpoint)
            against = {"off": "bare", "export": "off", "sdk": "off"}
            against = {k: v for k, v in against.items() if {k, v} <= samples.keys()}
            return _report(samples, args, against, "instr")
        samples: dict[str, list[float]] = {mode: [] for mode in MODES}
        for index in range(args.repeat):
            for mode in MODES[index % 4 :] + MODES[: index % 4]:
                samples[mode].append(_sample(mode, args, endpoint)["cpu_us_per_round"])
    return _report(samples, args, against={"off": "bare", "export": "off", "sdk": "off"})


@contextmanager
def _processes(args: argparse.Namespace, tmp: Path) -> Any:
    """The OTLP sink (its endpoint) and, with ``--http``, the model upstream (``args.http``)."""
    port_file = tmp / "port"
    started = [subprocess.Popen([sys.executable, __file__, "--receiver", str(port_file)])]
    try:
        if args.http == "start":
            port = _free_port()
            upstream = [sys.executable, str(Path(__file__).with_name("fake_openai.py"))]
            upstream += ["--port", str(port), "--chunks", str(args.tokens), "--tool", "list_dir"]
            started.append(subprocess.Popen(upstream))
            _wait_for(lambda: _connects(port), "the fake upstream")
            args.http = f"http://127.0.0.1:{port}"
        _wait_for(lambda: port_file.exists() and bool(port_file.read_text()), "the OTLP sink")
        yield f"http://127.0.0.1:{port_file.read_text()}"
    finally:
        for process in started:
            process.terminate()
            process.wait(timeout=10)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _connects(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        return True
    except OSError:
        return False


def _wait_for(ready: Any, what: str) -> None:
    deadline = time.monotonic() + 10
    while not ready():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not start")
        time.sleep(0.05)


def _report(
    samples: dict[str, list[float]],
    args: argparse.Namespace,
    against: dict[str, str],
    unit: str = "µs CPU",
) -> int:
    """Medians per mode; per comparison the median of the pair ratios (a pair: one repeat or
    neighbouring batches) with their quartiles, and the ratio of the medians."""
    medians = {mode: statistics.median(values) for mode, values in samples.items()}
    comparisons: dict[str, dict[str, Any]] = {}
    for mode, base in against.items():
        ratios = [m / b - 1 for b, m in zip(samples[base], samples[mode], strict=True)]
        low, middle, high = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else ratios * 3
        comparisons[f"{mode}_vs_{base}"] = {
            "median_of_pairs": statistics.median(ratios),
            "median_95_ci": _bootstrap(ratios),
            "quartiles": [low, high],
            "ratio_of_medians": medians[mode] / medians[base] - 1,
            "pairs": len(ratios),
        }
    if args.json:
        print(json.dumps({"samples": samples, "medians": medians, "comparisons": comparisons}))
        return 0
    round_ = "HTTP model, 2 rounds/run" if args.http else f"scripted, {args.rounds} rounds/run"
    print(f"round: {round_}, {args.tokens} tokens in the last; load {os.getloadavg()[0]:.1f}")
    for mode, values in samples.items():
        spread = ", ".join(f"{v:.0f}" for v in values) if len(values) <= 12 else "…"
        print(f"{mode:>6}: median {medians[mode]:8.1f} {unit}/round  ({len(values)}: {spread})")
    for name, c in comparisons.items():
        print(
            f"{name:>15}: {c['median_of_pairs']:+.2%} median of {c['pairs']} pairs (quartiles "
            f"{c['quartiles'][0]:+.2%}, {c['quartiles'][1]:+.2%}; its 95 % interval "
            f"{c['median_95_ci'][0]:+.2%} to {c['median_95_ci'][1]:+.2%}); ratio of medians "
            f"{c['ratio_of_medians']:+.2%}"
        )
    return 0


def _bootstrap(ratios: list[float], resamples: int = 2000) -> tuple[float, float]:
    """A 95 % interval of the median of ``ratios`` (percentile bootstrap, fixed seed)."""
    rng = random.Random(20)
    medians = sorted(
        statistics.median(rng.choices(ratios, k=len(ratios))) for _ in range(resamples)
    )
    return medians[int(0.025 * resamples)], medians[int(0.975 * resamples) - 1]


def _report_isolated(samples: dict[str, list[float]], args: argparse.Namespace) -> int:
    medians = {mode: statistics.median(values) for mode, values in samples.items()}
    if args.json:
        print(json.dumps({"samples_cpu_us_per_round": samples, "median": medians}))
        return 0
    for mode, values in samples.items():
        spread = ", ".join(f"{v:.0f}" for v in values)
        print(f"{mode:>6}: median {medians[mode]:6.1f} µs CPU/round  ({spread})")
    for mode in EXPORTS:
        added = medians[mode] - medians["off"]
        print(f"{mode} adds {added:.1f} µs CPU per round (the span calls alone)")
    return 0


def _report_paired(samples: dict[str, list[float]], args: argparse.Namespace) -> int:
    against = {mode: "off" for mode in EXPORTS if mode in samples}
    return _report(samples, args, against)


if __name__ == "__main__":
    sys.exit(main())
