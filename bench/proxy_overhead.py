"""Proxy overhead: the latency culm's forward proxy adds over calling the upstream directly.

Three targets answer the same OpenAI Chat Completions requests, each backed by the same fake
upstream (``bench/fake_openai.py``, its own process: a raw asyncio HTTP/1.1 server with zero
delay, ``--chunks`` content chunks per streamed answer):

* ``direct``: the fake upstream itself, ``POST /v1/chat/completions`` (the baseline);
* ``culm``: ``culm serve`` (its own process, a fresh ``CULM_HOME`` in a temporary directory,
  ``OPENAI_BASE_URL`` = the fake upstream), ``POST /openai/v1/chat/completions``;
* ``litellm``: LiteLLM's proxy from its own virtual environment (``bench/setup_litellm.sh`` or
  ``--setup-litellm`` creates ``bench/.venv-litellm``), one worker, a config mapping ``--model``
  to ``openai/<model>`` at the fake upstream, a master key (it refuses to start without one),
  the local model cost map (``LITELLM_LOCAL_MODEL_COST_MAP=True``) and ``LITELLM_LOG=ERROR``.
  It is started through a small launcher that records, with a Python audit hook, every
  ``socket.connect``/``getaddrinfo`` it makes, so the report says whether it called anything
  but the fake upstream.

Each target is probed first (one request of each kind, the answer's text, usage and ``[DONE]``
checked); a culm without the proxy route (404) is reported as such and skipped. Then, for
non-streaming (``plain``) and streaming (``stream``, with ``stream_options.include_usage``)
requests, the scenarios of ``--only`` (default: all three):

* ``sequential``: ``--requests`` requests per target after ``--warmup`` unrecorded ones, one at a
  time on a keep-alive ``httpx2`` connection per target, in ``--rounds`` rounds: each round gives
  every target its share as one block, the order rotating, so that drift in the machine's load
  hits every target alike while one target's trailing work (LiteLLM logs after answering) does
  not land in another's block. Latency = send to the whole response read; for streams also the
  time to the first body read carrying a ``data:`` frame (TTFB). Also the server's CPU per
  request.
* ``concurrent``: ``--clients`` (50) concurrent ``httpx2`` clients per target (one pool of 50
  keep-alive connections) for ``--duration`` seconds after ``--warmup-seconds``: latency
  distribution and requests/s. The client is Python in this process; on a small machine it
  competes with the servers for CPU (the table shows who used what), so requests/s here is a
  floor for the server's capacity.
* ``wrk``: the same load from ``wrk`` (C, ``-t1 -c50``, a Lua script for the POST body) for
  ``--wrk-duration`` seconds after a ``--warmup-seconds`` run, when ``wrk`` is installed
  (``apt-get install -y wrk``): requests/s and wrk's latency percentiles, with far less client
  CPU. The ≥ 1,000 requests/s target is judged on this one when it ran.

**Added latency** = a percentile of the target's distribution minus the same percentile of
``direct``'s distribution measured in the same run and scenario (added p50 = p50(target) −
p50(direct), added p99 = p99(target) − p99(direct)); requests are not paired, so this is not a
percentile of per-request differences. The client's own cost (httpx2 and the loopback round
trip: ~0.7–0.8 ms for ``direct`` here) is in both and cancels out.

Every phase also checks that the fake upstream saw exactly one request per request sent (a
proxy that retries or caches would show) and counts the upstream connections the proxy opened
(keep-alive pooling). CPU seconds of the upstream, the target server (with its children), the
client (this process, or wrk) and everything else on the machine are reported per phase.

Targets (from the issue): culm's added p50 < 1 ms, and below LiteLLM's in the same run;
≥ 1,000 non-streaming requests/s on one process.

Run it from the repository root::

    bench/setup_litellm.sh                                   # once: LiteLLM in bench/.venv-litellm
    .venv/bin/python bench/proxy_overhead.py                 # everything, ~3 min
    .venv/bin/python bench/proxy_overhead.py --targets culm --only sequential --requests 2000
    .venv/bin/python bench/proxy_overhead.py --only wrk --json
    .venv/bin/python bench/proxy_overhead.py --culm-src ../other-worktree/src   # another checkout

Results: ``docs/benchmarks.md``. Missed targets print MISS (or PENDING when culm has no proxy
route yet) but exit 0; the exit status is 1 only when something is wrong (a failed request, a
wrong answer, the upstream seeing a different number of requests, a server failing).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2
import psutil

import culm

BENCH = Path(__file__).resolve().parent
DEFAULT_LITELLM_VENV = BENCH / ".venv-litellm"
PROXIES = ("culm", "litellm")
SCENARIOS = ("sequential", "concurrent", "wrk")
MODES = ("plain", "stream")
TARGET_ADDED_P50_MS = 1.0
TARGET_RPS = 1000.0
BLOCK_PAUSE_S = 0.05
MAX_ERRORS_KEPT = 10
UPSTREAM_KEY = "sk-bench"

Result = dict[str, Any]

# Run LiteLLM's CLI under an audit hook that logs every outgoing connection and name lookup.
LITELLM_LAUNCHER = """
import os, sys
_log = open(os.environ["BENCH_NET_LOG"], "a", buffering=1)
def _hook(event, args):
    if event == "socket.connect":
        _log.write("connect %r\\n" % (args[1],))
    elif event == "socket.getaddrinfo":
        _log.write("getaddrinfo %r\\n" % (args[:2],))
sys.addaudithook(_hook)
sys.argv[0] = os.environ["BENCH_LITELLM_SCRIPT"]
from litellm.proxy.proxy_cli import run_server
sys.exit(run_server())
"""


# Processes


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Service:
    """A server process the benchmark started, and where to reach it."""

    name: str
    process: subprocess.Popen[bytes]
    base_url: str  # up to and including /v1
    log_path: Path
    headers: dict[str, str]
    started_in_s: float = 0.0
    available: bool = True
    note: str = ""

    @property
    def chat_url(self) -> str:
        return f"{self.base_url}/chat/completions"

    @property
    def models_url(self) -> str:
        return f"{self.base_url}/models"

    def tree(self) -> list[psutil.Process]:
        with contextlib.suppress(psutil.Error):
            proc = psutil.Process(self.process.pid)
            return [proc, *proc.children(recursive=True)]
        return []

    def cpu(self) -> float:
        total = 0.0
        for proc in self.tree():
            with contextlib.suppress(psutil.Error):
                times = proc.cpu_times()
                total += times.user + times.system
        return total

    def rss_mb(self) -> float:
        total = 0
        for proc in self.tree():
            with contextlib.suppress(psutil.Error):
                total += proc.memory_info().rss
        return total / 2**20

    def log_tail(self, lines: int = 30) -> list[str]:
        try:
            return self.log_path.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            return []

    def wait_ready(self, url: str, timeout: float) -> None:
        """Poll ``url`` until it answers 200; stop the process if it never does."""
        try:
            self._wait_ready(url, timeout)
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, url: str, timeout: float) -> None:
        start = time.monotonic()
        deadline = start + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                tail = "\n".join(self.log_tail())
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}:\n{tail}")
            with contextlib.suppress(httpx2.HTTPError):
                if httpx2.get(url, timeout=2.0).status_code == 200:
                    self.started_in_s = time.monotonic() - start
                    return
            time.sleep(0.1)
        raise RuntimeError(f"{self.name} did not answer {url} within {timeout:g} s")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def spawn(command: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    with log_path.open("wb") as log:
        return subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)


def start_upstream(args: argparse.Namespace, tmp: Path) -> Service:
    port = free_port()
    command = [sys.executable, str(BENCH / "fake_openai.py"), "--port", str(port)]
    command += ["--chunks", str(args.chunks), "--chunk-delay-ms", str(args.chunk_delay_ms)]
    command += ["--models", args.model]
    log = tmp / "upstream.log"
    service = Service(
        "upstream",
        spawn(command, dict(os.environ), log),
        f"http://127.0.0.1:{port}/v1",
        log,
        {"Authorization": f"Bearer {UPSTREAM_KEY}"},
    )
    service.wait_ready(f"http://127.0.0.1:{port}/health", 30.0)
    return service


def start_culm(args: argparse.Namespace, tmp: Path, upstream: Service) -> Service:
    port = free_port()
    home = tmp / "culm-home"
    home.mkdir()
    env = {
        **os.environ,
        "CULM_HOME": str(home),
        "OPENAI_BASE_URL": upstream.base_url,
        "OPENAI_API_KEY": UPSTREAM_KEY,
    }
    env.pop("CULM_API_KEY", None)
    if args.culm_src is not None:  # another checkout's culm; leave no __pycache__ in it
        env["PYTHONPATH"] = os.pathsep.join(
            filter(None, [str(args.culm_src), env.get("PYTHONPATH")])
        )
        env["PYTHONDONTWRITEBYTECODE"] = "1"
    log = tmp / "culm.log"
    command = [sys.executable, "-m", "culm", "serve", "--port", str(port)]
    service = Service(
        "culm",
        spawn(command, env, log),
        f"http://127.0.0.1:{port}/openai/v1",
        log,
        {"Authorization": f"Bearer {UPSTREAM_KEY}"},
    )
    service.wait_ready(f"http://127.0.0.1:{port}/health", 60.0)
    return service


def loop_stack(python: str) -> str:
    """What uvicorn's ``loop="auto"``/``http="auto"`` pick in that interpreter's environment."""
    code = (
        "import importlib.util as u; "
        "print('uvloop' if u.find_spec('uvloop') else 'asyncio', "
        "'httptools' if u.find_spec('httptools') else 'h11')"
    )
    done = subprocess.run([python, "-c", code], capture_output=True, text=True, check=False)
    return done.stdout.strip().replace(" ", " + ") or "?"


def litellm_version(venv: Path) -> str | None:
    python = venv / "bin" / "python"
    if not python.exists():
        return None
    code = "import importlib.metadata as m; print(m.version('litellm'))"
    done = subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=False)
    return done.stdout.strip() or None


def start_litellm(args: argparse.Namespace, tmp: Path, upstream: Service) -> Service:
    venv = args.litellm_venv
    port = free_port()
    master_key = "sk-" + os.urandom(24).hex()
    config = tmp / "litellm.yaml"
    config.write_text(
        textwrap.dedent(
            f"""\
            model_list:
              - model_name: {args.model}
                litellm_params:
                  model: openai/{args.model}
                  api_base: {upstream.base_url}
                  api_key: {UPSTREAM_KEY}
            litellm_settings:
              drop_params: true
            general_settings:
              master_key: {master_key}
            """
        )
    )
    env = {
        **os.environ,
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        "LITELLM_LOG": "ERROR",
        "LITELLM_DONT_SHOW_FEEDBACK_BOX": "true",
        "BENCH_NET_LOG": str(tmp / "litellm-network.log"),
        "BENCH_LITELLM_SCRIPT": str(venv / "bin" / "litellm"),
    }
    # Nothing from culm's environment (its venv, an OpenAI key) leaks into LiteLLM's.
    for name in ("VIRTUAL_ENV", "PYTHONPATH", "OPENAI_API_KEY", "OPENAI_BASE_URL"):
        env.pop(name, None)
    command = [str(venv / "bin" / "python"), "-c", LITELLM_LAUNCHER]
    command += ["--config", str(config), "--port", str(port), "--num_workers", "1"]
    log = tmp / "litellm.log"
    service = Service(
        "litellm",
        spawn(command, env, log),
        f"http://127.0.0.1:{port}/v1",
        log,
        {"Authorization": f"Bearer {master_key}"},
    )
    service.wait_ready(f"http://127.0.0.1:{port}/health/liveliness", 180.0)
    return service


def network_calls(tmp: Path, upstream: Service) -> Result:
    """What LiteLLM's audit log shows: connections and lookups to anything but the upstream."""
    path = tmp / "litellm-network.log"
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return {"recorded": False}
    port = upstream.base_url.split(":")[2].split("/")[0]
    upstream_addr = f"('127.0.0.1', {port})"
    other = [line for line in lines if upstream_addr not in line]
    return {
        "recorded": True,
        "upstream_connects": sum(1 for line in lines if upstream_addr in line),
        "other": sorted(set(other)),
    }


@dataclass
class Lab:
    """The running upstream and proxies, and one keep-alive connection to the upstream's
    counters (so that reading them opens no connection of its own)."""

    upstream: Service
    servers: list[Service]
    stats_http: httpx2.Client = field(
        default_factory=lambda: httpx2.Client(
            timeout=10.0,
            trust_env=False,
            limits=httpx2.Limits(max_connections=1, keepalive_expiry=24 * 3600.0),
        )
    )

    def stats(self) -> dict[str, int]:
        url = self.upstream.base_url.removesuffix("/v1") + "/stats"
        stats: dict[str, int] = self.stats_http.get(url).json()
        return stats

    def settle(self, quiet: float = 0.3, timeout: float = 120.0) -> dict[str, int]:
        """Wait until the upstream has seen no new request for ``quiet`` seconds (a proxy may
        still be working through requests whose clients have gone, e.g. after wrk stops)."""
        deadline = time.monotonic() + timeout
        last = self.stats()
        still_since = time.monotonic()
        while time.monotonic() < deadline:
            time.sleep(0.05)
            now = self.stats()
            if now["chat"] != last["chat"]:
                last, still_since = now, time.monotonic()
            elif time.monotonic() - still_since >= quiet:
                return now
        return last

    def watch(self) -> CpuWatch:
        return CpuWatch(self.upstream, self.servers)


# Requests


@dataclass
class Samples:
    latencies: list[float] = field(default_factory=list)  # seconds, whole response
    ttfb: list[float] = field(default_factory=list)  # seconds, first data: frame (streams)
    errors: int = 0
    error_messages: list[str] = field(default_factory=list)

    def error(self, message: str) -> None:
        self.errors += 1
        if len(self.error_messages) < MAX_ERRORS_KEPT:
            self.error_messages.append(message)


def request_body(model: str, stream: bool) -> bytes:
    body: dict[str, Any] = {
        "model": model,
        "messages": [
            {"role": "system", "content": "You are a benchmark. Answer briefly."},
            {"role": "user", "content": "Say twenty words."},
        ],
    }
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return json.dumps(body).encode()


@dataclass
class Client:
    """A keep-alive httpx2 client for one target, with the request bodies ready."""

    name: str  # direct, culm or litellm
    service: Service
    http: httpx2.AsyncClient
    bodies: dict[str, bytes]
    headers: dict[str, str]

    @classmethod
    def open(
        cls, name: str, service: Service, args: argparse.Namespace, connections: int
    ) -> Client:
        limits = httpx2.Limits(
            max_connections=connections,
            max_keepalive_connections=connections,
            keepalive_expiry=600.0,
        )
        http = httpx2.AsyncClient(
            limits=limits, timeout=httpx2.Timeout(args.timeout), trust_env=False
        )
        headers = {
            **service.headers,
            "Content-Type": "application/json",
            "Accept-Encoding": args.accept_encoding,
        }
        bodies = {mode: request_body(args.model, mode == "stream") for mode in MODES}
        return cls(name, service, http, bodies, headers)

    async def close(self) -> None:
        await self.http.aclose()

    async def one(self, mode: str, samples: Samples) -> None:
        """One request; appends its latency (and TTFB) to ``samples``, or counts an error."""
        try:
            if mode == "stream":
                await self._stream(samples)
            else:
                await self._plain(samples)
        except httpx2.HTTPError as exc:
            samples.error(f"{type(exc).__name__}: {exc}")

    async def _plain(self, samples: Samples) -> None:
        start = time.perf_counter()
        response = await self.http.post(
            self.service.chat_url, content=self.bodies["plain"], headers=self.headers
        )
        elapsed = time.perf_counter() - start
        if response.status_code != 200:
            samples.error(f"HTTP {response.status_code}: {response.text[:200]}")
        elif b'"usage"' not in response.content:
            samples.error(f"no usage in the answer: {response.text[:200]}")
        else:
            samples.latencies.append(elapsed)

    async def _stream(self, samples: Samples) -> None:
        start = time.perf_counter()
        first = 0.0
        tail = b""
        async with self.http.stream(
            "POST", self.service.chat_url, content=self.bodies["stream"], headers=self.headers
        ) as response:
            if response.status_code != 200:
                body = await response.aread()
                samples.error(f"HTTP {response.status_code}: {body[:200]!r}")
                return
            async for chunk in response.aiter_raw():
                if not first and b"data:" in chunk:
                    first = time.perf_counter()
                tail = (tail + chunk)[-64:]
        end = time.perf_counter()
        if b"data: [DONE]" not in tail:
            samples.error(f"stream did not end with data: [DONE]: …{tail!r}")
        else:
            samples.latencies.append(end - start)
            samples.ttfb.append(first - start)


async def probe(client: Client, args: argparse.Namespace) -> tuple[str | None, list[str]]:
    """One request of each kind, checked in full: (why the target is unavailable, or None;
    the problems found in its answers)."""
    service = client.service
    try:
        response = await client.http.post(
            service.chat_url, content=client.bodies["plain"], headers=client.headers
        )
    except httpx2.HTTPError as exc:
        return f"POST {service.chat_url} failed: {type(exc).__name__}: {exc}", []
    if response.status_code == 404:
        return (
            f"POST {service.chat_url} → 404 (no such route: is the forward proxy in this build?)",
            [],
        )
    if response.status_code != 200:
        return None, [f"POST (plain) → HTTP {response.status_code}: {response.text[:300]}"]
    problems = check_plain(response.json(), args)
    problems += await probe_stream(client, args)
    models = await client.http.get(service.models_url, headers=client.headers)
    if models.status_code != 200:
        problems.append(f"GET {service.models_url} → HTTP {models.status_code}")
    elif args.model not in [m.get("id") for m in models.json().get("data", [])]:
        problems.append(f"GET {service.models_url} does not list {args.model}")
    return None, problems


def expected_text(args: argparse.Namespace) -> str:
    """What the fake upstream answers (see fake_openai.py)."""
    return "".join(f"w{i} " for i in range(args.chunks))


def check_plain(answer: Result, args: argparse.Namespace) -> list[str]:
    problems = []
    content = answer["choices"][0]["message"].get("content")
    if content != expected_text(args):
        problems.append(f"plain answer's content is {content!r}, expected {expected_text(args)!r}")
    usage = answer.get("usage") or {}
    if usage.get("completion_tokens") != args.chunks:
        problems.append(f"plain answer's usage is {usage}")
    return problems


async def probe_stream(client: Client, args: argparse.Namespace) -> list[str]:
    text: list[str] = []
    frames: list[str] = []
    usage = None
    async with client.http.stream(
        "POST", client.service.chat_url, content=client.bodies["stream"], headers=client.headers
    ) as response:
        if response.status_code != 200:
            body = await response.aread()
            return [f"POST (stream) → HTTP {response.status_code}: {body[:300]!r}"]
        async for line in response.aiter_lines():
            if line.startswith("data:"):
                frames.append(line[5:].strip())
    for data in frames[:-1]:
        try:
            chunk = json.loads(data)
        except ValueError:
            return [f"a stream frame is not JSON: {data[:200]!r}"]
        text += [(c.get("delta") or {}).get("content") or "" for c in chunk.get("choices") or []]
        usage = chunk.get("usage") or usage
    problems = []
    if "".join(text) != expected_text(args):
        problems.append(f"streamed content is {''.join(text)!r}, expected {expected_text(args)!r}")
    if not frames or frames[-1] != "[DONE]":
        problems.append("the stream does not end with data: [DONE]")
    if not usage or usage.get("completion_tokens") != args.chunks:
        problems.append(f"the stream's usage chunk is {usage}")
    return problems


# Measuring


def percentile(values: list[float], fraction: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def distribution(values: list[float]) -> Result:
    """p50/p90/p99/max/mean in milliseconds."""
    result: Result = {}
    for name, fraction in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99)):
        value = percentile(values, fraction)
        result[f"{name}_ms"] = None if value is None else value * 1000
    result["max_ms"] = max(values) * 1000 if values else None
    result["mean_ms"] = sum(values) / len(values) * 1000 if values else None
    return result


def busy_cpu() -> float:
    """CPU seconds the whole machine spent busy so far (all CPUs)."""
    times = psutil.cpu_times()
    extra = ("nice", "irq", "softirq")
    return float(times.user + times.system + sum(getattr(times, name, 0.0) for name in extra))


def own_cpu() -> float:
    times = os.times()
    return times.user + times.system


class CpuWatch:
    """CPU seconds used by the upstream, the servers, this process and the rest of the machine."""

    def __init__(self, upstream: Service, servers: list[Service]) -> None:
        self.services = [upstream, *servers]
        self.start: dict[str, float] = {}
        self.wall = 0.0

    def __enter__(self) -> CpuWatch:
        self.start = self._sample()
        self.wall = time.monotonic()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.monotonic() - self.wall
        end = self._sample()
        self.used = {name: end[name] - self.start[name] for name in end}

    def _sample(self) -> dict[str, float]:
        sample = {service.name: service.cpu() for service in self.services}
        sample["client"] = own_cpu()
        sample["machine"] = busy_cpu()
        return sample

    def report(self, extra_client: float = 0.0) -> Result:
        """CPU seconds per process; ``others`` is the machine's busy time minus all of them."""
        used = dict(self.used)
        used["client"] += extra_client
        machine = used.pop("machine")
        used["others"] = max(0.0, machine - sum(used.values()))
        return {"wall_s": self.wall, "cpu_s": used}


async def sequential(
    clients: list[Client], mode: str, args: argparse.Namespace, lab: Lab
) -> Result:
    """``--warmup`` + ``--requests`` requests per target, one at a time, in ``--rounds`` rounds;
    each round gives every target (in rotating order) its share as one block."""
    samples = {client.name: Samples() for client in clients}
    warm = Samples()
    for client in clients:
        for _ in range(args.warmup):
            await client.one(mode, warm)
    before = lab.settle()
    gc.collect()
    blocks = split(args.requests, args.rounds)
    with lab.watch() as watch:
        for round_index, block in enumerate(blocks):
            for client in rotate(clients, round_index):
                await asyncio.sleep(BLOCK_PAUSE_S)  # the previous target's trailing work
                for _ in range(block):
                    await client.one(mode, samples[client.name])
    after = lab.settle()
    sent = args.requests * len(clients)
    results = {}
    cpu = watch.report()
    for client in clients:
        result = summarize(samples[client.name], mode)
        if client.service is not lab.upstream:
            server_cpu = cpu["cpu_s"][client.service.name]
            result["server_cpu_us_per_request"] = server_cpu / args.requests * 1e6
        results[client.name] = result
    return {
        "requests_per_target": args.requests,
        "rounds": len(blocks),
        "warmup_per_target": args.warmup,
        "cpu": cpu,
        "upstream": upstream_delta(before, after, sent),
        "warmup_errors": warm.error_messages,
        "targets": results,
    }


def split(total: int, parts: int) -> list[int]:
    parts = max(1, min(parts, total))
    return [total // parts + (i < total % parts) for i in range(parts)]


def rotate(items: list[Client], i: int) -> list[Client]:
    shift = i % len(items)
    return items[shift:] + items[:shift]


def summarize(samples: Samples, mode: str) -> Result:
    result: Result = {
        "requests": len(samples.latencies),
        "errors": samples.errors,
        "error_messages": samples.error_messages,
        "latency": distribution(samples.latencies),
    }
    if mode == "stream":
        result["ttfb"] = distribution(samples.ttfb)
    return result


def upstream_delta(before: dict[str, int], after: dict[str, int], sent: int) -> Result:
    chat = after["chat"] - before["chat"]
    return {
        "requests": chat,
        "expected": sent,
        "connections_opened": after["connections"] - before["connections"],
    }


async def concurrent(client: Client, mode: str, args: argparse.Namespace, lab: Lab) -> Result:
    """``--clients`` workers sending back to back for ``--duration`` s, after a warm-up."""

    async def worker(deadline: float, samples: Samples) -> None:
        while time.perf_counter() < deadline:
            await client.one(mode, samples)

    warm = Samples()
    deadline = time.perf_counter() + args.warmup_seconds
    await asyncio.gather(*(worker(deadline, warm) for _ in range(args.clients)))
    samples = Samples()
    before = lab.settle()
    gc.collect()
    with lab.watch() as watch:
        start = time.perf_counter()
        deadline = start + args.duration
        await asyncio.gather(*(worker(deadline, samples) for _ in range(args.clients)))
        elapsed = time.perf_counter() - start
    after = lab.settle()
    result = summarize(samples, mode)
    done = len(samples.latencies) + samples.errors
    result.update(
        clients=args.clients,
        seconds=elapsed,
        requests_per_s=len(samples.latencies) / elapsed,
        cpu=watch.report(),
        upstream=upstream_delta(before, after, done),
        warmup_errors=warm.error_messages,
    )
    return result


# wrk


def wrk_script(service: Service, body: bytes, path: Path) -> Path:
    lines = ['wrk.method = "POST"', f"wrk.body = {lua_string(body.decode())}"]
    headers = {**service.headers, "Content-Type": "application/json"}
    lines += [f"wrk.headers[{lua_string(k)}] = {lua_string(v)}" for k, v in headers.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def lua_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def parse_wrk(output: str) -> Result:
    result: Result = {}
    if match := re.search(r"Requests/sec:\s+([\d.]+)", output):
        result["requests_per_s"] = float(match.group(1))
    if match := re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m)\b", output):
        result["requests"] = int(match.group(1))
        result["seconds"] = float(match.group(2)) * UNITS[match.group(3)] / 1000
    latency: Result = {}
    for pct in ("50", "75", "90", "99"):
        if match := re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s|m)\s*$", output, re.M):
            latency[f"p{pct}_ms"] = float(match.group(1)) * UNITS[match.group(2)]
    result["latency"] = latency
    match = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    result["non_2xx"] = int(match.group(1)) if match else 0
    match = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    result["socket_errors"] = sum(int(g) for g in match.groups()) if match else 0
    return result


def run_wrk(
    wrk: str, service: Service, script: Path, seconds: float, args: argparse.Namespace
) -> tuple[str, float]:
    """wrk's output and CPU seconds."""
    command = [wrk, f"-t{args.wrk_threads}", f"-c{args.clients}", f"-d{max(1, round(seconds))}s"]
    command += ["--latency", "--timeout", f"{int(args.timeout)}s", "-s", str(script)]
    command.append(service.chat_url)
    with tempfile.TemporaryFile() as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        output = out.read().decode(errors="replace")
    if process.returncode:
        raise RuntimeError(f"wrk failed ({process.returncode}): {output}")
    return output, usage.ru_utime + usage.ru_stime


def wrk_phase(
    wrk: str, service: Service, mode: str, args: argparse.Namespace, lab: Lab, tmp: Path
) -> Result:
    script = wrk_script(service, request_body(args.model, mode == "stream"), tmp / "wrk.lua")
    if args.warmup_seconds > 0:
        run_wrk(wrk, service, script, args.warmup_seconds, args)
    # A proxy goes on with the requests of connections wrk has closed: wait for it to finish.
    before = lab.settle(quiet=1.0)
    with lab.watch() as watch:
        output, wrk_cpu = run_wrk(wrk, service, script, args.wrk_duration, args)
    after = lab.settle(quiet=1.0)
    result = parse_wrk(output)
    result["cpu"] = watch.report(extra_client=wrk_cpu)
    result["upstream"] = upstream_delta(before, after, result.get("requests", 0))
    result["output"] = output
    return result


# Orchestration


@dataclass
class Bench:
    args: argparse.Namespace
    tmp: Path
    upstream: Service | None = None
    services: dict[str, Service] = field(default_factory=dict)
    unavailable: dict[str, str] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    results: Result = field(default_factory=dict)
    litellm_version: str | None = None
    network: Result = field(default_factory=dict)
    stacks: dict[str, str] = field(default_factory=dict)
    rss_mb: dict[str, float] = field(default_factory=dict)
    log_tails: dict[str, list[str]] = field(default_factory=dict)

    def start(self) -> None:
        args = self.args
        self.upstream = upstream = start_upstream(args, self.tmp)
        self.services["direct"] = upstream
        if "culm" in args.target_names:
            self.stacks["culm"] = loop_stack(sys.executable)
            self.services["culm"] = start_culm(args, self.tmp, upstream)
        if "litellm" in args.target_names:
            self.litellm_version = litellm_version(args.litellm_venv)
            if self.litellm_version is None:
                self.unavailable["litellm"] = (
                    f"LiteLLM is not installed in {args.litellm_venv}: run bench/setup_litellm.sh "
                    "(or pass --setup-litellm)"
                )
            else:
                self.stacks["litellm"] = loop_stack(str(args.litellm_venv / "bin" / "python"))
                try:
                    self.services["litellm"] = start_litellm(args, self.tmp, upstream)
                except RuntimeError as exc:
                    self.unavailable["litellm"] = f"LiteLLM did not start: {exc}"

    def stop(self) -> None:
        for service in self.services.values():
            service.stop()

    async def probe_all(self) -> dict[str, Client]:
        clients = {}
        for name, service in list(self.services.items()):
            client = Client.open(name, service, self.args, self.args.clients)
            reason, problems = await probe(client, self.args)
            if reason is not None:
                self.unavailable[name] = reason
                await client.close()
                if name == "direct":
                    raise RuntimeError(f"the fake upstream does not answer: {reason}")
                continue
            self.problems += [f"{name}: {problem}" for problem in problems]
            clients[name] = client
        return clients

    async def run(self) -> None:
        args = self.args
        assert self.upstream is not None
        proxies = [service for name, service in self.services.items() if name != "direct"]
        lab = Lab(self.upstream, proxies)
        clients = await self.probe_all()
        gc.collect()
        gc.freeze()
        try:
            if "sequential" in args.scenarios:
                order = [clients[name] for name in ("direct", *PROXIES) if name in clients]
                for mode in args.mode_names:
                    self.log(f"sequential, {mode}: {args.requests} requests per target …")
                    result = await sequential(order, mode, args, lab)
                    self.results.setdefault("sequential", {})[mode] = result
            if "concurrent" in args.scenarios:
                for mode in args.mode_names:
                    for name, client in clients.items():
                        self.log(f"concurrent, {mode}, {name}: {args.clients} clients …")
                        result = await concurrent(client, mode, args, lab)
                        self.results.setdefault("concurrent", {}).setdefault(mode, {})[name] = (
                            result
                        )
        finally:
            for client in clients.values():
                await client.close()
        try:
            if "wrk" in args.scenarios:
                self.run_wrk(list(clients), lab)
        finally:
            lab.stats_http.close()
        self.check()

    def run_wrk(self, names: list[str], lab: Lab) -> None:
        wrk = shutil.which("wrk")
        if wrk is None:
            self.results["wrk"] = {"skipped": "wrk is not installed (apt-get install -y wrk)"}
            return
        for mode in self.args.mode_names:
            for name in names:
                self.log(f"wrk, {mode}, {name}: {self.args.clients} connections …")
                result = wrk_phase(wrk, self.services[name], mode, self.args, lab, self.tmp)
                self.results.setdefault("wrk", {}).setdefault(mode, {})[name] = result

    def check(self) -> None:
        """Failed requests and upstream request counts that do not match are problems."""
        for scenario, by_mode in self.results.items():
            for mode, by_target in by_mode.items():
                if not isinstance(by_target, dict):
                    continue
                if scenario == "sequential":
                    self.check_upstream(f"{scenario} {mode}", by_target["upstream"], 0)
                    by_target = by_target["targets"]
                for name, result in by_target.items():
                    where = f"{scenario} {mode} {name}"
                    errors = result.get("errors", 0) + result.get("non_2xx", 0)
                    errors += result.get("socket_errors", 0)
                    if errors:
                        messages = "; ".join(result.get("error_messages", [])[:3])
                        self.problems.append(f"{where}: {errors} failed requests {messages}")
                    if "upstream" in result:
                        slack = self.args.clients if scenario == "wrk" else 0
                        self.check_upstream(where, result["upstream"], slack)
        for service in self.services.values():
            if service.process.poll() is not None:
                self.problems.append(f"{service.name} exited with {service.process.returncode}")

    def check_upstream(self, where: str, upstream: Result, slack: int) -> None:
        # wrk counts only the requests that completed within its duration: up to one per
        # connection may have reached the upstream without being counted.
        seen, sent = upstream["requests"], upstream["expected"]
        if not sent <= seen <= sent + slack:
            self.problems.append(f"{where}: the upstream saw {seen} requests for {sent} sent")

    def log(self, message: str) -> None:
        if not self.args.json:
            print(message, file=sys.stderr, flush=True)


# Reporting


def fmt(value: float | None, spec: str = ".2f") -> str:
    return "-" if value is None else format(value, spec)


def added(result: Result, direct: Result | None, metric: str, key: str) -> float | None:
    if direct is None or result is direct:
        return None
    mine, base = result[metric][key], direct[metric][key]
    return None if mine is None or base is None else mine - base


def table(rows: list[list[str]]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  " + "  ".join(cell.rjust(w) for cell, w in zip(row, widths, strict=True)))


def cpu_cells(cpu: Result, server: str | None) -> list[str]:
    used, wall = cpu["cpu_s"], cpu["wall_s"]
    cells = [fmt(used[server] / wall if server else None), fmt(used["upstream"] / wall)]
    return [*cells, fmt(used["client"] / wall), fmt(used["others"] / wall)]


CPU_HEADERS = ["server cores", "upstream cores", "client cores", "others cores"]


def added_latency_rows(result: Result, direct: Result | None, mode: str) -> list[list[str]]:
    """Per target: the latency (and TTFB) distribution and what it adds over direct."""
    rows = []
    metrics = ("ttfb", "latency") if mode == "stream" else ("latency",)
    for metric in metrics:
        row = [metric if mode == "stream" else ""]
        row += [fmt(result[metric][k]) for k in ("p50_ms", "p90_ms", "p99_ms", "max_ms")]
        row += [fmt(added(result, direct, metric, k), "+.2f") for k in ("p50_ms", "p99_ms")]
        rows.append(row)
    return rows


def report_sequential(results: Result) -> None:
    for mode, phase in results.items():
        what = "streaming" if mode == "stream" else "non-streaming"
        print(
            f"\nsequential, {what}: {phase['requests_per_target']} requests per target "
            f"(after {phase['warmup_per_target']} warm-up), one at a time, in "
            f"{phase['rounds']} rounds"
        )
        headers = ["target", "", "p50 ms", "p90 ms", "p99 ms", "max ms", "added p50"]
        headers += ["added p99", "server CPU µs/req"]
        rows = [headers]
        targets = phase["targets"]
        direct = targets.get("direct")
        for name, result in targets.items():
            cpu = result.get("server_cpu_us_per_request")
            for i, row in enumerate(added_latency_rows(result, direct, mode)):
                rows.append([name if i == 0 else "", *row, fmt(cpu, ".0f") if i == 0 else ""])
        table(rows)
        up, cpu = phase["upstream"], phase["cpu"]
        others = cpu["cpu_s"]["others"] / cpu["wall_s"]
        print(
            f"  upstream: {up['requests']} requests for {up['expected']} sent, "
            f"{up['connections_opened']} new connections; other processes used {others:.2f} "
            f"cores meanwhile"
        )


def report_concurrent(results: Result, clients: int) -> None:
    for mode, by_target in results.items():
        what = "streaming" if mode == "stream" else "non-streaming"
        first = next(iter(by_target.values()))
        print(f"\nconcurrent, {what}: {clients} httpx2 clients for {first['seconds']:.1f} s")
        headers = ["target", "", "req/s", "p50 ms", "p90 ms", "p99 ms", "max ms"]
        headers += ["added p50", "added p99", *CPU_HEADERS, "upstream conns"]
        rows = [headers]
        direct = by_target.get("direct")
        for name, result in by_target.items():
            server = None if name == "direct" else name
            for i, row in enumerate(added_latency_rows(result, direct, mode)):
                extra = [*cpu_cells(result["cpu"], server)] if i == 0 else [""] * 4
                conns = str(result["upstream"]["connections_opened"]) if i == 0 else ""
                rps = fmt(result["requests_per_s"], ",.0f") if i == 0 else ""
                rows.append([name if i == 0 else "", row[0], rps, *row[1:], *extra, conns])
        table(rows)


def report_wrk(results: Result, args: argparse.Namespace) -> None:
    if "skipped" in results:
        print(f"\nwrk: skipped: {results['skipped']}")
        return
    for mode, by_target in results.items():
        what = "streaming" if mode == "stream" else "non-streaming"
        print(
            f"\nwrk, {what}: {args.clients} connections, {args.wrk_threads} thread(s), "
            f"{args.wrk_duration:g} s"
        )
        headers = ["target", "req/s", "p50 ms", "p90 ms", "p99 ms", "added p50", "added p99"]
        headers += [*CPU_HEADERS, "upstream conns", "errors"]
        rows = [headers]
        direct = by_target.get("direct")
        for name, result in by_target.items():
            lat = result["latency"]
            base = direct["latency"] if direct and name != "direct" else None

            def diff(key: str, lat: Result = lat, base: Result | None = base) -> str:
                if base is None or lat.get(key) is None or base.get(key) is None:
                    return "-"
                return format(lat[key] - base[key], "+.2f")

            server = None if name == "direct" else name
            rows.append(
                [
                    name,
                    fmt(result.get("requests_per_s"), ",.0f"),
                    *(fmt(lat.get(k)) for k in ("p50_ms", "p90_ms", "p99_ms")),
                    diff("p50_ms"),
                    diff("p99_ms"),
                    *cpu_cells(result["cpu"], server),
                    str(result["upstream"]["connections_opened"]),
                    str(result["non_2xx"] + result["socket_errors"]),
                ]
            )
        table(rows)


def verdicts(bench: Bench) -> list[Result]:
    """PASS / MISS / PENDING against the issue's targets."""
    out: list[Result] = []
    pending = bench.unavailable.get("culm")
    seq = bench.results.get("sequential", {})

    def verdict(name: str, ok: bool | None, detail: str) -> None:
        if pending:
            mark, detail = "PENDING", "culm has no proxy route yet, see above"
        else:
            mark = "-" if ok is None else ("PASS" if ok else "MISS")
        out.append({"target": name, "verdict": mark, "detail": detail})

    if "culm" not in bench.args.target_names:
        return out
    for mode, metric, label in (
        ("plain", "latency", "non-streaming"),
        ("stream", "ttfb", "streaming, first chunk"),
        ("stream", "latency", "streaming, whole stream"),
    ):
        phase = seq.get(mode, {}).get("targets", {})
        if mode not in bench.args.mode_names or "sequential" not in bench.args.scenarios:
            continue
        culm_result, direct = phase.get("culm"), phase.get("direct")
        culm_added = added(culm_result, direct, metric, "p50_ms") if culm_result else None
        verdict(
            f"culm added p50 < {TARGET_ADDED_P50_MS:g} ms (sequential, {label})",
            None if culm_added is None else culm_added < TARGET_ADDED_P50_MS,
            f"added p50 {fmt(culm_added, '+.3f')} ms",
        )
        lite = phase.get("litellm")
        if "litellm" in bench.args.target_names:
            lite_added = added(lite, direct, metric, "p50_ms") if lite else None
            ok = None if culm_added is None or lite_added is None else culm_added < lite_added
            verdict(
                f"culm added p50 below LiteLLM's (sequential, {label})",
                ok,
                f"culm {fmt(culm_added, '+.3f')} ms, LiteLLM {fmt(lite_added, '+.3f')} ms",
            )
    wrk_ran = "plain" in bench.results.get("wrk", {})
    concurrent_ran = "plain" in bench.results.get("concurrent", {})
    if wrk_ran or concurrent_ran:
        scenario = "wrk" if wrk_ran else "concurrent"
        how = "wrk" if wrk_ran else "httpx2 clients"
        source = bench.results[scenario]["plain"].get("culm")
        rps = source.get("requests_per_s") if source else None
        verdict(
            f"culm ≥ {TARGET_RPS:,.0f} non-streaming req/s, one process ({how}, "
            f"{bench.args.clients} concurrent)",
            None if rps is None else rps >= TARGET_RPS,
            f"{fmt(rps, ',.0f')} req/s",
        )
    return out


def print_report(bench: Bench, marks: list[Result]) -> None:
    args = bench.args
    print(
        f"culm {culm.__version__}, LiteLLM {bench.litellm_version or '-'}, Python "
        f"{platform.python_version()}, {psutil.cpu_count()} CPUs; fake upstream: "
        f"{args.chunks} chunks per stream, chunk delay {args.chunk_delay_ms:g} ms; load average "
        f"{os.getloadavg()[0]:.2f}"
    )
    for name, service in bench.services.items():
        state = bench.unavailable.get(name, "ok")
        stack = f" ({bench.stacks[name]})" if name in bench.stacks else ""
        print(
            f"  {name:8} {service.chat_url}{stack}  started in {service.started_in_s:.1f} s, "
            f"RSS at the end {bench.rss_mb.get(name, 0):.0f} MB: {state}"
        )
    for name, reason in bench.unavailable.items():
        if name not in bench.services:
            print(f"  {name:8} not started: {reason}")
    if bench.network:
        other = bench.network.get("other", [])
        print(
            f"  LiteLLM's own connections: {bench.network.get('upstream_connects', 0)} to the "
            f"upstream, {len(other)} elsewhere{': ' + '; '.join(other) if other else ''}"
        )
    if "sequential" in bench.results:
        report_sequential(bench.results["sequential"])
    if "concurrent" in bench.results:
        report_concurrent(bench.results["concurrent"], args.clients)
    if "wrk" in bench.results:
        report_wrk(bench.results["wrk"], args)
    print(
        "\nadded = the target's percentile minus direct's (same run, same scenario); "
        "ms unless noted; cores = CPU seconds / wall seconds"
    )
    for mark in marks:
        print(f"target: {mark['target']}: {mark['verdict']} ({mark['detail']})")
    for problem in bench.problems:
        print(f"!!! {problem}")
    for name, lines in bench.log_tails.items():
        print(f"!!! the end of {name}'s log:")
        for line in lines:
            print(f"!!!   | {line}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--targets",
        default="culm,litellm",
        help="proxies to measure, comma-separated, besides direct (default: culm,litellm)",
    )
    parser.add_argument(
        "--only",
        action="append",
        choices=SCENARIOS,
        help="run only this scenario (repeatable; default: all)",
    )
    parser.add_argument(
        "--modes",
        default="plain,stream",
        help="plain (non-streaming) and/or stream, comma-separated (default: both)",
    )
    parser.add_argument(
        "--requests", type=int, default=500, help="sequential requests per target and mode"
    )
    parser.add_argument(
        "--warmup",
        type=int,
        default=50,
        help="unrecorded sequential requests per target and mode first (default 50)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=5,
        help="sequential: split the requests into this many rounds, each target's share of a "
        "round in one block, the order rotating (default 5)",
    )
    parser.add_argument(
        "--clients", type=int, default=50, help="concurrent clients / wrk connections (50)"
    )
    parser.add_argument(
        "--duration", type=float, default=5.0, help="seconds per concurrent phase (default 5)"
    )
    parser.add_argument(
        "--wrk-duration", type=float, default=10.0, help="seconds per wrk phase (default 10)"
    )
    parser.add_argument("--wrk-threads", type=int, default=1, help="wrk threads (default 1)")
    parser.add_argument(
        "--warmup-seconds",
        type=float,
        default=2.0,
        help="unrecorded load before each concurrent and wrk phase (default 2)",
    )
    parser.add_argument(
        "--chunks", type=int, default=20, help="content chunks per streamed answer (default 20)"
    )
    parser.add_argument(
        "--chunk-delay-ms",
        type=float,
        default=0.0,
        help="the fake upstream sleeps this long between content chunks (default 0)",
    )
    parser.add_argument("--model", default="gpt-bench", help="the model name in requests")
    parser.add_argument(
        "--accept-encoding",
        default="identity",
        help="Accept-Encoding of the httpx2 requests (default identity, like wrk)",
    )
    parser.add_argument(
        "--timeout", type=float, default=60.0, help="per-request timeout in seconds (default 60)"
    )
    parser.add_argument(
        "--litellm-venv",
        type=Path,
        default=DEFAULT_LITELLM_VENV,
        help=f"LiteLLM's virtual environment (default {DEFAULT_LITELLM_VENV.relative_to(BENCH.parent)})",
    )
    parser.add_argument(
        "--culm-src",
        type=Path,
        help="run culm serve from this source directory (e.g. another worktree's src) instead "
        "of the installed culm; its dependencies must be in this venv",
    )
    parser.add_argument(
        "--setup-litellm",
        action="store_true",
        help="run bench/setup_litellm.sh first (create the venv, install litellm[proxy])",
    )
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    args = parser.parse_args(argv)
    args.target_names = [t.strip() for t in args.targets.split(",") if t.strip()]
    args.target_names = [t for t in args.target_names if t != "direct"]
    for name in args.target_names:
        if name not in PROXIES:
            parser.error(f"unknown target {name!r} (choose from {', '.join(PROXIES)})")
    args.mode_names = [m.strip() for m in args.modes.split(",") if m.strip()]
    for mode in args.mode_names:
        if mode not in MODES:
            parser.error(f"unknown mode {mode!r} (choose from {', '.join(MODES)})")
    args.scenarios = args.only or list(SCENARIOS)
    return args


def setup_litellm(venv: Path) -> None:
    env = {**os.environ, "LITELLM_VENV": str(venv)}
    subprocess.run(["sh", str(BENCH / "setup_litellm.sh")], env=env, check=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.setup_litellm:
        setup_litellm(args.litellm_venv)
    with tempfile.TemporaryDirectory(prefix="culm-proxy-bench-") as tmp_dir:
        tmp = Path(tmp_dir)
        bench = Bench(args, tmp)
        try:
            bench.start()
            asyncio.run(bench.run())
        except Exception:
            for service in bench.services.values():
                print(f"--- {service.name} log ---", file=sys.stderr)
                print("\n".join(service.log_tail(40)), file=sys.stderr)
            raise
        finally:
            if "litellm" in bench.services and bench.upstream is not None:
                bench.network = network_calls(tmp, bench.upstream)
            bench.rss_mb = {name: service.rss_mb() for name, service in bench.services.items()}
            bench.stop()
            for name, service in bench.services.items():
                if name != "direct" and any(name in problem for problem in bench.problems):
                    bench.log_tails[name] = service.log_tail(20)
        marks = verdicts(bench)
        if args.json:
            report = {
                "culm": culm.__version__,
                "litellm": bench.litellm_version,
                "machine": {
                    "python": platform.python_version(),
                    "cpus": psutil.cpu_count(),
                    "platform": platform.platform(),
                    "load_average": os.getloadavg(),
                },
                "settings": {
                    k: (str(v) if isinstance(v, Path) else v)
                    for k, v in vars(args).items()
                    if k not in ("json", "targets", "modes", "only")
                },
                "servers": {
                    name: {
                        "url": service.chat_url,
                        "started_in_s": service.started_in_s,
                        "rss_mb": bench.rss_mb.get(name),
                        "unavailable": bench.unavailable.get(name),
                        "event_loop_and_http": bench.stacks.get(name),
                    }
                    for name, service in bench.services.items()
                },
                "unavailable": bench.unavailable,
                "litellm_network": bench.network,
                "results": bench.results,
                "verdicts": marks,
                "problems": bench.problems,
                "log_tails": bench.log_tails,
            }
            print(json.dumps(report, indent=2))
        else:
            print_report(bench, marks)
    return 1 if bench.problems else 0


if __name__ == "__main__":
    sys.exit(main())
