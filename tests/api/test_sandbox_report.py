"""Which bash sandbox is in force is said in ``/health`` and in ``culm serve``'s start-up line."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import httpx2
import pytest

from tests.api.conftest import ServerFactory, free_port
from tests.cli.conftest import clean_env, culm_command
from tests.processes import require_bwrap


@pytest.mark.parametrize("mode", ["none", "bwrap"])
async def test_health_says_which_sandbox(make_server: ServerFactory, mode: str) -> None:
    if mode == "bwrap":
        require_bwrap()
    async with (
        make_server(bash_sandbox=mode) as server,
        httpx2.AsyncClient(base_url=server.url) as http,
    ):
        health = (await http.get("/health")).json()
    assert health["status"] == "ok"
    assert health["bash_sandbox"] == mode


@pytest.mark.parametrize(
    ("mode", "said"),
    [("none", "bash sandbox: none, unconfined: CULM_BASH_SANDBOX=none)"), ("bwrap", "bwrap)")],
)
async def test_the_start_up_line_says_which_sandbox(tmp_path: Path, mode: str, said: str) -> None:
    if mode == "bwrap":
        require_bwrap()
    env = clean_env(tmp_path, {"CULM_BASH_SANDBOX": mode, "CULM_PORT": str(free_port())})
    process = await asyncio.create_subprocess_exec(
        *culm_command("serve"),
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        assert process.stderr is not None
        async with asyncio.timeout(30):
            line = (await process.stderr.readline()).decode()
    finally:
        process.terminate()
        await process.communicate()
    assert line.startswith("culm serving on http://127.0.0.1:")
    assert line.rstrip().endswith(said)
