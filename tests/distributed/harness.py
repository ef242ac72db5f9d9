"""Real culm processes on one PostgreSQL database: 1 API (`culm serve --no-worker`) + workers.

Each worker runs in a PID and UTS namespace of its own when the machine allows it
(``unshare --pid --uts --fork --mount-proc``, detected once): it sees its own pids and the
host name the test gives it, as a container on the host network would. Inside, a shell first
burns ``pid_offset`` pids so that two workers can have different pids in their namespaces.
The test signals the worker's Python process by its pid on the host (kill -9, SIGSTOP).

Every process shares one ``CULM_HOME`` (the scripted models live in ``home/scripts``) and
writes its output to a log file of its own, which a test can read (``Culm.log()``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2
import psutil
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from tests.api.conftest import free_port

_DROPPED_PREFIXES = ("CULM_", "OPENAI_", "ANTHROPIC_")
START_TIMEOUT = 60.0


@functools.cache
def namespaces_available() -> bool:
    """Whether ``unshare`` can give a process its own PID and UTS namespace here (root, or a
    kernel allowing unprivileged user namespaces is not enough: the host name needs root)."""
    try:
        done = subprocess.run(
            ["unshare", "--pid", "--uts", "--fork", "--mount-proc", "--kill-child",
             "sh", "-c", "hostname culm-probe && test \"$(hostname)\" = culm-probe && echo $$"],
            capture_output=True, text=True, timeout=10,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return False
    return done.returncode == 0 and done.stdout.strip() == "1"


def clean_env(home: Path, extra: Mapping[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(_DROPPED_PREFIXES)}
    return {**env, "CULM_HOME": str(home), "PYTHONUNBUFFERED": "1", **extra}


def write_scripts(home: Path, **scripts: Mapping[str, Any]) -> None:
    """Scripted models ``scripted:<name>`` (read by every process at each run's start)."""
    (home / "scripts").mkdir(parents=True, exist_ok=True)
    for name, script in scripts.items():
        (home / "scripts" / f"{name}.json").write_text(json.dumps(script))


def streaming(seconds: float, *, every: float = 0.1) -> dict[str, Any]:
    """A script that streams a token every ``every`` s for about ``seconds`` s, then answers."""
    steps = [{"delay": every}, {"text": "tok "}] * max(1, round(seconds / every))
    return {"turns": [[*steps, {"text": "done"}]]}


QUICK = {"turns": [[{"text": "quick answer"}]]}


@dataclass
class Culm:
    """One culm process: ``kind`` is ``api`` (serve --no-worker), ``worker`` or ``serve``."""

    kind: str
    name: str
    process: asyncio.subprocess.Process
    log_path: Path
    url: str | None = None
    hostname: str | None = None
    worker_id: str | None = None
    _host_pid: int | None = None

    @property
    def host_pid(self) -> int:
        """The pid of culm's Python process as the host sees it (not the ``unshare`` or the
        shell around it)."""
        assert self._host_pid is not None
        return self._host_pid

    @property
    def alive(self) -> bool:
        return self.process.returncode is None

    def signal(self, signum: int) -> None:
        os.kill(self.host_pid, signum)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    async def wait(self, timeout: float = 30.0) -> int:
        return await asyncio.wait_for(self.process.wait(), timeout)

    async def kill(self) -> None:
        """kill -9 of culm's Python process (in a namespace, its whole namespace dies too)."""
        with contextlib.suppress(ProcessLookupError):
            self.signal(signal.SIGKILL)
        await self.wait()

    async def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, then the exit status (0 for a clean stop)."""
        with contextlib.suppress(ProcessLookupError):
            self.signal(signal.SIGCONT)
            self.signal(signal.SIGTERM)
        return await self.wait(timeout)


async def _find_python(pid: int) -> int:
    """``pid`` itself when it runs culm, else the descendant that does (in a namespace, the
    shell's short-lived children come and go meanwhile)."""
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        try:
            root = psutil.Process(pid)
            family = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess as exc:
            raise AssertionError(f"process {pid} ended before culm started") from exc
        for process in family:
            with contextlib.suppress(psutil.NoSuchProcess, psutil.ZombieProcess):
                cmdline = process.cmdline()
                if len(cmdline) > 2 and cmdline[1:3] == ["-m", "culm"]:
                    return process.pid
        assert time.monotonic() < deadline, f"no culm process under pid {pid}"
        await asyncio.sleep(0.01)


def ns_pid(host_pid: int) -> int:
    """The pid a process has in its own (innermost) PID namespace."""
    for line in Path(f"/proc/{host_pid}/status").read_text().splitlines():
        if line.startswith("NSpid:"):
            return int(line.split()[-1])
    return host_pid


def pid_namespace_inode(host_pid: int) -> str:
    """``4026532180`` from ``pid:[4026532180]``."""
    return os.readlink(f"/proc/{host_pid}/ns/pid").removeprefix("pid:[").removesuffix("]")


@dataclass
class Topology:
    """The processes of one test, on ``database_url`` and ``home``; ``env`` goes to all."""

    database_url: str
    home: Path
    env: dict[str, str] = field(default_factory=dict)
    processes: list[Culm] = field(default_factory=list)
    api: Culm | None = None
    _engine: AsyncEngine | None = None
    _count: int = 0

    @property
    def db(self) -> AsyncEngine:
        """The test's own connection pool to the database (for checks and polling)."""
        if self._engine is None:
            self._engine = create_async_engine(self.database_url, pool_size=2, max_overflow=4)
        return self._engine

    @property
    def api_url(self) -> str:
        assert self.api is not None and self.api.url is not None
        return self.api.url

    def client(self, timeout: float = 30.0) -> httpx2.AsyncClient:
        return httpx2.AsyncClient(base_url=self.api_url, timeout=timeout)

    async def _spawn(
        self, kind: str, argv: list[str], extra: Mapping[str, str], *, namespace: bool,
        hostname: str | None, pid_offset: int,
    ) -> Culm:  # fmt: skip
        self._count += 1
        name = f"{kind}{self._count}"
        log_path = self.home / "logs" / f"{name}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "culm", *argv]
        if namespace:
            burn = f"i=0; while [ $i -lt {pid_offset} ]; do /bin/true; i=$((i+1)); done; "
            script = f'hostname "$0" || exit 1; {burn}"$@" & child=$!; wait $child; exit $?'
            command = ["unshare", "--pid", "--uts", "--fork", "--mount-proc", "--kill-child",
                       "sh", "-c", script, hostname or f"culm-{name}", *command]  # fmt: skip
        with log_path.open("ab") as log:
            process = await asyncio.create_subprocess_exec(
                *command,
                env=clean_env(
                    self.home, {"CULM_DATABASE_URL": self.database_url, **self.env, **extra}
                ),
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                cwd=self.home, start_new_session=True,
            )  # fmt: skip
        culm = Culm(kind, name, process, log_path, hostname=hostname if namespace else None)
        culm._host_pid = await _find_python(process.pid)
        self.processes.append(culm)
        return culm

    async def start_api(self, **extra: str) -> Culm:
        port = free_port()
        self.api = await self._spawn(
            "api", ["serve", "--no-worker", "--port", str(port)], extra,
            namespace=False, hostname=None, pid_offset=0,
        )  # fmt: skip
        self.api.url = f"http://127.0.0.1:{port}"
        await self._until_healthy(self.api)
        return self.api

    async def start_serve(self, *, hostname: str | None = None, pid_offset: int = 0,
                          **extra: str) -> Culm:  # fmt: skip
        """An embedded ``culm serve`` (API + worker + ticker), in a namespace if possible."""
        port = free_port()
        serve = await self._spawn(
            "serve", ["serve", "--port", str(port)], extra,
            namespace=namespaces_available(), hostname=hostname, pid_offset=pid_offset,
        )  # fmt: skip
        serve.url = f"http://127.0.0.1:{port}"
        await self._until_healthy(serve)
        serve.worker_id = await self._registered(serve)
        return serve

    async def start_worker(self, *, hostname: str | None = None, pid_offset: int = 0,
                           **extra: str) -> Culm:  # fmt: skip
        """A ``culm worker``; returns once its row is in ``workers`` (it is claiming)."""
        worker = await self._spawn(
            "worker", ["worker"], extra,
            namespace=namespaces_available(), hostname=hostname, pid_offset=pid_offset,
        )  # fmt: skip
        worker.worker_id = await self._registered(worker)
        return worker

    async def start_workers(self, count: int, **extra: str) -> list[Culm]:
        return list(await asyncio.gather(*(self.start_worker(**extra) for _ in range(count))))

    async def _until_healthy(self, culm: Culm) -> None:
        async with httpx2.AsyncClient(base_url=culm.url or "", timeout=5) as client:
            deadline = time.monotonic() + START_TIMEOUT
            while True:
                assert culm.alive, f"{culm.name} exited: {culm.log()}"
                with contextlib.suppress(httpx2.TransportError):
                    if (await client.get("/health")).status_code == 200:
                        return
                assert time.monotonic() < deadline, f"{culm.name} not healthy: {culm.log()}"
                await asyncio.sleep(0.05)

    async def _registered(self, culm: Culm) -> str:
        """The worker id of ``culm``: its (not stopped) ``workers`` row, found by its pid and
        PID namespace as the process itself sees them."""
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            assert culm.alive, f"{culm.name} exited: {culm.log()}"
            pid, inode = ns_pid(culm.host_pid), pid_namespace_inode(culm.host_pid)
            ids = []
            # (Before the first process has migrated the database, it has no workers table.)
            with contextlib.suppress(sa.exc.ProgrammingError):
                async with self.db.connect() as conn:
                    rows = await conn.execute(
                        sa.text(
                            "SELECT worker_id, pid_namespace FROM workers"
                            " WHERE pid = :pid AND stopped_at IS NULL"
                        ),
                        {"pid": pid},
                    )
                    ids = [row.worker_id for row in rows if str(row.pid_namespace) == inode]
            if ids:
                assert len(ids) == 1, ids
                return str(ids[0])
            assert time.monotonic() < deadline, f"{culm.name} never registered: {culm.log()}"
            await asyncio.sleep(0.05)

    async def aclose(self) -> None:
        for culm in self.processes:
            if culm.alive:
                with contextlib.suppress(ProcessLookupError, AssertionError):
                    culm.signal(signal.SIGKILL)
                with contextlib.suppress(ProcessLookupError):
                    culm.process.kill()  # the unshare around it, if any
        for culm in self.processes:
            with contextlib.suppress(TimeoutError):
                await culm.wait(30)
        if self._engine is not None:
            await self._engine.dispose()

    def assert_clean_logs(self, *, tracebacks: bool = True) -> None:
        """No process logged a deadlock or an exception the HTTP server had to catch, nor (with
        ``tracebacks``; a database outage makes the workers log the errors they retry with
        theirs) any traceback."""
        signs = ["deadlock detected", "Exception in ASGI application"]
        signs += ["Traceback"] if tracebacks else []
        for culm in self.processes:
            for sign in signs:
                assert sign not in culm.log(), f"{culm.name} logged {sign!r}:\n{culm.log()[-6000:]}"

    def logs(self) -> str:
        return "\n".join(f"--- {culm.name}\n{culm.log()[-4000:]}" for culm in self.processes)


@contextlib.asynccontextmanager
async def topology(database_url: str, home: Path, **env: str) -> AsyncIterator[Topology]:
    home.mkdir(parents=True, exist_ok=True)
    started = Topology(database_url, home, dict(env))
    try:
        yield started
    finally:
        await started.aclose()


# --- the database, as the test reads it ---------------------------------------------------


async def rows(top: Topology, query: str, **params: Any) -> list[sa.Row[Any]]:
    async with top.db.connect() as conn:
        return list(await conn.execute(sa.text(query), params))


async def poll(
    check: Callable[[], Awaitable[bool]], *, timeout: float, what: str, every: float = 0.05
) -> float:
    """Wait until ``await check()`` holds; the seconds it took."""
    started = time.monotonic()
    while not await check():
        assert time.monotonic() - started < timeout, f"{what} not within {timeout} s"
        await asyncio.sleep(every)
    return time.monotonic() - started


async def running_on(top: Topology, worker_id: str, run_ids: list[str]) -> bool:
    found = await rows(
        top,
        "SELECT count(*) AS n FROM runs WHERE run_id = ANY(:ids) AND status = 'running'"
        " AND owner = :owner",
        ids=run_ids,
        owner=worker_id,
    )
    return int(found[0].n) == len(run_ids)


async def statuses(top: Topology, run_ids: list[str]) -> dict[str, sa.Row[Any]]:
    found = await rows(
        top,
        "SELECT run_id, status, owner, epoch, attempt, error FROM runs WHERE run_id = ANY(:ids)",
        ids=run_ids,
    )
    return {row.run_id: row for row in found}


# --- the API, as a client uses it ------------------------------------------------------


async def start_runs(
    client: httpx2.AsyncClient, count: int, model: str, *, parallel: int = 16
) -> list[str]:
    """``count`` headless runs (a session each), in creation order."""
    limit = asyncio.Semaphore(parallel)

    async def one(i: int) -> str:
        async with limit:
            response = await client.post("/v1/runs", json={"message": f"go {i}", "model": model})
            assert response.status_code == 202, response.text
            return str(response.json()["run_id"])

    return list(await asyncio.gather(*(one(i) for i in range(count))))
