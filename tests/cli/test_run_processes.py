"""``culm run`` and the processes it starts: SIGTERM is handled like Ctrl-C (the run cancelled,
exit 143), and no bash command, descendant of one or MCP server outlives culm — after a cancel,
a second Ctrl-C (exit at once) or kill -9."""

from __future__ import annotations

import json
import signal
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from culm import Engine, RunStatus, Settings
from tests.cli.conftest import clean_env, culm_command, restore_sigint
from tests.processes import (
    escapees_started,
    escaping_command,
    lines,
    mcp_server,
    new_marker,
    nothing_left,
    require_bwrap,
    wait_gone_sync,
    wait_sync,
)


def script(home: Path, name: str, call: dict[str, object]) -> None:
    scripts = home / "scripts"
    scripts.mkdir(exist_ok=True)
    turns = [[{"tool_call": call}], [{"text": "done"}]]
    (scripts / f"{name}.json").write_text(json.dumps({"turns": turns}))


@pytest.fixture(params=["none", "bwrap"])
def sandbox_env(request: pytest.FixtureRequest) -> dict[str, str]:
    if request.param == "bwrap":
        require_bwrap()
    return {"CULM_BASH_SANDBOX": request.param}


@pytest.fixture
def started() -> Iterator[list[subprocess.Popen[bytes]]]:
    processes: list[subprocess.Popen[bytes]] = []
    yield processes
    for process in processes:
        if process.poll() is None:
            process.kill()
        process.communicate()


def culm_run(
    home: Path,
    started: list[subprocess.Popen[bytes]],
    *args: str,
    env: Mapping[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        culm_command("run", "go", *args),
        env=clean_env(home, env),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        preexec_fn=restore_sigint,
    )
    started.append(process)
    return process


async def stored_run(home: Path, monkeypatch: pytest.MonkeyPatch) -> RunStatus:
    monkeypatch.setenv("CULM_HOME", str(home))
    async with Engine(Settings(home=home)) as engine:
        [run] = await engine.list_runs()
    return run.status


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
async def test_a_signal_cancels_the_run_and_ends_every_process(
    home: Path,
    started: list[subprocess.Popen[bytes]],
    sandbox_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    signum: signal.Signals,
    code: int,
) -> None:
    marker = new_marker()
    script(home, "shell", {"name": "bash", "arguments": {"command": escaping_command(marker)}})
    process = culm_run(home, started, "-m", "scripted:shell", "--tools", "bash", env=sandbox_env)
    wait_sync(lambda: escapees_started(marker), timeout=30, what="the escapees started")

    process.send_signal(signum)
    _, stderr = process.communicate(timeout=20)

    assert process.returncode == code, stderr
    assert nothing_left(marker)
    assert b"Traceback" not in stderr
    assert stderr.decode().strip().splitlines()[-1].startswith("cancelled · ")
    assert await stored_run(home, monkeypatch) is RunStatus.CANCELLED


@pytest.mark.parametrize("tool", ["bash", "mcp"])
def test_kill_9_of_culm_run_leaves_no_process(
    home: Path, started: list[subprocess.Popen[bytes]], sandbox_env: dict[str, str], tool: str
) -> None:
    marker = new_marker()
    if tool == "bash":
        call = {"name": "bash", "arguments": {"command": escaping_command(marker)}}
        ready = lambda: escapees_started(marker)  # noqa: E731
    else:
        events = mcp_server(home, marker)
        call = {"name": "mcp__demo__sleep", "arguments": {"seconds": 300}}
        ready = lambda: "sleep started" in lines(events)  # noqa: E731
    script(home, "hang", call)
    tools = "bash" if tool == "bash" else "mcp__demo__sleep"
    process = culm_run(home, started, "-m", "scripted:hang", "--tools", tools, env=sandbox_env)
    wait_sync(ready, timeout=30, what=f"the {tool} call started")

    process.kill()
    process.communicate(timeout=10)

    wait_gone_sync(marker, what="every process culm started gone")


def test_a_second_ctrl_c_during_a_hanging_mcp_call_leaves_no_server(
    home: Path, started: list[subprocess.Popen[bytes]]
) -> None:
    marker = new_marker()
    events = mcp_server(home, marker)
    script(home, "hang", {"name": "mcp__demo__sleep", "arguments": {"seconds": 300}})
    process = culm_run(home, started, "-m", "scripted:hang", "--tools", "mcp__demo__sleep")
    wait_sync(lambda: "sleep started" in lines(events), timeout=30, what="the call started")

    process.send_signal(signal.SIGINT)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=20)

    assert process.returncode == 130, stderr
    wait_gone_sync(marker, what="the MCP server gone")
