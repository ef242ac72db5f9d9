"""A stdio MCP server gets the minimal environment (the helper it shares with ``bash``) plus its
configured ``env``, never culm's secrets; and whatever it starts ends when it is stopped."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import pytest

from tests.mcp.conftest import DEMO, DemoServer, EngineFactory
from tests.processes import escapees_started, new_marker, nothing_left, until


async def test_a_stdio_server_sees_no_secret_and_leaves_no_helper(
    make_engine: EngineFactory,
    demo_server: DemoServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "CULM_API_KEY"):
        monkeypatch.setenv(name, f"{name.lower()}-do-not-leak")
    monkeypatch.setenv("CULM_DATABASE_URL", f"sqlite+aiosqlite:///{tmp_path}/do-not-leak.db")
    marker = new_marker()
    seen = tmp_path / "server-env.txt"
    launcher = (
        f"env > {shlex.quote(str(seen))}; "
        f"setsid bash -c 'exec -a {marker}-setsid sleep 300' </dev/null >/dev/null 2>&1 & "
        f"( (exec -a {marker}-daemon sleep 300 </dev/null >/dev/null 2>&1 &) & ); "
        f"exec {shlex.quote(sys.executable)} {shlex.quote(str(DEMO))}"
    )
    config = {"command": "bash", "args": ["-c", launcher], "env": {"GIVEN": "configured"}}
    async with make_engine(demo=config) as engine:
        tools = await engine.mcp.resolve("mcp__demo__*", await engine.create_session())
        assert tools
        await until(lambda: escapees_started(marker), what="the server's helpers started")
        env = dict(line.split("=", 1) for line in seen.read_text().splitlines() if "=" in line)
        assert "do-not-leak" not in seen.read_text()
        assert env["GIVEN"] == "configured"
        assert "PATH" in env
    await until(lambda: nothing_left(marker), timeout=5, what="the helpers gone")
