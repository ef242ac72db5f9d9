"""The model client's network backend (culm.providers.netio): a read without a read timeout is a
plain receive, with httpcore2's exceptions, and everything else as httpcore2 does it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
import httpcore2
import httpx2
import pytest

from culm.errors import ModelConnectionError
from culm.providers.base import Finish, Model, TextDelta
from culm.providers.http import model_client
from culm.providers.remote import build_http_model
from culm.settings import Settings
from tests.providers.conftest import collect
from tests.providers.fakes import FakeUpstream, Reply, openai_events
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


@contextlib.contextmanager
def counting_fail_after() -> Iterator[list[float | None]]:
    """Record every ``anyio.fail_after`` httpcore2 enters (it calls it through the module)."""
    calls: list[float | None] = []
    original = anyio.fail_after

    def fail_after(delay: float | None, shield: bool = False) -> Any:
        calls.append(delay)
        return original(delay, shield)

    anyio.fail_after = fail_after  # type: ignore[assignment]
    try:
        yield calls
    finally:
        anyio.fail_after = original


async def test_a_read_without_a_timeout_enters_no_cancel_scope(
    upstream: FakeUpstream, model: Model
) -> None:
    upstream.push(stream_reply(chunk({"content": "Hel"}), end="stall"))
    parts = model.stream(HELLO)
    with counting_fail_after() as calls:
        assert await anext(parts) == TextDelta(text="Hel")
        assert calls, "the connect and the request's write have their scopes"
        calls.clear()
        # Nothing more arrives: the next part is a read that waits, and is cancelled.
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.2):
                await anext(parts)
    assert calls == []
    async with asyncio.timeout(5):
        await upstream.client_closed.wait()


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


async def test_a_stalled_read_is_cancelled_at_once_and_the_connection_closed(
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


async def test_connections_are_kept_for_the_next_call(upstream: FakeUpstream, model: Model) -> None:
    for _ in range(3):
        upstream.push(stream_reply(chunk({"content": "x"}, finish="stop"), "[DONE]"))
        await collect(model.stream(HELLO))
    assert upstream.connections == 1


async def test_a_read_with_a_timeout_still_times_out(
    upstream: FakeUpstream, client: httpx2.AsyncClient
) -> None:
    upstream.push(Reply(chunks=openai_events(chunk({"content": "Hel"})), end="stall"))
    timeout = httpx2.Timeout(None, read=0.1)
    with pytest.raises(httpx2.ReadTimeout):
        async with client.stream("POST", f"{upstream.url}/v1/x", timeout=timeout) as response:
            async for _ in response.aiter_bytes():
                pass


async def test_the_model_client_opens_its_connections_with_culms_backend() -> None:
    async with model_client(2) as client:
        transport = client._transport
        assert isinstance(transport, httpx2.AsyncHTTPTransport)
        pool = transport._pool
        assert isinstance(pool, httpcore2.AsyncConnectionPool)
        assert type(pool._network_backend).__name__ == "ModelNetworkBackend"
