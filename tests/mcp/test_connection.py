"""One server's connection against real servers: start on first use, sharing, concurrent calls,
progress, error results, a crash and its restart with backoff, cancel, Streamable HTTP, the
PyPI ``mcp-server-time``, and a clean stop."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import psutil
import pytest

from culm.errors import MCPServerError, ToolFailure
from culm.mcp.config import parse_server
from culm.mcp.connection import ConnectionOptions, ServerConnection, ServerStatus
from culm.tools.base import ToolContext
from tests.api.conftest import free_port
from tests.mcp.conftest import TIME_SERVER, DemoServer, mcp_children, serving_demo
from tests.mcp.servers import demo

Connect = Callable[..., contextlib.AbstractAsyncContextManager[ServerConnection]]


@pytest.fixture
def connect(tmp_path: Path) -> Connect:
    """``async with connect(name, config, restart_delay=…) as connection``: closed on exit."""

    @contextlib.asynccontextmanager
    async def factory(
        name: str, config: dict[str, Any], **options: Any
    ) -> AsyncIterator[ServerConnection]:
        async with asyncio.TaskGroup() as group:
            connection = ServerConnection(
                name,
                parse_server(name, config, "the test"),
                spawn=lambda coro, task_name: group.create_task(coro, name=task_name),
                options=ConnectionOptions(log_dir=tmp_path / "logs", **options),
            )
            try:
                yield connection
            finally:
                await connection.aclose()

    return factory


def tool_context(output: list[str] | None = None, timeout: float = 10) -> ToolContext:
    sink = output if output is not None else []
    return ToolContext(
        workspace=Path("."), tool_call_id="call-1", emit_output=sink.append, timeout=timeout
    )


async def call(connection: ServerConnection, tool: str, **arguments: Any) -> str:
    result = await connection.call(tool, arguments, timeout=10)
    assert not result.is_error, result.text
    return result.text


async def test_a_server_starts_on_first_use_and_serves_every_call(
    connect: Connect, demo_server: DemoServer
) -> None:
    async with connect("demo", demo_server.config()) as connection:
        assert connection.info().status is ServerStatus.STOPPED
        assert mcp_children() == []
        tools = {tool.name: tool for tool in await connection.tools()}
        info = connection.info()
        assert info.status is ServerStatus.READY
        assert info.tool_count == len(tools) == 7
        add = tools["mcp__demo__add"]
        assert add.parameters["required"] == ["a", "b"]
        assert add.description == "Add two integers."
        assert tools["mcp__demo__echo"].read_only and not add.read_only
        assert await add.run({"a": 2, "b": 40}, tool_context()) == "42"
        # Progress notifications become live output; an error result is a tool failure.
        output: list[str] = []
        result = await tools["mcp__demo__progress"].run({"steps": 2}, tool_context(output))
        assert result == "2 steps done"
        assert output == ["progress 1/2: step 1\n", "progress 2/2: step 2\n"]
        with pytest.raises(ToolFailure, match="nope"):
            await tools["mcp__demo__fail"].run({"message": "nope"}, tool_context())
        # One process serves overlapping calls: eight sleeps are inside the server at once.
        sleeps = [asyncio.create_task(call(connection, "sleep", seconds=30)) for _ in range(8)]
        await demo_server.wait_for("sleep started", count=8)
        for sleep in sleeps:
            sleep.cancel()
        await asyncio.gather(*sleeps, return_exceptions=True)
        await demo_server.wait_for("sleep cancelled", count=8)
        pids = await asyncio.gather(*(call(connection, "pid") for _ in range(5)))
        assert len(set(pids)) == 1
        assert len(mcp_children()) == 1
    assert connection.info().status is ServerStatus.STOPPED
    assert mcp_children() == []


async def test_a_crash_fails_the_call_clearly_and_the_restart_backs_off(
    connect: Connect, demo_server: DemoServer
) -> None:
    async with connect("demo", demo_server.config(), restart_delay=5) as connection:
        first_pid = await call(connection, "pid")
        with pytest.raises(MCPServerError) as info:
            await connection.call("crash", {}, timeout=10)
        message = str(info.value)
        assert (
            "MCP server 'demo' failed during the call: the server closed the connection" in message
        )
        assert "demo server: crashing on purpose" in message  # its stderr says why
        assert "started again on the next call" in message
        assert connection.info().status is ServerStatus.ERROR
        assert mcp_children() == []
        # The restart is due in 5 s: a call now fails at once, saying so, and starts nothing.
        with pytest.raises(
            MCPServerError, match=r"'demo' is unavailable \(the server closed .* in 5 s"
        ):
            await connection.call("pid", {}, timeout=10)
        assert mcp_children() == []
        assert connection.info().restarts == 0
        await connection.refresh()  # skips the wait
        info_after = connection.info()
        assert info_after.status is ServerStatus.READY
        assert info_after.restarts == 1
        assert "crashing on purpose" in (info_after.last_error or "")
        assert await call(connection, "pid") != first_pid


async def test_a_server_that_cannot_start_is_an_error_that_says_why(connect: Connect) -> None:
    async with connect("broken", {"command": "/nonexistent/mcp-server"}) as connection:
        with pytest.raises(MCPServerError, match="'broken' could not start: .*No such file"):
            await connection.tools()
        info = connection.info()
        assert info.status is ServerStatus.ERROR
        assert "No such file" in (info.last_error or "")


async def test_a_server_that_exits_at_once_shows_its_stderr(connect: Connect) -> None:
    config = {"command": "sh", "args": ["-c", "echo 'missing API key' >&2; exit 1"]}
    async with connect("quitter", config) as connection:
        with pytest.raises(MCPServerError, match="could not start: .*stderr: missing API key"):
            await connection.tools()


# Reads nothing and answers nothing: it hangs in the handshake until it is killed.
SILENT_SERVER = {
    "command": sys.executable,
    "args": ["-c", "import time; time.sleep(600)", "silent-mcp-server"],
}


def silent_servers() -> list[psutil.Process]:
    return [
        child
        for child in psutil.Process().children(recursive=True)
        if "silent-mcp-server" in child.cmdline() and child.status() != psutil.STATUS_ZOMBIE
    ]


async def test_a_server_hanging_in_its_handshake_fails_at_the_request_timeout(
    connect: Connect,
) -> None:
    # The SDK probes ``server/discover`` (10 s of its own) before ``initialize``: without a
    # deadline over both, a 2 s timeout failed after some 14 s, and the default 30 s after 44.
    async with connect("silent", SILENT_SERVER, request_timeout=2) as connection:
        started = time.monotonic()
        with pytest.raises(
            MCPServerError,
            match=r"'silent' could not start: no answer to the handshake within 2 s "
            r"\(CULM_MCP_REQUEST_TIMEOUT\)",
        ):
            await connection.tools()
        assert time.monotonic() - started < 2 + 2  # generous: CI noise, not another timeout
        assert connection.info().status is ServerStatus.ERROR
        async with asyncio.timeout(10):  # the server is stopped meanwhile
            while silent_servers():
                await asyncio.sleep(0.05)
        # The next call starts it again (after the backoff) and fails the same way.
        with pytest.raises(MCPServerError, match="no answer to the handshake within 2 s"):
            await connection.tools()
    assert silent_servers() == []


async def test_cancelling_a_call_abandons_it_and_the_server_goes_on(
    connect: Connect, demo_server: DemoServer
) -> None:
    async with connect("demo", demo_server.config()) as connection:
        pid = await call(connection, "pid")
        task = asyncio.create_task(call(connection, "sleep", seconds=30))
        await demo_server.wait_for("sleep started")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # The SDK told the server (a call that waited for the sleep would not have).
        await demo_server.wait_for("sleep cancelled")
        assert await call(connection, "pid") == pid
        assert connection.info().status is ServerStatus.READY


async def test_streamable_http(
    connect: Connect, http_demo: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    notes = DemoServer(events=tmp_path / "http-events.txt")
    monkeypatch.setattr(demo, "EVENTS", str(notes.events))  # the server runs in this process
    async with connect("web", {"url": http_demo, "headers": {"X-Test": "1"}}) as connection:
        names = [tool.name for tool in await connection.tools()]
        assert "mcp__web__add" in names
        assert connection.info().transport == "http"
        assert await call(connection, "add", a=1, b=2) == "3"
        output: list[str] = []
        tools = {tool.name: tool for tool in await connection.tools()}
        await tools["mcp__web__progress"].run({"steps": 1}, tool_context(output))
        assert output == ["progress 1/1: step 1\n"]
        task = asyncio.create_task(call(connection, "sleep", seconds=30))
        await notes.wait_for("sleep started")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await call(connection, "echo", text="still here") == "still here"


async def test_an_http_server_that_goes_away_and_comes_back(connect: Connect) -> None:
    port = free_port()
    async with connect("web", {"url": f"http://127.0.0.1:{port}/mcp"}) as connection:
        with pytest.raises(MCPServerError, match="'web' could not start: .*connect"):
            await connection.tools()
        async with serving_demo(port):
            await connection.refresh()
            assert await call(connection, "add", a=1, b=2) == "3"
        with pytest.raises(MCPServerError, match="'web' failed during the call: .*connect"):
            await connection.call("add", {"a": 1, "b": 2}, timeout=5)
        assert connection.info().status is ServerStatus.ERROR
        async with serving_demo(port):  # the next call reconnects (after a short backoff)
            assert await call(connection, "add", a=2, b=2) == "4"
            assert connection.info().restarts == 1


async def test_the_time_server_from_pypi(connect: Connect) -> None:
    async with connect("time", TIME_SERVER) as connection:
        names = sorted(tool.name for tool in await connection.tools())
        assert names == ["mcp__time__convert_time", "mcp__time__get_current_time"]
        text = await call(connection, "get_current_time", timezone="Europe/Paris")
        assert '"timezone": "Europe/Paris"' in text
        converted = await call(
            connection,
            "convert_time",
            source_timezone="UTC",
            time="12:00",
            target_timezone="Asia/Tokyo",
        )
        assert "21:00" in converted
        result = await connection.call("get_current_time", {"timezone": "Nowhere/X"}, timeout=5)
        assert result.is_error and "Nowhere/X" in result.text
        with pytest.raises(ToolFailure, match="MCP server 'time' refused the call: .*missing"):
            await connection.call("missing", {}, timeout=5)
