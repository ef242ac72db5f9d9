"""Fixtures for the provider adapters: a fake upstream, a client, settings pointing at both."""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator
from pathlib import Path

import httpx2
import pytest

from culm.providers.base import StreamPart, ToolCallDelta
from culm.settings import Settings
from tests.providers.fakes import FakeUpstream


@pytest.fixture
async def upstream() -> AsyncIterator[FakeUpstream]:
    async with FakeUpstream() as server:
        yield server


@pytest.fixture
async def http_client() -> AsyncIterator[httpx2.AsyncClient]:
    async with httpx2.AsyncClient(trust_env=False) as client:
        yield client


@pytest.fixture
def upstream_settings(
    upstream: FakeUpstream, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> Settings:
    """Both providers pointed at the fake upstream, with test keys."""
    monkeypatch.setenv("CULM_HOME", str(tmp_path))
    return Settings(
        openai_api_key="sk-test",
        openai_base_url=f"{upstream.url}/v1",
        anthropic_api_key="ak-test",
        anthropic_base_url=upstream.url,
    )


async def collect(parts: AsyncIterable[StreamPart]) -> list[StreamPart]:
    return [part async for part in parts]


def assemble_tool_calls(parts: list[StreamPart]) -> dict[int, dict[str, str]]:
    """Tool call deltas folded by index the way the loop does it: ``{index: {id, name, arguments}}``."""
    calls: dict[int, dict[str, str]] = {}
    for part in parts:
        if isinstance(part, ToolCallDelta):
            call = calls.setdefault(part.index, {"id": "", "name": "", "arguments": ""})
            call["id"] = part.id or call["id"]
            call["name"] = part.name or call["name"]
            call["arguments"] += part.arguments
    return calls
