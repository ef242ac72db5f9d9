"""The model client (``providers.http.model_client``) on the proxy's asyncio transport: a
streamed answer arrives whole, token by token; a cut, a stall, a cancel and the stall guard
behave as they did on httpx2's default transport; connections are kept for the next call."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx2
import pytest

from culm.errors import ModelConnectionError, ModelStallError
from culm.loop.model_call import _stall_guard
from culm.providers.base import Finish, Model, TextDelta
from culm.providers.http import model_client
from culm.providers.remote import build_http_model
from culm.proxy.transport import AsyncioTransport
from culm.settings import Settings
from tests.providers.conftest import collect
from tests.providers.fakes import FakeUpstream
from tests.providers.test_openai import HELLO, chunk, stream_reply


@pytest.fixture
async def client(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[httpx2.AsyncClient]:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.delenv(name, raising=False)
    async with model_client(4) as client:
        yield client


@pytest.fixture
def model(upstream_settings: Settings, client: httpx2.AsyncClient) -> Model:
    return build_http_model("openai", "gpt-4o", upstream_settings, client)


async def test_the_model_client_uses_the_asyncio_transport(client: httpx2.AsyncClient) -> None:
    assert isinstance(client._transport, AsyncioTransport)


async def test_a_streamed_answer_arrives_whole(upstream: FakeUpstream, model: Model) -> None:
    tokens = [chunk({"content": f"w{i} "}) for i in range(40)]
    upstream.push(stream_reply(*tokens, chunk(finish="stop"), "[DONE]"))
    parts = await collect(model.stream(HELLO))
    assert parts == [TextDelta(text=f"w{i} ") for i in range(40)] + [Finish(reason="stop")]


async def test_a_connection_cut_mid_body_is_a_connection_error(
    upstream: FakeUpstream, model: Model
) -> None:
    upstream.push(stream_reply(chunk({"content": "Hel"}), chunk({"content": "lo"}), end="cut"))
    parts: list[Any] = []
    with pytest.raises(ModelConnectionError, match="openai"):
        async for part in model.stream(HELLO):
            parts.append(part)
    assert parts == [TextDelta(text="Hel"), TextDelta(text="lo")]


async def test_a_stream_closed_by_the_server_ends_the_body(
    upstream: FakeUpstream, model: Model
) -> None:
    upstream.push(stream_reply(chunk({"content": "Hi"}, finish="stop"), end="close"))
    assert await collect(model.stream(HELLO)) == [TextDelta(text="Hi"), Finish(reason="stop")]


async def test_a_stalled_read_is_cancelled_and_the_connection_closed(
    upstream: FakeUpstream, model: Model
) -> None:
    upstream.push(stream_reply(chunk({"content": "Hel"}), end="stall"))
    parts = model.stream(HELLO)
    assert await anext(parts) == TextDelta(text="Hel")
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.2):
            await anext(parts)
    async with asyncio.timeout(5):
        await upstream.client_closed.wait()


async def test_the_stall_guard_fires_on_a_stalled_stream(
    upstream: FakeUpstream, model: Model
) -> None:
    upstream.push(stream_reply(chunk({"content": "Hel"}), end="stall"))
    seen: list[Any] = []
    with pytest.raises(ModelStallError):
        async for part in _stall_guard(model.stream(HELLO), 0.2):
            seen.append(part)
    assert seen == [TextDelta(text="Hel")]
    async with asyncio.timeout(5):
        await upstream.client_closed.wait()


async def test_connections_are_kept_for_the_next_call(upstream: FakeUpstream, model: Model) -> None:
    for _ in range(3):
        upstream.push(stream_reply(chunk({"content": "x"}, finish="stop"), "[DONE]"))
        await collect(model.stream(HELLO))
    assert len(upstream.requests) == 3
    assert upstream.connections == 1
