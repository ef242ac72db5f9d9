"""An engine whose models are served by :class:`WindowedUpstream` (a 4k-token window)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

import culm
from tests.context.windowed import BigOutputTool, WindowedUpstream, Wire

WINDOW = 4096


@pytest.fixture(params=["openai", "anthropic"])
async def upstream(request: pytest.FixtureRequest) -> AsyncIterator[WindowedUpstream]:
    wire: Wire = request.param
    async with WindowedUpstream(wire, WINDOW) as server:
        yield server


def windowed_settings(home: Path, upstream: WindowedUpstream, **overrides: Any) -> culm.Settings:
    limits = {"max_context_tokens": WINDOW}
    return culm.Settings(
        home=home,
        openai_api_key="sk-test",
        openai_base_url=f"{upstream.url}/v1",
        anthropic_api_key="ak-test",
        anthropic_base_url=upstream.url,
        models={"openai:fake": limits, "anthropic:fake": limits},
        model_retry_base_delay=0.0,
        **overrides,
    )


def model_of(upstream: WindowedUpstream) -> str:
    return f"{upstream.wire}:fake"


@pytest.fixture
def big_output() -> BigOutputTool:
    return BigOutputTool()
