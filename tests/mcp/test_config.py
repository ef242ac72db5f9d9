"""MCP server configuration: config.toml and per session, with errors that name the server and
the field; tool names; which names a session may enable."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

import culm
from culm.mcp.config import HttpServer, StdioServer, parse_servers
from culm.mcp.names import MAX_TOOL_NAME, split_name, tool_name
from culm.settings import load_settings
from tests.mcp.conftest import DemoServer, EngineFactory


def test_config_toml_servers_are_read(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CULM_HOME", str(tmp_path))
    (tmp_path / "config.toml").write_text(
        """
[mcp_servers.time]
command = "mcp-server-time"
args = ["--local-timezone", "UTC"]
env = { TZ = "UTC" }
timeout = 5

[mcp_servers.docs]
url = "https://mcp.example.com/mcp"
headers = { Authorization = "Bearer x" }
"""
    )
    servers = load_settings().mcp_servers
    assert servers["time"] == StdioServer(
        command="mcp-server-time", args=["--local-timezone", "UTC"], env={"TZ": "UTC"}, timeout=5
    )
    assert servers["docs"] == HttpServer(
        url="https://mcp.example.com/mcp", headers={"Authorization": "Bearer x"}
    )
    assert (servers["time"].transport, servers["docs"].transport) == ("stdio", "http")


def test_servers_can_come_from_the_environment_as_json(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("CULM_HOME", str(tmp_path))
    monkeypatch.setenv("CULM_MCP_SERVERS", '{"web": {"url": "http://127.0.0.1:9/mcp"}}')
    assert load_settings().mcp_servers == {"web": HttpServer(url="http://127.0.0.1:9/mcp")}


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"command": "x", "url": "http://h/mcp"}, "'time'.*either command .* or url"),
        ({"args": ["a"]}, "'time'.*set command .* or url"),
        ({"command": ""}, "'time'.*command: String should have at least 1 character"),
        ({"command": "x", "args": "-v"}, "'time'.*args: Input should be a valid"),
        ({"command": "x", "env": {"N": 1}}, r"'time'.*env\.N: Input should be a valid string"),
        ({"command": "x", "timeout": 0}, "'time'.*timeout: Input should be greater than 0"),
        ({"command": "x", "comand": "y"}, "'time'.*comand: unknown field .*command, args, env"),
        ({"url": "ftp://h"}, "'time'.*url: must be an http:// or https:// URL"),
        ({"url": "http://h", "headers": {"A": 1}}, r"'time'.*headers\.A: Input should be"),
        ("mcp-server-time", "'time'.*expected a table, got str"),
    ],
)
def test_a_mistake_names_the_server_and_the_field(raw: Any, message: str) -> None:
    with pytest.raises(culm.ConfigError, match=message):
        parse_servers({"time": raw}, "config.toml")


@pytest.mark.parametrize("name", ["a__b", "-x", "x_", "", "a b", "x" * 33])
def test_server_names_keep_tool_names_unambiguous(name: str) -> None:
    with pytest.raises(culm.ConfigError, match="MCP server name"):
        parse_servers({name: {"command": "x"}}, "config.toml")


def test_a_bad_table_in_config_toml_stops_the_settings(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("CULM_HOME", str(tmp_path))
    (tmp_path / "config.toml").write_text('[mcp_servers.time]\ncommand = "x"\nargs = 3\n')
    with pytest.raises(culm.ConfigError, match=r"MCP server 'time' in mcp_servers .*args"):
        load_settings()


def test_tool_names_are_safe_for_model_apis() -> None:
    assert tool_name("time", "get_current_time") == "mcp__time__get_current_time"
    assert tool_name("files", "read.file/v2") == "mcp__files__read_file_v2"
    long_a, long_b = tool_name("s", "a" * 80), tool_name("s", "a" * 81)
    assert len(long_a) == len(long_b) == MAX_TOOL_NAME
    assert long_a != long_b
    assert split_name("mcp__time__get_current_time") == ("time", "get_current_time")
    assert split_name("mcp__time__*") == ("time", "*")
    assert split_name("mcp__time__*").is_pattern  # type: ignore[union-attr]
    assert split_name("mcp__time") is None
    assert split_name("mcp____x") is None


async def test_sessions_name_configured_servers_only(
    make_engine: EngineFactory, demo_server: DemoServer
) -> None:
    async with make_engine(demo=demo_server.config()) as engine:
        session = await engine.create_session(tools=["read", "mcp__demo__*", "mcp__demo__add"])
        assert session.tools == (
            "read_file",
            "list_dir",
            "glob",
            "grep",
            "mcp__demo__*",
            "mcp__demo__add",
        )
        with pytest.raises(culm.UnknownToolError, match=r"unknown MCP server 'nope'.*: demo\)"):
            await engine.create_session(tools=["mcp__nope__*"])
        with pytest.raises(culm.UnknownToolError, match="mcp__<server>__<tool>"):
            await engine.create_session(tools=["mcp__demo"])
        # Creating a session starts no server.
        assert [info.status for info in engine.mcp.servers()] == ["stopped"]


async def test_a_session_brings_its_own_servers(
    make_engine: EngineFactory, demo_server: DemoServer
) -> None:
    async with make_engine() as engine:
        with pytest.raises(culm.UnknownToolError, match="none is configured"):
            await engine.create_session(tools=["mcp__mine__*"])
        session = await engine.create_session(
            tools=["mcp__mine__*"], mcp_servers={"mine": demo_server.config(timeout=3)}
        )
        stored = await engine.get_session(session.session_id)
        assert stored.metadata["mcp_servers"]["mine"]["timeout"] == 3
        assert stored.metadata["mcp_servers"]["mine"]["args"] == demo_server.config()["args"]
        with pytest.raises(culm.ConfigError, match=r"MCP server 'mine' in the session's .*url"):
            await engine.create_session(mcp_servers={"mine": {"url": "nope"}})
        with pytest.raises(culm.ConfigError, match="the session's mcp_servers: expected a table"):
            await engine.create_session(metadata={"mcp_servers": ["x"]})


def test_a_bare_command_not_on_path_is_found_beside_culms_python(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # neither the system's nor culm's virtualenv
    beside = str(Path(sys.executable).parent / "mcp-server-time")
    assert StdioServer(command="mcp-server-time").executable == beside
    on_path = tmp_path / "mcp-server-time"
    on_path.write_text("#!/bin/sh\n")
    on_path.chmod(0o755)
    assert StdioServer(command="mcp-server-time").executable == "mcp-server-time"
    for command in ("no-such-server", "/opt/servers/time", "./time"):
        assert StdioServer(command=command).executable == command
