"""A private ``redis-server`` on a free loopback port, for tests that stop and restart Redis
(never the shared one). No persistence: a restart loses every key, the worst case for the bus."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as redis

from tests.api.conftest import free_port
from tests.conftest import CI


class PrivateRedis:
    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._directory = directory
        self._process: subprocess.Popen[bytes] | None = None

    async def start(self) -> None:
        self._process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no", "--dir", str(self._directory)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        client = redis.Redis.from_url(self.url)
        try:
            async with asyncio.timeout(10):
                while True:
                    with contextlib.suppress(OSError, redis.RedisError):
                        await client.ping()
                        return
                    await asyncio.sleep(0.05)
        finally:
            await client.aclose()

    def stop(self) -> None:
        if self._process is not None:
            self._process.kill()
            self._process.wait(10)
            self._process = None


@contextlib.asynccontextmanager
async def private_redis(directory: Path) -> AsyncIterator[PrivateRedis]:
    if shutil.which("redis-server") is None:
        message = "redis-server is not installed (a private Redis is needed)"
        if CI:
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    server = PrivateRedis(directory)
    await server.start()
    try:
        yield server
    finally:
        server.stop()
