"""A real culm server (uvicorn on 127.0.0.1, an ephemeral port) for tests where the wire matters.

The server runs in the test's event loop, so a test can reach its engine directly
(``server.engine.scripts.register(...)``) while it talks HTTP to it like any client.

Every test here runs on both backends (SQLite and PostgreSQL), same body: see ``backend``.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import uvicorn

import culm
from culm.api.app import create_app


@pytest.fixture(autouse=True)
def _on_each_backend(backend: str) -> str:
    return backend


@dataclass
class Server:
    url: str
    engine: culm.Engine
    settings: culm.Settings
    uvicorn: uvicorn.Server


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.asynccontextmanager
async def running_server(settings: culm.Settings, **engine_kwargs: Any) -> AsyncIterator[Server]:
    engine = culm.Engine(settings, **engine_kwargs)
    app = create_app(settings, engine=engine)
    port = free_port()
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_level="warning", lifespan="on", ws="websockets-sansio"
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    async with asyncio.timeout(10):
        while not server.started:
            if task.done():
                task.result()
            await asyncio.sleep(0.01)
    try:
        yield Server(
            url=f"http://127.0.0.1:{port}", engine=engine, settings=settings, uvicorn=server
        )
    finally:
        server.should_exit = True
        async with asyncio.timeout(20):
            await task


ServerFactory = Callable[..., contextlib.AbstractAsyncContextManager[Server]]


@pytest.fixture
def server_settings(tmp_path: Path) -> culm.Settings:
    return culm.Settings(home=tmp_path / "home")


@pytest.fixture
async def server(server_settings: culm.Settings) -> AsyncIterator[Server]:
    async with running_server(server_settings) as running:
        yield running


@pytest.fixture
def make_server(tmp_path: Path) -> ServerFactory:
    """Start extra servers with custom settings: ``async with make_server(api_key=...) as s``."""

    def factory(**overrides: Any) -> contextlib.AbstractAsyncContextManager[Server]:
        overrides.setdefault("home", tmp_path / "home")
        return running_server(culm.Settings(**overrides))

    return factory
