"""culm side by side with the OpenAI Agents SDK, pydantic-ai and LangGraph, on one fake upstream.

Every system does the same two-round tool task against the same fake OpenAI-compatible upstream
(bench/fake_openai.py, its own process, ``--tool noop``): round 1 answers with a call of the
no-op tool ``noop``, round 2 with a ``--tokens``-token answer, either in one write (``write``)
or one token every ``--token-delay-ms`` (``stream``). Each measurement is a fresh process of the
system's runner (bench/peers/run_*.py; culm under this interpreter, the peers under
bench/.venv-peers from bench/setup_peers.sh), which reads every event of every run (culm: a
subscriber per run; the peers: their streaming APIs) and checks the answer token by token:

* ``seq``: ``--seq-runs`` runs one at a time: wall and process CPU per run;
* ``conc``: ``--conc-runs`` runs, ``--concurrency`` at a time: runs/s, CPU per run, first-token
  p50/p99 (from a run's start to the first token its consumer sees);
* ``parked``: ``--parked`` runs at once against an upstream that answers after 60 s (or 15 s
  after ``--park-timeout`` if that is later): the time until the upstream holds all their
  requests (at most ``--park-timeout``: then a lower bound, marked ≥ in the table), and RSS
  per run;
* ``cold``: a fresh process's first run: from spawn to the run's end;
* ``http``: `culm serve` against `langgraph dev` over their HTTP APIs, ``--conc-runs`` runs
  ``--concurrency`` at a time: runs/s, first-token p50/p99, the server's CPU per run
  (bench/peers/http_peers.py).

culm is the embedded Engine with its default store (SQLite, every event persisted); the peers
keep nothing (LangGraph also with its SQLite checkpointer). The systems run in interleaved pairs
(culm, then each peer, ``--pairs`` times, the order reversed every other pair), the load average
is recorded around each scenario, and the ratios culm/peer are given with their spread over the
pairs. The upstream counts the model calls (2 per run), each consumer counts its tokens: any
difference, or a failed run, is an error and the exit status is 1.

    bench/setup_peers.sh                                   # once: the peers' venv
    .venv/bin/python bench/peers.py                        # everything, ~15 min
    .venv/bin/python bench/peers.py --only seq,conc --modes stream --pairs 3
    .venv/bin/python bench/peers.py --systems culm --pairs 1 --seq-runs 3  # culm alone
    mkdir /tmp/culm-main && git archive main src | tar -x -C /tmp/culm-main  # another commit's
    .venv/bin/python bench/peers.py --culm-src main=/tmp/culm-main/src --systems culm,openai-agents

Results: a markdown table on stdout, the JSON with every measurement in ``--json``
(default bench/peers-result.json); figures and targets in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH / "peers"))

import http_peers  # noqa: E402  (bench/peers/http_peers.py)
import report  # noqa: E402  (bench/peers/report.py)
from upstream import Upstream  # noqa: E402  (bench/peers/upstream.py)

PEERS_PYTHON = BENCH / ".venv-peers" / "bin" / "python"
# name: (runs under the peers' venv, runner script, extra arguments)
SYSTEMS: dict[str, tuple[bool, str, list[str]]] = {
    "culm": (False, "run_culm.py", []),
    "openai-agents": (True, "run_agents.py", []),
    "pydantic-ai": (True, "run_pydantic_ai.py", []),
    "langgraph": (True, "run_langgraph.py", []),
    "langgraph+sqlite": (True, "run_langgraph.py", ["--option", "checkpointer=sqlite"]),
}
SCENARIOS = ("seq", "conc", "parked", "cold", "http")


class Failures(list[str]):
    """What went wrong, printed at the end; any makes the exit status 1."""

    def check(self, ok: bool, message: str) -> None:
        if not ok:
            print(f"FAIL: {message}", file=sys.stderr, flush=True)
            self.append(message)


def loadavg() -> str:
    """The 1, 5 and 15-minute load averages, as /proc/loadavg gives them."""
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def python_for(system: str, args: argparse.Namespace) -> str:
    return str(args.peers_python) if SYSTEMS[system][0] else sys.executable


def culm_env(system: str, args: argparse.Namespace) -> dict[str, str] | None:
    """For ``culm@NAME`` (``--culm-src NAME=PATH``): this environment with PATH first on
    PYTHONPATH, so that its runner imports that checkout's culm."""
    source = args.culm_sources.get(system)
    if source is None:
        return None
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(source), os.environ.get("PYTHONPATH")])),
    }


def run_process(
    system: str, scenario: str, upstream: Upstream, args: argparse.Namespace, failures: Failures
) -> dict[str, Any]:
    """One runner process; its JSON line, checked against the upstream's counts."""
    _, script, extra = SYSTEMS[system]
    runs = {"seq": args.seq_runs, "conc": args.conc_runs, "parked": args.parked, "cold": 1}
    command = [python_for(system, args), str(BENCH / "peers" / script), scenario]
    command += ["--base-url", upstream.base_url, "--runs", str(runs[scenario])]
    command += ["--concurrency", str(args.concurrency), "--tokens", str(args.tokens)]
    command += ["--warmup", "0" if scenario in ("parked", "cold") else str(args.warmup), *extra]
    command += ["--park-timeout", str(args.park_timeout)]
    if scenario == "parked":  # the last sample's runs must not count in this one's
        held = upstream.drained()
        failures.check(held == 0, f"{system} parked: the upstream still holds {held} requests")
    before, upstream_cpu = upstream.stats(), upstream.cpu_seconds()
    spawned = time.time()
    try:
        done = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=args.timeout,
            env=culm_env(system, args),
        )
        result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    except (subprocess.TimeoutExpired, IndexError, ValueError) as exc:
        stderr = exc.stderr if isinstance(exc, subprocess.TimeoutExpired) else done.stderr
        failures.check(False, f"{system} {scenario} {upstream.mode}: no result: {exc!r} {stderr!r}")
        return {"system": system, "scenario": scenario, "mode": upstream.mode, "failed": True}
    after, upstream_cpu = upstream.stats(), upstream.cpu_seconds() - upstream_cpu
    result["system"] = system  # culm@NAME's runner calls itself culm
    checked(result, upstream.mode, before, after, args.tokens, failures)
    result["upstream_cpu_s"] = upstream_cpu
    if scenario == "cold" and "first_run_done_at" in result:
        result["cold_s"] = result["first_run_done_at"] - spawned
    if scenario == "parked" and "runs_started_at" in result:
        result["spawn_to_start_s"] = result["runs_started_at"] - spawned
    print(f"  {report.one_line(result)}", file=sys.stderr, flush=True)
    return result


def checked(
    result: dict[str, Any],
    mode: str,
    before: dict[str, int],
    after: dict[str, int],
    tokens: int,
    failures: Failures,
) -> None:
    """Every run made exactly its two model calls (one if parked) and its consumer saw every
    token; the runner's own errors (a wrong answer, a failed run) are failures too."""
    scenario = result["scenario"]
    label = f"{result['system']} {scenario} {mode}"
    result["mode"] = mode
    for error in result.get("errors", []):
        failures.check(False, f"{label}: {error}")
    started = int(result.get("runs_started", 0))
    tool, answer = (after[k] - before[k] for k in ("tool_rounds", "answer_rounds"))
    if scenario == "parked":
        seen = result.get("requests_seen")  # held at once; the upstream's count has retries too
        failures.check(
            isinstance(seen, int) and seen <= min(tool, started),
            f"{label}: upstream saw {tool} calls, {seen} held at once, for {started} runs",
        )
        failures.check(
            result.get("held_before") == 0,
            f"{label}: the upstream held {result.get('held_before')} requests when the runs "
            "started (another process's)",
        )
        if not result.get("all_waiting"):
            print(f"  NOTE {label}: only {seen} of {started} runs waiting", file=sys.stderr)
    else:
        failures.check(
            tool == answer == started,
            f"{label}: upstream saw {tool} tool and {answer} answer rounds for {started} runs",
        )
        failures.check(
            result.get("token_events") == started * tokens,
            f"{label}: {result.get('token_events')} tokens for {started} runs of {tokens}",
        )
    result["model_calls"] = tool + answer
    # the connections the system's requests came on (not the harness's /stats polls)
    result["connections"] = after["chat_connections"] - before["chat_connections"]


def interleaved(
    scenario: str, upstream: Upstream, args: argparse.Namespace, failures: Failures
) -> dict[str, Any]:
    """``--pairs`` rounds over every system, the order reversed every other round."""
    load_before = loadavg()
    results: list[dict[str, Any]] = []
    for pair in range(args.pairs):
        order = args.systems if pair % 2 == 0 else args.systems[::-1]
        for system in order:
            result = run_process(system, scenario, upstream, args, failures)
            result["pair"] = pair
            results.append(result)
    return {
        "scenario": scenario,
        "mode": upstream.mode,
        "load_before": load_before,
        "load_after": loadavg(),
        "results": results,
    }


def over_http(upstream: Upstream, args: argparse.Namespace, failures: Failures) -> dict[str, Any]:
    """`culm serve` and `langgraph dev` (if LangGraph is among the systems), interleaved."""
    load_before = loadavg()
    results: list[dict[str, Any]] = []
    for pair in range(args.pairs):
        servers: list[http_peers.Server] = []
        for system in args.systems:
            if system == "culm" or system in args.culm_sources:
                env = culm_env(system, args)
                servers.append(
                    http_peers.CulmServe(upstream.base_url, args.concurrency, system, env)
                )
        if "langgraph" in args.systems:
            peers_python = args.peers_python
            servers.append(
                http_peers.LangGraphDev(upstream.base_url, args.concurrency, peers_python)
            )
        for server in servers if pair % 2 == 0 else servers[::-1]:
            before, upstream_cpu = upstream.stats(), upstream.cpu_seconds()
            result = http_peers.measure(server, args)
            checked(result, upstream.mode, before, upstream.stats(), args.tokens, failures)
            result["upstream_cpu_s"] = upstream.cpu_seconds() - upstream_cpu
            print(f"  {report.one_line(result)}", file=sys.stderr, flush=True)
            result["pair"] = pair
            results.append(result)
    return {
        "scenario": "http",
        "mode": upstream.mode,
        "load_before": load_before,
        "load_after": loadavg(),
        "results": results,
    }


def peer_versions(args: argparse.Namespace) -> dict[str, str | None]:
    names = ["openai-agents", "pydantic-ai-slim", "langgraph", "langgraph-checkpoint-sqlite"]
    names += ["langchain-openai", "langgraph-cli", "langgraph-api", "openai", "httpx"]
    # A peer not installed (only the ones measured need be) shows as None.
    code = "import importlib.metadata as m, json, sys\n"
    code += "def v(n):\n    try:\n        return m.version(n)\n    except m.PackageNotFoundError:\n"
    code += "        return None\n"
    code += "print(json.dumps({n: v(n) for n in sys.argv[1:]}))"
    versions: dict[str, str | None] = {}
    if any(SYSTEMS[s][0] for s in args.systems):
        done = subprocess.run(
            [str(args.peers_python), "-c", code, *names], capture_output=True, text=True
        )
        versions.update(json.loads(done.stdout))
    import culm

    versions["culm"] = culm.__version__
    versions["python"] = sys.version.split()[0]
    sources = {"culm": BENCH.parent / "src", **args.culm_sources}
    for system, source in sources.items():
        commit = subprocess.run(
            ["git", "-C", str(source), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
        )
        versions[f"{system} commit"] = commit.stdout.strip() or "not a git checkout"
    return versions


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--systems", default=",".join(SYSTEMS), help="comma-separated")
    parser.add_argument("--only", default=",".join(SCENARIOS), help="scenarios, comma-separated")
    parser.add_argument("--modes", default="stream,write", help="for seq and conc")
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--seq-runs", type=int, default=20)
    parser.add_argument("--conc-runs", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--parked", type=int, default=1000)
    parser.add_argument(
        "--park-timeout", type=float, default=45.0, help="s (default 45); the upstream parks 60"
    )
    parser.add_argument("--warmup", type=int, default=2, help="unmeasured runs first (seq, conc)")
    parser.add_argument("--tokens", type=int, default=100)
    parser.add_argument("--token-delay-ms", type=float, default=5.0)
    parser.add_argument("--timeout", type=float, default=300.0, help="per runner process")
    parser.add_argument("--peers-python", type=Path, default=PEERS_PYTHON)
    parser.add_argument(
        "--culm-src",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="also measure the culm of another checkout's src directory, as culm@NAME",
    )
    parser.add_argument("--json", type=Path, default=BENCH / "peers-result.json")
    args = parser.parse_args(argv)
    args.systems = [s for s in args.systems.split(",") if s]
    args.culm_sources = {}
    for item in args.culm_src:
        name, _, path = item.partition("=")
        if not (name and path and (Path(path) / "culm").is_dir()):
            parser.error(f"--culm-src {item}: NAME=PATH with PATH holding culm/ (a src directory)")
        SYSTEMS[f"culm@{name}"] = SYSTEMS["culm"]
        args.culm_sources[f"culm@{name}"] = Path(path).resolve()
        if f"culm@{name}" not in args.systems:
            args.systems.insert(
                args.systems.index("culm") + 1 if "culm" in args.systems else 0, f"culm@{name}"
            )
    unknown = set(args.systems) - set(SYSTEMS)
    if unknown:
        parser.error(f"unknown systems {sorted(unknown)}; known: {', '.join(SYSTEMS)}")
    if any(SYSTEMS[s][0] for s in args.systems) and not args.peers_python.exists():
        parser.error(
            f"{args.peers_python} is missing: run bench/setup_peers.sh (or --systems culm)"
        )
    args.only = [s for s in args.only.split(",") if s]
    args.modes = [m for m in args.modes.split(",") if m]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    failures = Failures()
    started = time.time()
    meta = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "load_before": loadavg(),
        "versions": peer_versions(args),
        "args": {k: str(v) for k, v in vars(args).items()},
    }
    sets: list[dict[str, Any]] = []
    delay = {"stream": args.token_delay_ms, "write": 0.0}
    for scenario in args.only:
        modes = {"parked": ["parked"], "cold": ["write"]}.get(scenario, args.modes)
        for mode in modes:
            print(f"{scenario} ({mode}):", file=sys.stderr, flush=True)
            park = max(60.0, args.park_timeout + 15) if mode == "parked" else 0.0
            with Upstream(mode, args.tokens, delay.get(mode, 0.0), park) as upstream:
                if scenario == "http":
                    sets.append(over_http(upstream, args, failures))
                else:
                    sets.append(interleaved(scenario, upstream, args, failures))
    meta["load_after"] = loadavg()
    meta["seconds"] = round(time.time() - started, 1)
    summary = report.summarize(sets)
    args.json.write_text(json.dumps({"meta": meta, "sets": sets, "summary": summary}, indent=1))
    print(report.markdown(meta, summary))
    for failure in failures:
        print(f"FAIL: {failure}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
