"""Stream fan-out: one run emitting ``--tokens`` token events to N SSE subscribers at once.

For each subscriber count in ``--subscribers`` (default 1, 100, 1000) the benchmark:

1. starts a real server in its own process (``python -m culm serve`` on a free port, with a
   fresh ``CULM_HOME`` in a temporary directory holding the scripted model ``bench_fanout``);
2. starts one run with ``POST /v1/runs``. The script first waits ``--connect-wait`` seconds (so
   every subscriber is attached before the first token), then emits one-character ``token``
   events at ``--rate`` tokens/s, ``rate * tick`` of them every ``--tick`` seconds (``--rate 0``:
   as fast as the loop goes, yielding to the event loop after each token the way a network
   stream does; ``--burst``: all tokens in one synchronous burst). The model runs inside the
   server's event loop, so a saturated server also slows the model down: compare the measured
   ``emit tok/s`` with ``--rate``;
3. opens N ``GET /v1/runs/{run_id}/events`` streams, spread over ``--clients`` client processes
   (asyncio in each), and reads every frame until the terminal event. ``--client httpx2``
   (default) uses ``httpx2.AsyncClient.stream``; ``--client raw`` a minimal HTTP/1.1 reader on
   asyncio's protocol API that costs about a third of the client CPU per event.

Per token event, latency = receive time - the event's ``ts`` (stamped when the runner emits it;
server and clients share the machine's clock). Each subscriber must see seq 1, 2, 3 … up to the
run's ``last_seq`` exactly once and in order, ending with ``complete``; any violation is printed
loudly (with the end of the server's log) and makes the exit status 1. Reported per N: latency
p50/p99/max, token deliveries per second in total, the emission rate and the run's duration,
server RSS (idle, and peak during the run), CPU seconds of the server, of the clients and of
everything else on the machine while the tokens streamed, server CPU per delivery, and PASS/MISS
against the target (1,000 subscribers, p99 < 100 ms).

Tokens per run are capped at ``--max-deliveries / N`` (default 2,000,000: 2,000 tokens for 1,000
subscribers), since 10,000 x 1,000 deliveries take several minutes of server CPU here.

Caveat: clients and server share the machine. On a small machine (2 cores) the client processes
compete with the server for CPU, and a client that falls behind reads late, which counts as
latency; so does anything else running (``others CPU s``). ``--pin`` gives the server CPU 0 and
the clients the rest.

Run it from the repository root::

    .venv/bin/python bench/stream_fanout.py                            # 1, 100, 1000 subscribers
    .venv/bin/python bench/stream_fanout.py --client raw --json        # less client CPU
    .venv/bin/python bench/stream_fanout.py --subscribers 100 --rate 0 # full speed
    .venv/bin/python bench/stream_fanout.py --subscribers 1000 --profile-dir /tmp/prof  # py-spy

Missed targets print MISS but exit 0; the exit status is 1 only when something is wrong (an event
missing, duplicated or out of order, a subscriber that did not finish, the server failing).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import multiprocessing
import multiprocessing.connection
import os
import platform
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import httpx2
import psutil

import culm

SCRIPT_NAME = "bench_fanout"
TARGET_SUBSCRIBERS = 1000
TARGET_P99_MS = 100.0
TERMINAL_TYPES = frozenset({b"complete", b"error", b"cancelled"})
CONNECT_CONCURRENCY = 50
MAX_VIOLATIONS_KEPT = 20

# Latency histogram: 10 µs buckets up to 100 ms, then 1 ms buckets up to 300 s.
FINE_US = 10
FINE_LIMIT_US = 100_000
COARSE_US = 1_000
LIMIT_US = 300_000_000
FINE_BUCKETS = FINE_LIMIT_US // FINE_US
BUCKETS = FINE_BUCKETS + (LIMIT_US - FINE_LIMIT_US) // COARSE_US + 1

Result = dict[str, Any]


# Clients (run in the client processes)


def bucket(latency_us: int) -> int:
    if latency_us < FINE_LIMIT_US:
        return max(latency_us, 0) // FINE_US
    return min(FINE_BUCKETS + (latency_us - FINE_LIMIT_US) // COARSE_US, BUCKETS - 1)


def bucket_value_ms(index: int) -> float:
    """The middle of a bucket, in milliseconds."""
    if index < FINE_BUCKETS:
        return (index + 0.5) * FINE_US / 1000
    return (FINE_LIMIT_US + (index - FINE_BUCKETS + 0.5) * COARSE_US) / 1000


@dataclass
class Tally:
    """What one client process saw, over all its subscribers."""

    hist: list[int] = field(default_factory=lambda: [0] * BUCKETS)
    max_us: int = 0
    tokens: int = 0
    events: int = 0
    reads: int = 0
    gaps: int = 0
    finished: int = 0
    connected: int = 0
    violations: list[str] = field(default_factory=list)
    violation_count: int = 0
    first_rx: float = math.inf
    last_rx: float = 0.0
    ts_cache: dict[int, float] = field(default_factory=dict)
    on_connected: Callable[[], None] = field(default=lambda: None)

    def violation(self, message: str) -> None:
        self.violation_count += 1
        if len(self.violations) < MAX_VIOLATIONS_KEPT:
            self.violations.append(message)

    def ts_of(self, seq: int, frame: bytes) -> float:
        """The event's ``ts`` as a Unix time; every subscriber of the process shares the cache."""
        cached = self.ts_cache.get(seq)
        if cached is None:
            start = frame.index(b'"ts":"') + 6
            end = frame.index(b'"', start)
            cached = datetime.fromisoformat(frame[start:end].decode()).timestamp()
            self.ts_cache[seq] = cached
        return cached

    def summary(self) -> Result:
        emitted = sorted(self.ts_cache.values())
        return {
            "hist": self.hist,
            "max_us": self.max_us,
            "tokens": self.tokens,
            "events": self.events,
            "reads": self.reads,
            "gaps": self.gaps,
            "finished": self.finished,
            "connected": self.connected,
            "violations": self.violations,
            "violation_count": self.violation_count,
            "first_rx": self.first_rx,
            "last_rx": self.last_rx,
            "first_token_ts": emitted[0] if emitted else None,
            "last_token_ts": emitted[-1] if emitted else None,
        }


class Subscriber:
    """Parses one SSE stream and checks seq 1, 2, 3 … once each, in order."""

    def __init__(self, index: int, tally: Tally) -> None:
        self.index = index
        self.tally = tally
        self.expected = 1
        self.buffer = b""
        self.done = False

    def feed(self, chunk: bytes, now: float) -> None:
        tally = self.tally
        tally.reads += 1
        data = self.buffer + chunk
        if b"\r" in data:  # the ": ping" comment comes with \r\n line ends, frames with \n
            data = data.replace(b"\r\n", b"\n")
        frames = data.split(b"\n\n")
        self.buffer = frames.pop()
        for frame in frames:
            if not frame.startswith(b"id: "):
                continue  # ": ping" comments
            line_end = frame.index(b"\n")
            seq = int(frame[4:line_end])
            kind = frame[line_end + 8 : frame.index(b"\n", line_end + 1)]
            self.check(seq, kind)
            tally.events += 1
            if kind == b"token":
                latency_us = int((now - tally.ts_of(seq, frame)) * 1_000_000)
                tally.hist[bucket(latency_us)] += 1
                tally.max_us = max(tally.max_us, latency_us)
                tally.tokens += 1
            elif kind == b"gap":
                tally.gaps += 1
            elif kind in TERMINAL_TYPES:
                self.done = True
                if kind != b"complete":
                    tally.violation(f"subscriber {self.index}: run ended with {kind.decode()}")
        if frames:
            tally.first_rx = min(tally.first_rx, now)
            tally.last_rx = max(tally.last_rx, now)

    def check(self, seq: int, kind: bytes) -> None:
        if self.done:
            self.tally.violation(f"subscriber {self.index}: seq {seq} after the terminal event")
        elif seq != self.expected and kind != b"gap":
            what = "duplicate or out of order" if seq < self.expected else "missing events"
            self.tally.violation(
                f"subscriber {self.index}: got seq {seq}, expected {self.expected} ({what})"
            )
        self.expected = seq + 1


async def subscribe_httpx2(
    client: httpx2.AsyncClient, url: str, subscriber: Subscriber, gate: asyncio.Semaphore
) -> None:
    tally = subscriber.tally
    async with gate:
        stream = client.stream("GET", url, headers={"Accept": "text/event-stream"})
        response = await stream.__aenter__()
    try:
        if response.status_code != 200:
            tally.violation(f"subscriber {subscriber.index}: HTTP {response.status_code}")
            return
        tally.on_connected()
        async for chunk in response.aiter_raw():
            subscriber.feed(chunk, time.time())
    finally:
        await stream.__aexit__(None, None, None)


class RawSSE(asyncio.Protocol):
    """A minimal HTTP/1.1 SSE reader on asyncio's protocol API (``--client raw``): far less
    client CPU per event than a full HTTP client, so more of the machine is left to the server."""

    def __init__(self, request: bytes, subscriber: Subscriber) -> None:
        self.request = request
        self.subscriber = subscriber
        self.head: bytes | None = b""
        self.raw = b""
        self.closed = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        now = time.time()
        if self.head is not None:
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                return
            headers = self.head[:end].lower()
            data, self.head = self.head[end + 4 :], None
            if not headers.startswith(b"http/1.1 200") or b"chunked" not in headers:
                status = headers.split(b"\r\n", 1)[0].decode()
                self.subscriber.tally.violation(f"subscriber {self.subscriber.index}: {status}")
                assert self.transport is not None
                self.transport.close()
                return
            self.subscriber.tally.on_connected()
        payload = self._dechunk(self.raw + data)
        if payload:
            self.subscriber.feed(payload, now)

    def _dechunk(self, buf: bytes) -> bytes:
        """Transfer-Encoding: chunked → the body bytes complete so far."""
        pieces = []
        pos = 0
        while (line_end := buf.find(b"\r\n", pos)) >= 0:
            size = int(buf[pos:line_end], 16)
            end = line_end + 2 + size
            if len(buf) < end + 2:
                break
            if size == 0:
                assert self.transport is not None
                self.transport.close()
                break
            pieces.append(buf[line_end + 2 : end])
            pos = end + 2
        self.raw = buf[pos:]
        return b"".join(pieces)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)


async def subscribe_raw(url: str, subscriber: Subscriber, gate: asyncio.Semaphore) -> None:
    parsed = httpx2.URL(url)
    target = parsed.raw_path.decode()
    request = (
        f"GET {target} HTTP/1.1\r\nHost: {parsed.host}:{parsed.port}\r\n"
        "Accept: text/event-stream\r\n\r\n"
    ).encode()
    loop = asyncio.get_running_loop()
    async with gate:
        _, protocol = await loop.create_connection(
            lambda: RawSSE(request, subscriber), parsed.host, parsed.port
        )
    await protocol.closed


async def subscribe(
    kind: str,
    client: httpx2.AsyncClient,
    url: str,
    subscriber: Subscriber,
    gate: asyncio.Semaphore,
) -> None:
    tally = subscriber.tally
    try:
        if kind == "raw":
            await subscribe_raw(url, subscriber, gate)
        else:
            await subscribe_httpx2(client, url, subscriber, gate)
    except Exception as exc:
        tally.violation(f"subscriber {subscriber.index}: {type(exc).__name__}: {exc}")
    if subscriber.done:
        tally.finished += 1
    else:
        tally.violation(f"subscriber {subscriber.index}: stream closed before the terminal event")


async def client_main(url: str, kind: str, first: int, count: int, conn: Connection) -> Result:
    tally = Tally()

    def on_connected() -> None:
        tally.connected += 1
        if tally.connected == count:
            conn.send(("connected", (time.time(), time.process_time())))

    tally.on_connected = on_connected
    gate = asyncio.Semaphore(CONNECT_CONCURRENCY)
    limits = httpx2.Limits(max_connections=None, max_keepalive_connections=0)
    timeout = httpx2.Timeout(60.0, read=600.0)
    async with httpx2.AsyncClient(limits=limits, timeout=timeout) as client:
        subscribers = [Subscriber(first + i, tally) for i in range(count)]
        await asyncio.gather(*(subscribe(kind, client, url, sub, gate) for sub in subscribers))
    return tally.summary()


def client_process(
    url: str, kind: str, first: int, count: int, cpus: list[int] | None, conn: Connection
) -> None:
    if cpus:
        os.sched_setaffinity(0, cpus)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = count + 256
    if soft != resource.RLIM_INFINITY and soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))  # fails loudly if hard < wanted
    summary = asyncio.run(client_main(url, kind, first, count, conn))
    summary["cpu_seconds"] = time.process_time()
    conn.send(("result", summary))
    conn.close()


# The server and the orchestration (main process)


def build_script(tokens: int, rate: float, tick: float, connect_wait: float, burst: bool) -> Result:
    steps: list[dict[str, Any]] = [{"delay": connect_wait}]
    if burst:
        steps.append({"text": "x" * tokens, "chunk_size": 1})
    elif rate <= 0:
        steps.extend({"delay": 0, "text": "x"} for _ in range(tokens))
    else:
        per_tick = max(1, round(rate * tick))
        for start in range(0, tokens, per_tick):
            if start:
                steps.append({"delay": per_tick / rate})
            steps.append({"text": "x" * min(per_tick, tokens - start), "chunk_size": 1})
    return {"turns": [steps]}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    base_url: str
    log_path: Path

    @classmethod
    def start(cls, home: Path, module: str, cpus: list[int] | None) -> Server:
        port = free_port()
        env = {**os.environ, "CULM_HOME": str(home)}
        env.pop("CULM_API_KEY", None)
        log_path = home / "server.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", module, "serve", "--port", str(port)],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None,
            )
        server = cls(process, f"http://127.0.0.1:{port}", log_path)
        server.wait_healthy()
        return server

    def wait_healthy(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited: {self.log_path.read_text()[-2000:]}")
            with contextlib.suppress(httpx2.HTTPError):
                if httpx2.get(f"{self.base_url}/health", timeout=1.0).status_code == 200:
                    return
            time.sleep(0.1)
        raise RuntimeError("the server did not answer /health in time")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


class Profiler:
    """py-spy on the server while the run streams (``--profile-dir``)."""

    def __init__(self, pid: int, path: Path) -> None:
        exe = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
        command = [exe, "record", "--pid", str(pid), "--format", "raw", "--rate", "200"]
        self.path = path
        self.process = subprocess.Popen(
            [*command, "--output", str(path), "--nonblocking"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def stop(self) -> None:
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()


def split(total: int, parts: int) -> list[int]:
    parts = max(1, min(parts, total))
    return [total // parts + (i < total % parts) for i in range(parts)]


def measure(subscribers: int, args: argparse.Namespace) -> Result:
    connect_wait = args.connect_wait or 3.0 + subscribers / 200
    tokens = args.tokens
    if args.max_deliveries:
        tokens = max(1, min(tokens, args.max_deliveries // subscribers))
    script = build_script(tokens, args.rate, args.tick, connect_wait, args.burst)
    with tempfile.TemporaryDirectory(prefix="culm-fanout-") as tmp:
        home = Path(tmp)
        (home / "scripts").mkdir()
        (home / "scripts" / f"{SCRIPT_NAME}.json").write_text(json.dumps(script))
        server = Server.start(home, args.server_module, args.server_cpus)
        try:
            result = stream_once(server, subscribers, tokens, connect_wait, args)
        finally:
            server.stop()
        if result["violation_count"]:
            lines = server.log_path.read_text(errors="replace").splitlines()
            result["server_log_tail"] = lines[-40:]
        return result


def stream_once(
    server: Server, subscribers: int, tokens: int, connect_wait: float, args: argparse.Namespace
) -> Result:
    proc = psutil.Process(server.process.pid)
    rss_idle = proc.memory_info().rss
    response = httpx2.post(
        f"{server.base_url}/v1/runs",
        json={"message": "go", "model": f"scripted:{SCRIPT_NAME}"},
        timeout=10.0,
    )
    response.raise_for_status()
    run_id = response.json()["run_id"]
    url = f"{server.base_url}/v1/runs/{run_id}/events"
    context = multiprocessing.get_context("spawn")
    clients = []
    first = 0
    for count in split(subscribers, args.clients):
        parent, child = context.Pipe()
        process = context.Process(
            target=client_process,
            args=(url, args.client, first, count, args.client_cpus, child),
        )
        process.start()
        clients.append((process, parent))
        first += count
    profile = args.profile_dir / f"server-{subscribers}.txt" if args.profile_dir else None
    watch = Watch(proc, [conn for _, conn in clients], profile)
    watch.collect(args.timeout)
    summaries, connected_at = watch.summaries, watch.all_connected_at
    for process, _ in clients:
        process.join(timeout=10)
    run = httpx2.get(f"{server.base_url}/v1/runs/{run_id}", timeout=10.0).json()
    result = combine(summaries, subscribers, run, tokens)
    result.update(
        subscribers=subscribers,
        tokens=tokens,
        connect_wait_s=connect_wait,
        all_connected_before_first_token=bool(
            connected_at and result["first_token_ts"] and connected_at <= result["first_token_ts"]
        ),
        server_rss_idle_mb=rss_idle / 2**20,
        server_rss_peak_mb=watch.rss_peak / 2**20,
        server_cpu_s=watch.server_cpu,
        clients_cpu_s=watch.clients_cpu,
        others_cpu_s=watch.others_cpu,
        load_average=os.getloadavg()[0],
    )
    deliveries = result["token_deliveries"]
    result["server_cpu_us_per_delivery"] = (
        watch.server_cpu / deliveries * 1e6 if deliveries else None
    )
    if profile is not None:
        result["profile"] = str(profile)
    return result


class Watch:
    """Waits for the client processes while sampling the server's RSS; measures the server's CPU
    time (and runs the profiler) from the moment every subscriber is connected."""

    def __init__(
        self, server: psutil.Process, conns: list[Connection], profile_path: Path | None
    ) -> None:
        self.server = server
        self.conns = conns
        self.profile_path = profile_path
        self.rss_peak = server.memory_info().rss
        self.server_cpu = 0.0
        self.clients_cpu = 0.0
        self.others_cpu = 0.0
        self.connected: list[float] = []
        self.clients_cpu_at_connect = 0.0
        self.summaries: list[Result] = []

    def collect(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        cpu_start, busy_start = self._cpu(), busy_cpu()
        profiler = None
        try:
            pending = list(self.conns)
            while pending:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the subscribers did not finish within {timeout:g} s")
                for conn in multiprocessing.connection.wait(pending, timeout=0.2):
                    assert isinstance(conn, Connection)
                    try:
                        kind, payload = conn.recv()
                    except EOFError:
                        raise RuntimeError("a client process died (see its traceback)") from None
                    if kind == "result":
                        self.summaries.append(payload)
                        pending.remove(conn)
                        continue
                    connected_at, process_time = payload
                    self.connected.append(connected_at)
                    self.clients_cpu_at_connect += process_time
                    if len(self.connected) == len(self.conns):
                        cpu_start, busy_start = self._cpu(), busy_cpu()
                        if self.profile_path is not None:
                            profiler = Profiler(self.server.pid, self.profile_path)
                self.rss_peak = max(self.rss_peak, self.server.memory_info().rss)
        finally:
            if profiler is not None:
                profiler.stop()
        self.server_cpu = self._cpu() - cpu_start
        self.clients_cpu = sum(s["cpu_seconds"] for s in self.summaries)
        self.clients_cpu -= self.clients_cpu_at_connect
        busy = busy_cpu() - busy_start
        self.others_cpu = max(0.0, busy - self.server_cpu - self.clients_cpu)

    @property
    def all_connected_at(self) -> float | None:
        return max(self.connected) if len(self.connected) == len(self.conns) else None

    def _cpu(self) -> float:
        times = self.server.cpu_times()
        return float(times.user + times.system)


def busy_cpu() -> float:
    """CPU seconds the whole machine spent busy so far (all CPUs)."""
    times = psutil.cpu_times()
    extra = ("nice", "irq", "softirq")
    return float(times.user + times.system + sum(getattr(times, name, 0.0) for name in extra))


def percentile_ms(hist: list[int], total: int, fraction: float) -> float | None:
    if total == 0:
        return None
    rank = max(1, math.ceil(total * fraction))
    seen = 0
    for index, count in enumerate(hist):
        seen += count
        if seen >= rank:
            return bucket_value_ms(index)
    return bucket_value_ms(len(hist) - 1)


def combine(summaries: list[Result], subscribers: int, run: Result, tokens: int) -> Result:
    hist = [0] * BUCKETS
    for summary in summaries:
        for index, count in enumerate(summary["hist"]):
            if count:
                hist[index] += count
    deliveries = sum(summary["tokens"] for summary in summaries)
    violations = [v for summary in summaries for v in summary["violations"]]
    violation_count = sum(summary["violation_count"] for summary in summaries)
    finished = sum(summary["finished"] for summary in summaries)
    events = sum(summary["events"] for summary in summaries)
    expected_events = subscribers * int(run.get("last_seq") or 0)
    if deliveries != subscribers * tokens:
        violation_count += 1
        violations.append(f"{deliveries} token deliveries, expected {subscribers * tokens}")
    if events != expected_events:
        violation_count += 1
        violations.append(f"{events} events delivered, expected {expected_events}")
    if run.get("status") != "completed":
        violation_count += 1
        violations.append(f"run status {run.get('status')!r}: {run.get('error')}")
    first_ts = min((s["first_token_ts"] for s in summaries if s["first_token_ts"]), default=None)
    last_ts = max((s["last_token_ts"] for s in summaries if s["last_token_ts"]), default=None)
    last_rx = max((s["last_rx"] for s in summaries), default=0.0)
    run_s = (last_ts - first_ts) if first_ts and last_ts else None
    window = (last_rx - first_ts) if first_ts else None
    return {
        "token_deliveries": deliveries,
        "events_delivered": events,
        "subscribers_finished": finished,
        "latency_p50_ms": percentile_ms(hist, deliveries, 0.50),
        "latency_p99_ms": percentile_ms(hist, deliveries, 0.99),
        "latency_max_ms": max((s["max_us"] for s in summaries), default=0) / 1000,
        "first_token_ts": first_ts,
        "run_duration_s": run_s,
        "emit_rate_tokens_per_s": (tokens - 1) / run_s if run_s else None,
        "delivery_window_s": window,
        "deliveries_per_s": deliveries / window if window else None,
        "reads": sum(summary["reads"] for summary in summaries),
        "gaps": sum(summary["gaps"] for summary in summaries),
        "run_status": run.get("status"),
        "last_seq": run.get("last_seq"),
        "violation_count": violation_count,
        "violations": violations[:MAX_VIOLATIONS_KEPT],
    }


def verdict(result: Result) -> str | None:
    if result["subscribers"] < TARGET_SUBSCRIBERS:
        return None
    p99 = result["latency_p99_ms"]
    return "PASS" if p99 is not None and p99 < TARGET_P99_MS else "MISS"


def fmt(value: float | None, spec: str = ".1f") -> str:
    return "-" if value is None else format(value, spec)


COLUMNS = (
    # header, key, format
    ("subs", "subscribers", "d"),
    ("tokens", "tokens", "d"),
    ("p50 ms", "latency_p50_ms", ".2f"),
    ("p99 ms", "latency_p99_ms", ".2f"),
    ("max ms", "latency_max_ms", ".1f"),
    ("deliveries/s", "deliveries_per_s", ",.0f"),
    ("emit tok/s", "emit_rate_tokens_per_s", ".0f"),
    ("run s", "run_duration_s", ".1f"),
    ("RSS idle MB", "server_rss_idle_mb", ".1f"),
    ("RSS peak MB", "server_rss_peak_mb", ".1f"),
    ("server CPU s", "server_cpu_s", ".1f"),
    ("clients CPU s", "clients_cpu_s", ".1f"),
    ("others CPU s", "others_cpu_s", ".1f"),
    ("server µs/delivery", "server_cpu_us_per_delivery", ".1f"),
)


def print_report(results: list[Result], args: argparse.Namespace) -> None:
    mode = "burst" if args.burst else ("full speed" if args.rate <= 0 else f"{args.rate:g} tok/s")
    pinned = ", server pinned to 1 CPU" if args.pin else ""
    print(f"model emits at {mode}; {args.clients} {args.client} client process(es){pinned}")
    rows = [[header for header, _, _ in COLUMNS]]
    rows += [[fmt(r[key], spec) for _, key, spec in COLUMNS] for r in results]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    for row in rows:
        print("  ".join(cell.rjust(width) for cell, width in zip(row, widths, strict=True)))
    for r in results:
        report_notes(r)


def report_notes(r: Result) -> None:
    n = r["subscribers"]
    if r["gaps"]:
        print(f"  {n} subscribers: {r['gaps']} gap events")
    if not r["all_connected_before_first_token"]:
        print(
            f"  WARNING {n} subscribers: not all connected before the first token (raise "
            "--connect-wait); the late ones' first latencies include their connect"
        )
    if r["violation_count"]:
        print(f"  !!! {n} subscribers: {r['violation_count']} VIOLATIONS:")
        for violation in r["violations"]:
            print(f"  !!!   {violation}")
        print("  the server's log ends with:")
        for line in r.get("server_log_tail", []):
            print(f"  |  {line}")
    if "profile" in r:
        print(f"  profile of the server ({n} subscribers): {r['profile']}")
    if (mark := verdict(r)) is not None:
        print(
            f"target: {TARGET_SUBSCRIBERS} subscribers, p99 < {TARGET_P99_MS:g} ms: {mark} "
            f"(p99 {fmt(r['latency_p99_ms'], '.2f')} ms)"
        )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--subscribers",
        default="1,100,1000",
        help="comma-separated subscriber counts, one server each (default: 1,100,1000)",
    )
    parser.add_argument("--tokens", type=int, default=10_000, help="token events per run")
    parser.add_argument(
        "--rate",
        type=float,
        default=100.0,
        help="tokens per second the model emits; 0 = as fast as possible (default: 100)",
    )
    parser.add_argument(
        "--tick",
        type=float,
        default=0.01,
        help="with --rate, emit rate*tick tokens every tick seconds (default: 0.01)",
    )
    parser.add_argument(
        "--burst", action="store_true", help="emit all tokens in one synchronous burst"
    )
    parser.add_argument(
        "--clients", type=int, default=2, help="client processes for the subscribers (default 2)"
    )
    parser.add_argument(
        "--connect-wait",
        type=float,
        default=0.0,
        help="seconds the run waits before its first token (default: 3 + subscribers/200)",
    )
    parser.add_argument(
        "--timeout", type=float, default=600.0, help="give up on a run after this many seconds"
    )
    parser.add_argument(
        "--profile-dir", type=Path, help="record a py-spy profile (raw stacks) of the server here"
    )
    parser.add_argument(
        "--client",
        choices=("httpx2", "raw"),
        default="httpx2",
        help="subscriber implementation: httpx2 (default) or a minimal asyncio protocol that "
        "costs far less client CPU per event",
    )
    parser.add_argument(
        "--pin",
        action="store_true",
        help="pin the server to CPU 0 and the client processes to the other CPUs",
    )
    parser.add_argument(
        "--max-deliveries",
        type=int,
        default=2_000_000,
        help="cap tokens per run at this many deliveries / subscribers, so 1,000 subscribers "
        "finish within minutes (default 2,000,000; 0 = no cap)",
    )
    parser.add_argument(
        "--server-module",
        default="culm",
        help="run the server as `python -m MODULE serve --port N` (default: culm); a wrapper "
        "module can patch or instrument the server for experiments",
    )
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    args = parser.parse_args(argv)
    args.subscriber_counts = [int(part) for part in args.subscribers.split(",") if part.strip()]
    args.server_cpus = args.client_cpus = None
    if args.pin:
        cpus = sorted(os.sched_getaffinity(0))
        if len(cpus) < 2:
            parser.error("--pin needs at least 2 CPUs")
        args.server_cpus, args.client_cpus = cpus[:1], cpus[1:]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.profile_dir:
        args.profile_dir.mkdir(parents=True, exist_ok=True)
    results = []
    for subscribers in args.subscriber_counts:
        if not args.json:
            print(f"running {subscribers} subscriber(s) …", file=sys.stderr, flush=True)
        results.append(measure(subscribers, args))
    machine = {
        "python": platform.python_version(),
        "cpus": psutil.cpu_count(),
        "platform": platform.platform(),
        "load_average": os.getloadavg(),
    }
    if args.json:
        settings = {
            key: value
            for key, value in vars(args).items()
            if key not in ("json", "profile_dir", "subscribers")
        }
        report = {
            "culm": culm.__version__,
            "machine": machine,
            "settings": settings,
            "results": results,
            "target": {
                "subscribers": TARGET_SUBSCRIBERS,
                "p99_ms": TARGET_P99_MS,
                "verdicts": {str(r["subscribers"]): verdict(r) for r in results},
            },
        }
        print(json.dumps(report, indent=2))
    else:
        print(f"culm {culm.__version__}, Python {machine['python']}, {machine['cpus']} CPUs")
        print_report(results, args)
    return 1 if any(result["violation_count"] for result in results) else 0


if __name__ == "__main__":
    sys.exit(main())
