"""Finding the processes a test made culm start, by a marker in their command line.

A bash command built by :func:`escaping_command` starts a ``setsid`` child and a double-forked
daemon, both named after the marker (``exec -a``), then waits: a test checks on real pids (on
the host, also when the command ran in its own PID namespace) that each of them is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shlex
import shutil
import sys
import time
import uuid
from pathlib import Path

import psutil
import pytest

CI = os.environ.get("CI", "").lower() in {"true", "1"}


def new_marker() -> str:
    return f"culm-test-{uuid.uuid4().hex[:12]}"


def escaping_command(marker: str, *, wait: str = "sleep 300") -> str:
    """Starts ``<marker>-setsid`` (a new session) and ``<marker>-daemon`` (double-forked, its
    parent gone), prints ``ready``, then runs ``wait``."""
    return (
        f"setsid bash -c 'exec -a {marker}-setsid sleep 300' </dev/null >/dev/null 2>&1 & "
        f"( (exec -a {marker}-daemon sleep 300 </dev/null >/dev/null 2>&1 &) & ); "
        f"sleep 0.2; echo ready; {wait}"
    )


def mcp_server(home: Path, marker: str) -> Path:
    """The tests' demo MCP server under a name of its own (so its process is this test's),
    configured in ``home/config.toml`` as ``demo``, started by a shell that first starts a
    helper (``<marker>-helper``) in a session of its own, as servers run through launchers do.
    Returns the file the server notes its calls in (``sleep started``)."""
    from tests.mcp.servers import demo

    copy = home / f"{marker}.py"
    shutil.copy(demo.__file__, copy)
    events = home / "demo-events.txt"
    launcher = (
        f"setsid bash -c 'exec -a {marker}-helper sleep 300' </dev/null >/dev/null 2>&1 & "
        f"exec {shlex.quote(sys.executable)} {shlex.quote(str(copy))}"
    )
    (home / "config.toml").write_text(
        '[mcp_servers.demo]\ncommand = "bash"\n'
        f'args = ["-c", {json.dumps(launcher)}]\n'
        f"env = {{ DEMO_EVENTS_FILE = {json.dumps(str(events))} }}\n"
    )
    return events


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def marked(marker: str) -> list[psutil.Process]:
    """Live (not zombie) processes whose command line mentions ``marker``."""
    found = []
    for process in psutil.process_iter(["cmdline", "status"]):
        try:
            cmdline = process.info["cmdline"] or []
            if process.info["status"] != psutil.STATUS_ZOMBIE and any(
                marker in part for part in cmdline
            ):
                found.append(process)
        except psutil.NoSuchProcess:
            continue
    return found


def names(marker: str) -> set[str]:
    """Which of the escapees are alive: ``{"setsid", "daemon"}`` while both are."""
    alive = set()
    for process in marked(marker):
        # The command line read by marked(), not read again: a subshell of the command may have
        # exited meanwhile (its second read raised NoSuchProcess).
        with_suffix = [part for part in process.info["cmdline"] if part.startswith(f"{marker}-")]
        alive.update(part.removeprefix(f"{marker}-") for part in with_suffix)
    return alive


async def until(condition: object, timeout: float = 10.0, what: str = "condition") -> None:
    assert callable(condition)
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what} not met within {timeout} s"
        await asyncio.sleep(0.02)


def wait_sync(condition: object, timeout: float = 30.0, what: str = "condition") -> None:
    """Wait until ``condition()`` holds. The timeout bounds a promise of "eventually" (every
    process gone), not a speed: generous, so a loaded machine does not fail it."""
    assert callable(condition)
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what} not met within {timeout} s"
        time.sleep(0.02)


def escapees_started(marker: str) -> bool:
    return names(marker) >= {"setsid", "daemon"}


def nothing_left(marker: str) -> bool:
    return not marked(marker)


async def until_gone(marker: str, timeout: float) -> None:
    """Wait until no process of ``marker`` is left; failing, say which are (pid, parent pid,
    state, command line): a process whose parent is 1 escaped its reaper."""
    try:
        await until(lambda: nothing_left(marker), timeout=timeout, what="every process gone")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; left: {left_of(marker)}") from None


def wait_gone_sync(marker: str, timeout: float = 30.0, what: str = "every process gone") -> None:
    """:func:`until_gone` for tests that are not async."""
    try:
        wait_sync(lambda: nothing_left(marker), timeout=timeout, what=what)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; left: {left_of(marker)}") from None


def left_of(marker: str) -> list[tuple[int, int, str, list[str]]]:
    """The processes of ``marker`` still alive: pid, parent pid, state, command line."""
    left = []
    for process in marked(marker):
        with contextlib.suppress(psutil.Error):
            left.append((process.pid, process.ppid(), process.status(), process.cmdline()))
    return left


def require_bwrap() -> None:
    """Skip without bwrap; under CI=true fail instead (.ci/run installs it)."""
    if shutil.which("bwrap") is None:
        if CI:
            pytest.fail("bwrap is not installed; CI=true requires it (see .ci/run)")
        pytest.skip("bwrap is not installed")
