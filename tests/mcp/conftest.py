"""Real MCP servers for the tests: the SDK-built demo server (``servers/demo.py``) over stdio and
over Streamable HTTP (uvicorn on 127.0.0.1, in the test's process), and ``mcp-server-time``
from PyPI over stdio."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest
import uvicorn

import culm
from tests.api.conftest import free_port
from tests.mcp.servers import demo

DEMO = Path(demo.__file__)
MCP_SERVER_MARKERS = (DEMO.name, "mcp_server_time")


@dataclass(frozen=True)
class DemoServer:
    """How to configure the stdio demo server, and the file it notes its cancels in."""

    events: Path

    def config(self, **extra: Any) -> dict[str, Any]:
        return {
            "command": sys.executable,
            "args": [str(DEMO)],
            "env": {"DEMO_EVENTS_FILE": str(self.events)},
            **extra,
        }

    def lines(self) -> list[str]:
        return self.events.read_text().splitlines() if self.events.exists() else []

    async def wait_for(self, line: str, timeout: float = 5, *, count: int = 1) -> None:
        """Until the server has noted ``line`` ``count`` times (the timeout only guards a hang)."""
        async with asyncio.timeout(timeout):
            while self.lines().count(line) < count:
                await asyncio.sleep(0.02)


TIME_SERVER = {
    "command": sys.executable,
    "args": ["-m", "mcp_server_time", "--local-timezone", "UTC"],
}


@pytest.fixture
def demo_server(tmp_path: Path) -> DemoServer:
    return DemoServer(events=tmp_path / "demo-events.txt")


@contextlib.asynccontextmanager
async def serving_demo(port: int) -> AsyncIterator[str]:
    """The demo server over Streamable HTTP on ``port`` (its URL) while in the block."""
    config = uvicorn.Config(demo.http_app(), host="127.0.0.1", port=port, log_level="warning")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    async with asyncio.timeout(10):
        while not server.started:
            if task.done():
                task.result()
            await asyncio.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        server.should_exit = True
        async with asyncio.timeout(10):
            await task


@pytest.fixture
async def http_demo() -> AsyncIterator[str]:
    """The URL of the demo server over Streamable HTTP."""
    async with serving_demo(free_port()) as url:
        yield url


EngineFactory = Callable[..., culm.Engine]


@pytest.fixture
def make_engine(tmp_path: Path) -> EngineFactory:
    """``make_engine(demo={...})``: an engine (not started) with these MCP servers configured."""

    def factory(**servers: dict[str, Any]) -> culm.Engine:
        return culm.Engine(culm.Settings(home=tmp_path / "home", mcp_servers=servers))

    return factory


def is_reaper(process: psutil.Process) -> bool:
    return any(part.endswith("reaper.py") for part in process.cmdline()[:4])


def mcp_children() -> list[psutil.Process]:
    """This process's live descendants that are MCP servers of the tests (not the reapers
    they run under)."""
    found = []
    for child in psutil.Process().children(recursive=True):
        try:
            if is_reaper(child):
                continue
            if child.status() != psutil.STATUS_ZOMBIE and any(
                marker in part for part in child.cmdline() for marker in MCP_SERVER_MARKERS
            ):
                found.append(child)
        except psutil.NoSuchProcess:
            continue
    return found


@pytest.fixture(autouse=True)
def no_leftover_servers() -> Iterator[None]:
    """Every test must leave no MCP server process behind."""
    yield
    assert mcp_children() == []
