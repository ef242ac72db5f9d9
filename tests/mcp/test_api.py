"""MCP servers over the HTTP API (``GET /v1/mcp/servers``, ``POST …/refresh``, ``mcp_servers`` in
session and headless-run bodies) and ``culm mcp list``/``refresh`` against a running server."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import httpx2
import pytest

import culm
from tests.api.conftest import Server, running_server
from tests.cli.conftest import Result, run_culm
from tests.mcp.conftest import DemoServer, mcp_children


@pytest.fixture
async def server(tmp_path: Path, demo_server: DemoServer) -> AsyncIterator[Server]:
    settings = culm.Settings(
        home=tmp_path / "server",
        mcp_servers={"demo": demo_server.config()},
        allow_session_mcp_commands=True,  # the sessions here bring stdio servers of their own
    )
    async with running_server(settings) as running:
        running.engine.scripts.register(
            "add",
            {
                "turns": [
                    [{"tool_call": {"name": "mcp__mine__add", "arguments": {"a": 4, "b": 5}}}],
                    [{"text": "done"}],
                ]
            },
        )
        yield running


@pytest.fixture
async def client(server: Server) -> AsyncIterator[httpx2.AsyncClient]:
    async with httpx2.AsyncClient(base_url=server.url, timeout=30) as client:
        yield client


async def culm_cli(tmp_path: Path, *args: str) -> Result:
    """The real ``culm`` in a subprocess (the event loop keeps serving meanwhile)."""
    return await run_culm(tmp_path / "cli", *args)


async def test_servers_are_listed_and_refreshed(
    client: httpx2.AsyncClient, server: Server, tmp_path: Path
) -> None:
    listed = (await client.get("/v1/mcp/servers")).json()["servers"]
    assert listed == [
        {
            "name": "demo",
            "session_id": None,
            "transport": "stdio",
            "status": "stopped",
            "tool_count": 0,
            "tools": [],
            "restarts": 0,
            "last_error": None,
        }
    ]
    shown = await culm_cli(tmp_path, "mcp", "list", "--server", server.url)
    assert shown.code == 0, shown.stderr
    assert shown.stdout.splitlines()[1].split() == ["demo", "stdio", "stopped", "0", "-"]
    refreshed = await client.post("/v1/mcp/servers/demo/refresh")
    assert refreshed.status_code == 200
    info = refreshed.json()
    assert (info["status"], info["tool_count"]) == ("ready", 7)
    assert "mcp__demo__add" in info["tools"]
    assert len(mcp_children()) == 1
    again = await culm_cli(tmp_path, "mcp", "list", "--json", "--server", server.url)
    assert [json.loads(line) for line in again.stdout.splitlines()] == [info]
    missing = await client.post("/v1/mcp/servers/nope/refresh")
    assert missing.status_code == 404
    assert missing.json()["error"] == {
        "code": "not_found",
        "message": "MCP server 'nope' not found",
    }


async def test_sessions_and_headless_runs_bring_their_own_servers(
    client: httpx2.AsyncClient, demo_server: DemoServer, tmp_path: Path, server: Server
) -> None:
    body = {
        "message": "add",
        "model": "scripted:add",
        "tools": ["mcp__mine__*"],
        "mcp_servers": {"mine": demo_server.config()},
    }
    response = await client.post("/v1/runs", json=body)
    assert response.status_code == 202, response.text
    run = response.json()
    done = (await client.get(f"/v1/runs/{run['run_id']}/wait", params={"timeout": 20})).json()
    assert (done["status"], done["last_tool_name"]) == ("completed", "mcp__mine__add")
    session_id = run["session_id"]
    session = (await client.get(f"/v1/sessions/{session_id}")).json()
    assert session["metadata"]["mcp_servers"]["mine"]["command"] == demo_server.config()["command"]
    servers = (await client.get("/v1/mcp/servers")).json()["servers"]
    assert [(s["name"], s["session_id"], s["status"]) for s in servers] == [
        ("demo", None, "stopped"),
        ("mine", session_id, "ready"),
    ]
    refreshed = await client.post("/v1/mcp/servers/mine/refresh", params={"session_id": session_id})
    assert refreshed.json()["status"] == "ready"
    shown = await culm_cli(
        tmp_path, "mcp", "refresh", "mine", "--session", session_id, "--server", server.url
    )
    assert shown.code == 0, shown.stderr
    assert shown.stdout.splitlines()[1].split()[:5] == [
        "mine",
        "(session",
        f"{session_id})",
        "stdio",
        "ready",
    ]

    bad = await client.post(
        "/v1/sessions", json={"tools": ["mcp__x__*"], "mcp_servers": {"x": {"command": 3}}}
    )
    assert bad.status_code == 422
    assert bad.json()["error"]["field"] == "mcp_servers"
    assert bad.json()["error"]["message"] == (
        "mcp_servers: MCP server 'x' in the session's mcp_servers: command: "
        "Input should be a valid string"
    )
    unknown = await client.post("/v1/sessions", json={"tools": ["mcp__x__*"]})
    assert unknown.status_code == 422
    assert "unknown MCP server 'x'" in unknown.json()["error"]["message"]
