"""A cancelled run's bash command and everything it started are gone (checked by pid), whether
the cancel came through the engine, the HTTP API or ``culm cancel``; and kill -9 of a
``culm serve`` process leaves no bash command or MCP server behind."""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import httpx2
import pytest

import culm
from tests.api.conftest import Server, free_port, running_server
from tests.cli.conftest import clean_env, culm_command, restore_sigint, run_culm
from tests.processes import (
    escapees_started,
    escaping_command,
    lines,
    marked,
    mcp_server,
    names,
    new_marker,
    nothing_left,
    require_bwrap,
    until,
    until_gone,
)


@pytest.fixture(params=["none", "bwrap"])
async def server(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Server]:
    if request.param == "bwrap":
        require_bwrap()
    settings = culm.Settings(home=tmp_path / "home", bash_sandbox=request.param)
    async with running_server(settings) as running:
        yield running


async def _engine_cancel(server: Server, run_id: str) -> None:
    await server.engine.cancel(run_id, wait=True, timeout=20)


async def _http_cancel(server: Server, run_id: str) -> None:
    async with httpx2.AsyncClient(base_url=server.url, timeout=30) as http:
        response = await http.post(f"/v1/runs/{run_id}/cancel", params={"wait": "true"})
        assert response.status_code == 200, response.text
        assert response.json()["status"] == "cancelled"


async def _cli_cancel(server: Server, run_id: str) -> None:
    home = Path(server.settings.home).parent / "cli"
    done = await run_culm(home, "cancel", run_id, "--wait", "--server", server.url)
    assert done.code == 0, done.stderr


Cancel = Callable[[Server, str], Awaitable[None]]


@pytest.mark.parametrize("cancel", [_engine_cancel, _http_cancel, _cli_cancel])
async def test_cancel_ends_the_command_and_its_escaped_descendants(
    server: Server, cancel: Cancel
) -> None:
    marker = new_marker()
    call = {"tool_call": {"name": "bash", "arguments": {"command": escaping_command(marker)}}}
    server.engine.scripts.register("shell", {"turns": [[call], [{"text": "done"}]]})
    run = await server.engine.run("go", model="scripted:shell", tools=["bash"])
    await until(lambda: escapees_started(marker), timeout=20, what="the escapees started")
    assert len(marked(marker)) >= 3, "the command (bash, its reaper) and the escapees run"

    await cancel(server, run.run_id)

    assert (await server.engine.get_run(run.run_id)).status is culm.RunStatus.CANCELLED
    await until(lambda: nothing_left(marker), timeout=5, what="every process gone")


@pytest.mark.parametrize("sandbox", ["none", "bwrap"])
async def test_kill_9_of_culm_serve_leaves_no_bash_or_mcp_server(
    tmp_path: Path, sandbox: str
) -> None:
    if sandbox == "bwrap":
        require_bwrap()
    marker = new_marker()
    home = tmp_path / "serve"
    (home / "scripts").mkdir(parents=True)
    events = mcp_server(home, marker)
    bash_call = {"name": "bash", "arguments": {"command": escaping_command(marker)}}
    mcp_call = {"name": "mcp__demo__sleep", "arguments": {"seconds": 300}}
    for name, call in (("shell", bash_call), ("hang", mcp_call)):
        turns = [[{"tool_call": call}], [{"text": "done"}]]
        (home / "scripts" / f"{name}.json").write_text(json.dumps({"turns": turns}))
    port = free_port()
    env = clean_env(home, {"CULM_PORT": str(port), "CULM_BASH_SANDBOX": sandbox})
    process = await asyncio.create_subprocess_exec(
        *culm_command("serve"),
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        preexec_fn=restore_sigint,
    )
    try:
        async with httpx2.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
            await until(lambda: _listening(port), timeout=30, what="culm serve listening")
            for model, tools in (
                ("scripted:shell", ["bash"]),
                ("scripted:hang", ["mcp__demo__sleep"]),
            ):
                body = {"message": "go", "model": model, "tools": tools}
                created = await http.post("/v1/runs", json=body)
                assert created.status_code == 202, created.text
            await until(lambda: escapees_started(marker), timeout=30, what="bash started")
            await until(lambda: "sleep started" in lines(events), timeout=30, what="MCP call")
        assert {"helper"} <= names(marker), "the MCP server's helper runs"

        process.kill()
        await process.wait()

        await until_gone(marker, timeout=10)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


def _listening(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0
