"""The forward proxy end to end: a real culm server between the official SDKs (or raw httpx2)
and a fake provider, and the metrics records it writes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import shlex
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anthropic
import httpx2
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from culm.domain.models import Usage
from culm.metrics.reports import ForwardRequestMetrics
from tests.api.conftest import free_port
from tests.providers.fakes import json_reply
from tests.proxy import wire
from tests.proxy.conftest import (
    CLIENT_ANTHROPIC_KEY,
    CLIENT_OPENAI_KEY,
    Proxy,
    ProxyFactory,
)
from tests.proxy.upstream import ProxyReply

HELLO: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Hi"}]
ANTHROPIC_HELLO: list[anthropic.types.MessageParam] = [{"role": "user", "content": "Hi"}]
START_USAGE = Usage(
    prompt_tokens=175,
    completion_tokens=1,
    total_tokens=176,
    cache_read_tokens=50,
    cache_write_tokens=100,
)


def expect(record: ForwardRequestMetrics, **fields: Any) -> None:
    """``record`` has these field values."""
    assert {name: getattr(record, name) for name in fields} == fields


def successful(record: ForwardRequestMetrics, usage: Usage | None, **fields: Any) -> None:
    expect(
        record, status="success", status_code=200, usage=usage, error=None, partial=False, **fields
    )


def stream_reply(chunks: list[bytes], **options: Any) -> ProxyReply:
    return ProxyReply(chunks=chunks, **options)


def body_reply(payload: Any, **options: Any) -> ProxyReply:
    return ProxyReply(
        headers={"content-type": "application/json"},
        chunks=[json.dumps(payload).encode()],
        **options,
    )


class Capture:
    """An httpx2 client for an SDK that keeps the request bodies the SDK sends."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        self.client = httpx2.AsyncClient(event_hooks={"request": [self._hook]}, trust_env=False)

    async def _hook(self, request: httpx2.Request) -> None:
        self.bodies.append(request.content)


@pytest.fixture
async def http(proxy: Proxy) -> AsyncIterator[httpx2.AsyncClient]:
    async with httpx2.AsyncClient(base_url=proxy.url, trust_env=False, timeout=10) as client:
        yield client


@contextlib.asynccontextmanager
async def raw_stream(
    client: httpx2.AsyncClient, method: str, path: str, **options: Any
) -> AsyncIterator[tuple[httpx2.Response, AsyncIterator[bytes]]]:
    async with (
        client.stream(method, path, **options) as response,
        contextlib.aclosing(response.aiter_raw()) as chunks,
    ):
        yield response, chunks


async def read_at_least(chunks: AsyncIterator[bytes], size: int) -> bytes:
    """At least ``size`` bytes from ``chunks`` (bounded: the test fails rather than hangs)."""
    data = b""
    async with asyncio.timeout(5):
        while len(data) < size:
            data += await anext(chunks)
    return data


# OpenAI Chat Completions


async def test_chat_completion(proxy: Proxy) -> None:
    proxy.upstream.push(
        body_reply(wire.chat_completion({"role": "assistant", "content": "Hello!"}))
    )
    async with proxy.openai() as client:
        raw = await client.chat.completions.with_raw_response.create(
            model=wire.CHAT_MODEL, messages=HELLO
        )
    completion = raw.parse()
    assert completion.choices[0].message.content == "Hello!"
    assert completion.usage is not None and completion.usage.total_tokens == 43
    (request,) = proxy.upstream.requests
    assert (request.method, request.path) == ("POST", "/v1/chat/completions")
    assert request.json() == {"model": wire.CHAT_MODEL, "messages": HELLO}
    record = await proxy.record()
    assert raw.headers["x-culm-request-id"] == record.request_id
    successful(
        record,
        wire.CHAT_USAGE_MAPPED,
        endpoint="openai.chat_completions",
        model=wire.CHAT_MODEL,
        is_stream=False,
        trace_id=None,
    )
    assert record.latency_ms is not None and record.started_at is not None


async def test_chat_stream_without_usage_asked(proxy: Proxy) -> None:
    """The proxy asks for the usage; the client does not get the usage-only chunk."""
    proxy.upstream.push(stream_reply(wire.rechunk(wire.chat_text_events(), 7)))
    capture = Capture()
    async with proxy.openai(http_client=capture.client) as client:
        stream = await client.chat.completions.create(
            model=wire.CHAT_MODEL, messages=HELLO, stream=True
        )
        chunks = [chunk async for chunk in stream]
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "Hello world"
    assert [c.choices[0].finish_reason for c in chunks][-1] == "stop"
    assert all(chunk.choices and chunk.usage is None for chunk in chunks)
    (sent,) = capture.bodies
    (request,) = proxy.upstream.requests
    assert request.body == b'{"stream_options":{"include_usage":true},' + sent[1:]
    assert request.json()["stream_options"] == {"include_usage": True}
    successful(
        await proxy.record(),
        wire.CHAT_USAGE_MAPPED,
        endpoint="openai.chat_completions",
        model=wire.CHAT_MODEL,
        is_stream=True,
    )


async def test_chat_stream_with_usage_asked(proxy: Proxy) -> None:
    proxy.upstream.push(stream_reply(wire.chat_text_events()))
    capture = Capture()
    async with proxy.openai(http_client=capture.client) as client:
        stream = await client.chat.completions.create(
            model=wire.CHAT_MODEL,
            messages=HELLO,
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [chunk async for chunk in stream]
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.model_dump(exclude_none=True) == wire.CHAT_USAGE
    assert proxy.upstream.requests[0].body == capture.bodies[0]  # byte for byte
    successful(await proxy.record(), wire.CHAT_USAGE_MAPPED, is_stream=True)


async def test_chat_stream_with_usage_refused_is_asked_anyway(
    proxy: Proxy, http: httpx2.AsyncClient
) -> None:
    proxy.upstream.push(stream_reply(wire.chat_text_events()))
    body = {"model": "m", "stream": True, "stream_options": {"include_usage": False, "x": 1}}
    response = await http.post("/openai/v1/chat/completions", json=body)
    assert response.content == b"".join(
        e for e in wire.chat_text_events() if b'"choices": []' not in e
    )
    assert proxy.upstream.requests[0].json() == {
        **body,
        "stream_options": {"include_usage": True, "x": 1},
    }
    successful(await proxy.record(), wire.CHAT_USAGE_MAPPED)


async def test_chat_stream_tool_calls(proxy: Proxy) -> None:
    proxy.upstream.push(stream_reply(wire.rechunk(wire.chat_tool_events(), 11)))
    async with proxy.openai() as client:
        stream = await client.chat.completions.create(
            model=wire.CHAT_MODEL, messages=HELLO, stream=True
        )
        calls: dict[int, dict[str, str]] = {}
        finish = None
        async for chunk in stream:
            assert chunk.usage is None
            choice = chunk.choices[0]
            finish = choice.finish_reason or finish
            for delta in choice.delta.tool_calls or []:
                call = calls.setdefault(delta.index, {"id": "", "name": "", "arguments": ""})
                call["id"] += delta.id or ""
                if delta.function is not None:
                    call["name"] += delta.function.name or ""
                    call["arguments"] += delta.function.arguments or ""
    assert finish == "tool_calls"
    assert calls == {
        0: {"id": "call_a", "name": "weather", "arguments": '{"city": "Paris"}'},
        1: {"id": "call_b", "name": "clock", "arguments": '{"tz": "CET"}'},
    }
    successful(await proxy.record(), wire.CHAT_USAGE_MAPPED, is_stream=True)


async def test_chat_tool_calls_not_streamed(proxy: Proxy) -> None:
    proxy.upstream.push(body_reply(wire.chat_completion(wire.TOOL_CALLS_MESSAGE, "tool_calls")))
    async with proxy.openai() as client:
        completion = await client.chat.completions.create(model=wire.CHAT_MODEL, messages=HELLO)
    calls = completion.choices[0].message.tool_calls or []
    assert [(c.id, c.function.name, c.function.arguments) for c in calls] == [  # type: ignore[union-attr]
        ("call_a", "weather", '{"city": "Paris"}'),
        ("call_b", "clock", '{"tz": "CET"}'),
    ]
    successful(await proxy.record(), wire.CHAT_USAGE_MAPPED, is_stream=False)


async def test_openai_models(proxy: Proxy) -> None:
    models = {
        "object": "list",
        "data": [{"id": "gpt-4o", "object": "model", "created": 1, "owned_by": "openai"}],
    }
    proxy.upstream.push(body_reply(models))
    async with proxy.openai() as client:
        listed = [model.id async for model in client.models.list()]
    assert listed == ["gpt-4o"]
    (request,) = proxy.upstream.requests
    assert (request.method, request.path, request.body) == ("GET", "/v1/models", b"")
    successful(await proxy.record(), None, endpoint="openai.models", is_stream=False)


async def test_query_string_goes_upstream(proxy: Proxy, http: httpx2.AsyncClient) -> None:
    proxy.upstream.push(body_reply({"data": [], "has_more": False}))
    response = await http.get("/anthropic/v1/models", params={"limit": "2", "after_id": "a b"})
    assert response.status_code == 200
    assert proxy.upstream.requests[0].path == "/v1/models?limit=2&after_id=a+b"


# OpenAI Responses


async def test_responses(proxy: Proxy) -> None:
    proxy.upstream.push(
        body_reply(wire.response_object("completed", text="Hi there", usage=wire.RESPONSES_USAGE))
    )
    async with proxy.openai() as client:
        response = await client.responses.create(model=wire.CHAT_MODEL, input="Hi")
    assert response.output_text == "Hi there"
    (request,) = proxy.upstream.requests
    assert (request.path, request.json()) == (
        "/v1/responses",
        {"model": wire.CHAT_MODEL, "input": "Hi"},
    )
    successful(
        await proxy.record(),
        wire.RESPONSES_USAGE_MAPPED,
        endpoint="openai.responses",
        model=wire.CHAT_MODEL,
        is_stream=False,
    )


async def test_responses_stream(proxy: Proxy) -> None:
    proxy.upstream.push(stream_reply(wire.rechunk(wire.responses_events(), 13)))
    capture = Capture()
    async with proxy.openai(http_client=capture.client) as client:
        stream = await client.responses.create(model=wire.CHAT_MODEL, input="Hi", stream=True)
        events = [event async for event in stream]
    assert [e.type for e in events] == [
        "response.created",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.completed",
    ]
    completed = events[-1]
    assert completed.type == "response.completed"
    assert completed.response.usage is not None and completed.response.usage.total_tokens == 60
    assert proxy.upstream.requests[0].body == capture.bodies[0]  # nothing added for Responses
    successful(
        await proxy.record(),
        wire.RESPONSES_USAGE_MAPPED,
        endpoint="openai.responses",
        model=wire.CHAT_MODEL,
        is_stream=True,
    )


# Anthropic Messages


async def test_messages(proxy: Proxy) -> None:
    content: list[dict[str, Any]] = [
        {"type": "text", "text": "Checking."},
        {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {"city": "Paris"}},
    ]
    proxy.upstream.push(body_reply(wire.message_object(content, wire.MESSAGE_BODY_USAGE)))
    async with proxy.anthropic() as client:
        message = await client.messages.create(
            model=wire.CLAUDE, max_tokens=100, messages=ANTHROPIC_HELLO
        )
    assert message.stop_reason == "tool_use"
    tool_use = message.content[1]
    assert tool_use.type == "tool_use" and tool_use.input == {"city": "Paris"}
    (request,) = proxy.upstream.requests
    assert request.path == "/v1/messages"
    assert request.headers["anthropic-version"]
    successful(
        await proxy.record(),
        wire.MESSAGES_USAGE_MAPPED,
        endpoint="anthropic.messages",
        model=wire.CLAUDE,
        is_stream=False,
    )


async def test_messages_stream_thinking_and_tool_use(proxy: Proxy) -> None:
    proxy.upstream.push(stream_reply(wire.rechunk(wire.messages_events(), 17)))
    async with (
        proxy.anthropic() as client,
        client.messages.stream(
            model=wire.CLAUDE,
            max_tokens=2000,
            thinking={"type": "enabled", "budget_tokens": 1024},
            messages=ANTHROPIC_HELLO,
        ) as stream,
    ):
        message = await stream.get_final_message()
    thinking, text, tool_use = message.content
    assert thinking.type == "thinking"
    assert (thinking.thinking, thinking.signature) == ("Weather first.", "sig==")
    assert text.type == "text" and text.text == "Checking."
    assert tool_use.type == "tool_use"
    assert (tool_use.name, tool_use.input) == ("weather", {"city": "Paris"})
    assert message.usage.output_tokens == 42
    successful(
        await proxy.record(),
        wire.MESSAGES_USAGE_MAPPED,
        endpoint="anthropic.messages",
        model=wire.CLAUDE,
        is_stream=True,
    )


async def test_anthropic_models(proxy: Proxy) -> None:
    model = {
        "type": "model",
        "id": wire.CLAUDE,
        "display_name": "Claude Sonnet 4.5",
        "created_at": "2025-09-29T00:00:00Z",
    }
    page = {"data": [model], "has_more": False, "first_id": wire.CLAUDE, "last_id": wire.CLAUDE}
    proxy.upstream.push(body_reply(page))
    async with proxy.anthropic() as client:
        listed = [m.id async for m in client.models.list()]
    assert listed == [wire.CLAUDE]
    assert proxy.upstream.requests[0].path.startswith("/v1/models")
    successful(await proxy.record(), None, endpoint="anthropic.models")


# Upstream errors

OPENAI_ERRORS = [
    (401, openai.AuthenticationError, "invalid_api_key", "Incorrect API key provided", {}),
    (429, openai.RateLimitError, "rate_limit_exceeded", "Rate limit reached", {"retry-after": "7"}),
    (500, openai.InternalServerError, "server_error", "The server had an error", {}),
]
ANTHROPIC_ERRORS = [
    (401, anthropic.AuthenticationError, "authentication_error", "invalid x-api-key", {}),
    (429, anthropic.RateLimitError, "rate_limit_error", "Number of requests", {"retry-after": "7"}),
    (500, anthropic.InternalServerError, "api_error", "Internal server error", {}),
]


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(("status", "error", "kind", "message", "headers"), OPENAI_ERRORS)
async def test_openai_upstream_errors(
    proxy: Proxy,
    stream: bool,
    status: int,
    error: type[openai.APIStatusError],
    kind: str,
    message: str,
    headers: dict[str, str],
) -> None:
    proxy.upstream.push(json_reply(status, wire.openai_error(kind, message), headers))
    async with proxy.openai() as client:
        with pytest.raises(error) as raised:
            await client.chat.completions.create(
                model=wire.CHAT_MODEL, messages=HELLO, stream=stream
            )
    assert raised.value.status_code == status
    assert raised.value.body == wire.openai_error(kind, message)["error"]
    assert message in raised.value.message
    for name, value in headers.items():
        assert raised.value.response.headers[name] == value
    record = await proxy.record()
    assert raised.value.response.headers["x-culm-request-id"] == record.request_id
    expect(
        record,
        status="error",
        status_code=status,
        error=message,
        usage=None,
        partial=False,
        is_stream=stream,
    )


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(("status", "error", "kind", "message", "headers"), ANTHROPIC_ERRORS)
async def test_anthropic_upstream_errors(
    proxy: Proxy,
    stream: bool,
    status: int,
    error: type[anthropic.APIStatusError],
    kind: str,
    message: str,
    headers: dict[str, str],
) -> None:
    proxy.upstream.push(json_reply(status, wire.anthropic_error(kind, message), headers))
    async with proxy.anthropic() as client:
        with pytest.raises(error) as raised:
            await client.messages.create(
                model=wire.CLAUDE, max_tokens=10, messages=ANTHROPIC_HELLO, stream=stream
            )
    assert raised.value.status_code == status
    assert raised.value.body == wire.anthropic_error(kind, message)
    assert message in raised.value.message
    for name, value in headers.items():
        assert raised.value.response.headers[name] == value
    expect(
        await proxy.record(),
        status="error",
        status_code=status,
        error=message,
        usage=None,
        partial=False,
        is_stream=stream,
    )


async def test_an_error_event_in_a_messages_stream(proxy: Proxy) -> None:
    """An ``event: error`` inside a 200 stream (Anthropic's overloaded mid-stream): the client
    gets it as it is, the record is an error with its message and the usage seen before it."""
    error = wire.anthropic_error("overloaded_error", "Overloaded")
    events = [*wire.messages_events()[:2], f"event: error\ndata: {json.dumps(error)}\n\n".encode()]
    proxy.upstream.push(stream_reply(events))
    async with proxy.anthropic() as client:
        with pytest.raises(anthropic.APIStatusError, match="Overloaded"):
            stream = await client.messages.create(
                model=wire.CLAUDE, max_tokens=10, messages=ANTHROPIC_HELLO, stream=True
            )
            async for _ in stream:
                pass
    record = await proxy.record()
    expect(
        record,
        status="error",
        status_code=200,
        error="Overloaded",
        usage=START_USAGE,
        partial=False,
        is_stream=True,
    )


async def test_a_failed_response_in_a_responses_stream(proxy: Proxy) -> None:
    """``response.failed`` ends a 200 Responses stream: an error record with its message and
    the usage the failed response reports."""
    failed = wire.response_object("failed", usage=wire.RESPONSES_USAGE)
    failed["error"] = {"code": "server_error", "message": "the model failed"}
    event = {"type": "response.failed", "sequence_number": 3, "response": failed}
    events = [
        *wire.responses_events()[:3],
        f"event: {event['type']}\ndata: {json.dumps(event)}\n\n".encode(),
    ]
    proxy.upstream.push(stream_reply(events))
    async with httpx2.AsyncClient() as client:
        response = await client.post(
            f"{proxy.openai_url}/responses",
            json={"model": wire.CHAT_MODEL, "input": "hi", "stream": True},
        )
    assert response.status_code == 200
    assert response.content == b"".join(events)
    record = await proxy.record()
    expect(
        record,
        status="error",
        status_code=200,
        error="the model failed",
        usage=wire.RESPONSES_USAGE_MAPPED,
        partial=False,
        is_stream=True,
    )


async def test_each_sdk_retry_gets_its_own_record(proxy: Proxy) -> None:
    fast = {"retry-after-ms": "1"}
    proxy.upstream.push(
        json_reply(500, wire.openai_error("server_error", "boom"), fast),
        json_reply(429, wire.openai_error("rate_limit_exceeded", "slow down"), fast),
        body_reply(wire.chat_completion({"role": "assistant", "content": "ok"})),
    )
    async with proxy.openai(max_retries=2) as client:
        completion = await client.chat.completions.create(model=wire.CHAT_MODEL, messages=HELLO)
    assert completion.choices[0].message.content == "ok"
    retries = [r.headers["x-stainless-retry-count"] for r in proxy.upstream.requests]
    assert retries == ["0", "1", "2"]
    failed, limited, done = await proxy.records(3)
    expect(failed, status="error", status_code=500, error="boom")
    expect(limited, status="error", status_code=429, error="slow down")
    successful(done, wire.CHAT_USAGE_MAPPED)
    assert len({failed.request_id, limited.request_id, done.request_id}) == 3


async def test_anthropic_sdk_retries_too(proxy: Proxy) -> None:
    proxy.upstream.push(
        json_reply(
            529, wire.anthropic_error("overloaded_error", "Overloaded"), {"retry-after-ms": "1"}
        ),
        body_reply(wire.message_object([{"type": "text", "text": "ok"}], wire.MESSAGE_BODY_USAGE)),
    )
    async with proxy.anthropic(max_retries=1) as client:
        await client.messages.create(model=wire.CLAUDE, max_tokens=10, messages=ANTHROPIC_HELLO)
    overloaded, done = await proxy.records(2)
    expect(overloaded, status="error", status_code=529, error="Overloaded")
    successful(done, wire.MESSAGES_USAGE_MAPPED)


# The client goes away


async def test_client_leaves_mid_stream(proxy: Proxy, http: httpx2.AsyncClient) -> None:
    events = wire.messages_events()
    proxy.upstream.push(stream_reply(events[:3], end="stall"))
    body = {"model": wire.CLAUDE, "max_tokens": 10, "messages": HELLO, "stream": True}
    async with raw_stream(http, "POST", "/anthropic/v1/messages", json=body) as (response, chunks):
        assert response.status_code == 200
        await read_at_least(chunks, len(events[0]))
    async with asyncio.timeout(5):
        await proxy.upstream.client_closed.wait()  # the proxy let go of the upstream
    record = await proxy.record()
    expect(
        record,
        status="error",
        status_code=200,
        partial=True,
        usage=START_USAGE,
        is_stream=True,
        request_id=response.headers["x-culm-request-id"],
    )
    assert record.error is not None and "disconnect" in record.error


async def test_client_leaves_a_hidden_usage_chat_stream(
    proxy: Proxy, http: httpx2.AsyncClient
) -> None:
    events = wire.chat_text_events()
    proxy.upstream.push(stream_reply(events[:2], end="stall"))
    body = {"model": wire.CHAT_MODEL, "messages": HELLO, "stream": True}
    async with raw_stream(http, "POST", "/openai/v1/chat/completions", json=body) as (_, chunks):
        assert (await read_at_least(chunks, len(events[0]))).startswith(events[0])
    async with asyncio.timeout(5):
        await proxy.upstream.client_closed.wait()
    record = await proxy.record()
    expect(record, status="error", status_code=200, partial=True, usage=None)
    assert record.error is not None and "disconnect" in record.error


async def test_client_leaves_before_the_answer(proxy: Proxy, http: httpx2.AsyncClient) -> None:
    """Designed: ``partial`` is false (nothing was relayed), the status code is 499."""
    proxy.upstream.push(ProxyReply(never_answer=True))
    body = {"model": wire.CHAT_MODEL, "messages": HELLO}
    request = asyncio.create_task(http.post("/openai/v1/chat/completions", json=body))
    async with asyncio.timeout(5):
        await proxy.upstream.received.wait()
    request.cancel()
    with pytest.raises(asyncio.CancelledError):
        await request
    async with asyncio.timeout(5):
        await proxy.upstream.client_closed.wait()  # the upstream request was abandoned
    record = await proxy.record()
    expect(
        record, status="error", status_code=499, partial=False, usage=None, model=wire.CHAT_MODEL
    )
    assert record.error is not None and "disconnect" in record.error


# Upstream timeouts and failures


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
async def test_upstream_silent_before_answering_is_504(
    make_proxy: ProxyFactory, provider: str
) -> None:
    async with make_proxy(proxy_read_timeout=0.3) as proxy:
        proxy.upstream.push(ProxyReply(never_answer=True))
        if provider == "openai":
            async with proxy.openai() as client:
                with pytest.raises(openai.InternalServerError) as raised:
                    await client.chat.completions.create(model=wire.CHAT_MODEL, messages=HELLO)
            assert raised.value.body == {
                "code": "upstream_timeout",
                "type": "upstream_timeout",
                "param": None,
                "message": raised.value.body["message"],  # type: ignore[index]
            }
            status, response = raised.value.status_code, raised.value.response
        else:
            async with proxy.anthropic() as anthropic_client:
                with pytest.raises(anthropic.InternalServerError) as a_raised:
                    await anthropic_client.messages.create(
                        model=wire.CLAUDE, max_tokens=10, messages=ANTHROPIC_HELLO
                    )
            body = a_raised.value.body
            assert isinstance(body, dict) and body["type"] == "error"
            assert body["error"]["type"] == "upstream_timeout"
            status, response = a_raised.value.status_code, a_raised.value.response
        assert status == 504
        assert "did not answer in time" in response.json()["error"]["message"]
        record = await proxy.record()
        assert response.headers["x-culm-request-id"] == record.request_id
        expect(record, status="timeout", status_code=504, partial=False, usage=None)
        assert record.error is not None and "in time" in record.error
        async with asyncio.timeout(5):
            await proxy.upstream.client_closed.wait()


async def test_upstream_stalls_mid_stream(make_proxy: ProxyFactory) -> None:
    async with make_proxy(proxy_read_timeout=0.3) as proxy:
        proxy.upstream.push(stream_reply(wire.messages_events()[:5], end="stall"))
        got: list[str] = []
        async with proxy.anthropic() as client:
            with pytest.raises((httpx2.HTTPError, anthropic.APIError)):
                stream = await client.messages.create(
                    model=wire.CLAUDE, max_tokens=10, messages=ANTHROPIC_HELLO, stream=True
                )
                async for event in stream:
                    got.append(event.type)
        assert got[0] == "message_start"
        assert "message_stop" not in got
        record = await proxy.record()
        expect(record, status="timeout", status_code=200, partial=True, usage=START_USAGE)
        assert record.error is not None and "stopped sending" in record.error
        async with asyncio.timeout(5):
            await proxy.upstream.client_closed.wait()


async def test_chat_stream_stalls_mid_stream(make_proxy: ProxyFactory) -> None:
    async with make_proxy(proxy_read_timeout=0.3) as proxy:
        proxy.upstream.push(stream_reply(wire.chat_text_events()[:2], end="stall"))
        async with proxy.openai() as client:
            stream = await client.chat.completions.create(
                model=wire.CHAT_MODEL, messages=HELLO, stream=True
            )
            with pytest.raises((httpx2.HTTPError, openai.APIError)):
                async for _ in stream:
                    pass
        expect(await proxy.record(), status="timeout", partial=True, usage=None)


async def test_upstream_cuts_the_stream(proxy: Proxy, http: httpx2.AsyncClient) -> None:
    """The client sees a cut stream too, never one that looks complete."""
    events = wire.responses_events()
    proxy.upstream.push(stream_reply(events[:2], end="cut"))
    body = {"model": wire.CHAT_MODEL, "input": "Hi", "stream": True}
    with pytest.raises(httpx2.RemoteProtocolError):
        await http.post("/openai/v1/responses", json=body)
    record = await proxy.record()
    expect(record, status="error", status_code=200, partial=True, usage=None)
    assert record.error is not None and "broke off" in record.error


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
async def test_upstream_unreachable_is_502(make_proxy: ProxyFactory, provider: str) -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    async with make_proxy(openai_base_url=f"{closed}/v1", anthropic_base_url=closed) as proxy:
        if provider == "openai":
            async with proxy.openai() as client:
                with pytest.raises(openai.InternalServerError) as raised:
                    await client.chat.completions.create(model=wire.CHAT_MODEL, messages=HELLO)
            status, response = raised.value.status_code, raised.value.response
        else:
            async with proxy.anthropic() as anthropic_client:
                with pytest.raises(anthropic.InternalServerError) as a_raised:
                    await anthropic_client.messages.create(
                        model=wire.CLAUDE, max_tokens=10, messages=ANTHROPIC_HELLO
                    )
            status, response = a_raised.value.status_code, a_raised.value.response
        assert status == 502
        error = response.json()["error"]
        assert error["type"] == "upstream_unreachable"
        assert error["message"].startswith(f"cannot reach {provider}")
        record = await proxy.record()
        expect(record, status="error", status_code=502, partial=False, usage=None)
        assert record.error == error["message"]


async def test_misconfigured_upstream_is_502(make_proxy: ProxyFactory) -> None:
    async with (
        make_proxy(openai_base_url="ftp://example.invalid/v1") as proxy,
        httpx2.AsyncClient(base_url=proxy.url) as http,
    ):
        response = await http.post("/openai/v1/chat/completions", json={"model": "m"})
        assert response.status_code == 502
        assert response.json()["error"]["code"] == "upstream_misconfigured"
        expect(await proxy.record(), status="error", status_code=502)


# Credentials

SERVER_OPENAI_KEY = "sk-server-openai-0003"
SERVER_ANTHROPIC_KEY = "sk-ant-server-0004"
CULM_KEY = "culm-secret-0005"
ALL_KEYS = (
    CLIENT_OPENAI_KEY,
    CLIENT_ANTHROPIC_KEY,
    SERVER_OPENAI_KEY,
    SERVER_ANTHROPIC_KEY,
    CULM_KEY,
)


def credentials(proxy: Proxy) -> list[list[tuple[str, str]]]:
    """The credential headers each upstream request carried."""
    return [
        [(n, v) for n, v in r.header_list if n in ("authorization", "x-api-key")]
        for r in proxy.upstream.requests
    ]


def never_upstream(proxy: Proxy, key: str) -> None:
    for request in proxy.upstream.requests:
        assert key not in repr(request.header_list)
        assert key.encode() not in request.body


async def call_both(
    proxy: Proxy, openai_options: dict[str, Any], anthropic_options: dict[str, Any]
) -> None:
    """One Chat Completions call with the OpenAI SDK, one Messages call with Anthropic's."""
    proxy.upstream.push(
        body_reply(wire.chat_completion({"role": "assistant", "content": "ok"})),
        body_reply(wire.message_object([{"type": "text", "text": "ok"}], wire.MESSAGE_BODY_USAGE)),
    )
    async with proxy.openai(**openai_options) as client:
        await client.chat.completions.create(model=wire.CHAT_MODEL, messages=HELLO)
    async with proxy.anthropic(**anthropic_options) as a_client:
        await a_client.messages.create(model=wire.CLAUDE, max_tokens=10, messages=ANTHROPIC_HELLO)
    assert {r.status for r in await proxy.records(2)} == {"success"}


def x_api_key(key: str) -> dict[str, Any]:
    """Anthropic SDK options that send ``key`` as ``x-api-key`` (its ``api_key`` goes as a
    bearer token)."""
    return {"api_key": None, "default_headers": {"x-api-key": key}}


async def test_server_keys_replace_the_clients(make_proxy: ProxyFactory) -> None:
    async with make_proxy(
        openai_api_key=SERVER_OPENAI_KEY, anthropic_api_key=SERVER_ANTHROPIC_KEY
    ) as proxy:
        await call_both(proxy, {}, {})
        assert credentials(proxy) == [
            [("authorization", f"Bearer {SERVER_OPENAI_KEY}")],
            [("x-api-key", SERVER_ANTHROPIC_KEY)],
        ]
        proxy.upstream.requests.clear()
        await call_both(proxy, {}, x_api_key(CLIENT_ANTHROPIC_KEY))
        assert credentials(proxy)[1] == [("x-api-key", SERVER_ANTHROPIC_KEY)]


async def test_without_server_keys_the_clients_go_through(proxy: Proxy) -> None:
    await call_both(proxy, {}, {})
    assert credentials(proxy) == [
        [("authorization", f"Bearer {CLIENT_OPENAI_KEY}")],
        [("authorization", f"Bearer {CLIENT_ANTHROPIC_KEY}")],  # the SDK's way for ``api_key``
    ]
    proxy.upstream.requests.clear()
    await call_both(proxy, {}, x_api_key(CLIENT_ANTHROPIC_KEY))
    assert credentials(proxy)[1] == [("x-api-key", CLIENT_ANTHROPIC_KEY)]


PROXY_ROUTES = [
    ("POST", "/openai/v1/chat/completions"),
    ("POST", "/openai/v1/responses"),
    ("GET", "/openai/v1/models"),
    ("POST", "/anthropic/v1/messages"),
    ("GET", "/anthropic/v1/models"),
]


async def test_culm_key_required(make_proxy: ProxyFactory) -> None:
    refused = [
        {},
        {"authorization": "Bearer wrong"},
        {"x-api-key": "wrong"},
        {"authorization": CULM_KEY},  # no Bearer
        {"x-api-key": f"Bearer {CULM_KEY}"},
        {"authorization": f"Basic {CULM_KEY}"},
        {"x-culm-run-id": "3f0b1c2e-1d2a-4b6c-9e8f-0a1b2c3d4e5f"},  # no key: links no run
    ]
    async with (
        make_proxy(api_key=CULM_KEY) as proxy,
        httpx2.AsyncClient(base_url=proxy.url, trust_env=False) as http,
    ):
        for method, path in PROXY_ROUTES:
            body = b'{"model": "m"}' if method == "POST" else None
            for headers in refused:
                response = await http.request(method, path, content=body, headers=headers)
                assert response.status_code == 401, (path, headers)
                assert response.json()["error"]["code"] == "unauthorized"
        assert proxy.upstream.requests == []
        # Each refusal is metered, as the proxy's other errors are.
        records = await proxy.records(len(PROXY_ROUTES) * len(refused))
        assert {(r.status, r.status_code, r.partial) for r in records} == {("error", 401, False)}
        assert all("missing or wrong API key" in (r.error or "") for r in records)
        assert {r.trace_id for r in records} == {None}
        # ``x-api-key`` is a culm key on the proxy's routes only
        assert (await http.get("/v1/runs", headers={"x-api-key": CULM_KEY})).status_code == 401


KEY_MESSAGE = "missing or wrong API key (send Authorization: Bearer <CULM_API_KEY>)"


async def test_culm_key_refusal_through_the_sdks(make_proxy: ProxyFactory) -> None:
    """In each provider's own error shape, so its SDK reads every field; metered."""
    async with make_proxy(api_key=CULM_KEY, openai_api_key=SERVER_OPENAI_KEY) as proxy:
        async with proxy.openai(api_key="wrong") as client:
            with pytest.raises(openai.AuthenticationError, match="missing or wrong API key") as o:
                await client.chat.completions.create(model=wire.CHAT_MODEL, messages=HELLO)
        assert o.value.body == {
            "message": KEY_MESSAGE,
            "type": "unauthorized",
            "param": None,
            "code": "unauthorized",
        }
        assert (o.value.code, o.value.type, o.value.param) == ("unauthorized", "unauthorized", None)
        async with proxy.anthropic(api_key="wrong") as a_client:
            with pytest.raises(
                anthropic.AuthenticationError, match="missing or wrong API key"
            ) as a:
                await a_client.messages.create(
                    model=wire.CLAUDE, max_tokens=10, messages=ANTHROPIC_HELLO
                )
        body = a.value.body
        assert isinstance(body, dict) and body["type"] == "error"
        assert body["error"]["type"] == "unauthorized"
        assert body["error"]["message"] == KEY_MESSAGE
        assert proxy.upstream.requests == []
        chat, messages = await proxy.records(2)
        for record, endpoint in (
            (chat, "openai.chat_completions"),
            (messages, "anthropic.messages"),
        ):
            expect(record, endpoint=endpoint, status="error", status_code=401, error=KEY_MESSAGE)
        assert o.value.response.headers["x-culm-request-id"] == chat.request_id


async def test_culm_key_by_bearer_or_x_api_key_with_server_keys(make_proxy: ProxyFactory) -> None:
    async with make_proxy(
        api_key=CULM_KEY, openai_api_key=SERVER_OPENAI_KEY, anthropic_api_key=SERVER_ANTHROPIC_KEY
    ) as proxy:
        expected = [
            [("authorization", f"Bearer {SERVER_OPENAI_KEY}")],
            [("x-api-key", SERVER_ANTHROPIC_KEY)],
        ]
        await call_both(proxy, {"api_key": CULM_KEY}, {"api_key": CULM_KEY})  # bearer
        assert credentials(proxy) == expected
        proxy.upstream.requests.clear()
        openai_by_header = {"api_key": "unused", "default_headers": {"x-api-key": CULM_KEY}}
        await call_both(proxy, openai_by_header, x_api_key(CULM_KEY))  # x-api-key
        assert credentials(proxy) == expected
        never_upstream(proxy, CULM_KEY)


async def test_culm_key_in_one_header_provider_key_in_the_other(make_proxy: ProxyFactory) -> None:
    async with make_proxy(api_key=CULM_KEY) as proxy:
        await call_both(
            proxy,
            {"default_headers": {"x-api-key": CULM_KEY}},
            {"default_headers": {"x-api-key": CULM_KEY}},
        )
        assert credentials(proxy) == [
            [("authorization", f"Bearer {CLIENT_OPENAI_KEY}")],
            [("authorization", f"Bearer {CLIENT_ANTHROPIC_KEY}")],
        ]
        proxy.upstream.requests.clear()
        await call_both(
            proxy,
            {"api_key": CULM_KEY, "default_headers": {"x-api-key": CLIENT_OPENAI_KEY}},
            {"api_key": CULM_KEY, "default_headers": {"x-api-key": CLIENT_ANTHROPIC_KEY}},
        )
        assert credentials(proxy) == [
            [("x-api-key", CLIENT_OPENAI_KEY)],
            [("x-api-key", CLIENT_ANTHROPIC_KEY)],
        ]
        never_upstream(proxy, CULM_KEY)


async def test_culm_key_with_a_lower_case_bearer_scheme_stays(make_proxy: ProxyFactory) -> None:
    async with (
        make_proxy(api_key=CULM_KEY) as proxy,
        httpx2.AsyncClient(base_url=proxy.url, trust_env=False) as http,
    ):
        proxy.upstream.push(body_reply({"data": []}))
        headers = {"x-api-key": CULM_KEY, "authorization": f"bearer {CULM_KEY}"}
        assert (await http.get("/openai/v1/models", headers=headers)).status_code == 200
        assert credentials(proxy) == [[]]
        never_upstream(proxy, CULM_KEY)


async def test_keys_are_not_logged_nor_stored(
    make_proxy: ProxyFactory,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    """Even when the provider quotes the key it refused, in its error message."""
    caplog.set_level(logging.DEBUG)
    refused_client = f"Incorrect API key provided: {CLIENT_OPENAI_KEY}."
    refused_server = f"invalid x-api-key {SERVER_ANTHROPIC_KEY}"
    async with make_proxy(api_key=CULM_KEY, anthropic_api_key=SERVER_ANTHROPIC_KEY) as proxy:
        proxy.upstream.push(
            json_reply(401, wire.openai_error("invalid_api_key", refused_client)),
            body_reply(
                wire.message_object([{"type": "text", "text": "ok"}], wire.MESSAGE_BODY_USAGE)
            ),
            json_reply(401, wire.anthropic_error("authentication_error", refused_server)),
            json_reply(403, wire.openai_error("forbidden", f"not for {CULM_KEY}")),
            stream_reply(wire.chat_text_events()),
        )
        async with proxy.openai(
            api_key=CLIENT_OPENAI_KEY, default_headers={"x-api-key": CULM_KEY}
        ) as client:
            with pytest.raises(openai.AuthenticationError):
                await client.chat.completions.create(model=wire.CHAT_MODEL, messages=HELLO)
        async with proxy.anthropic(api_key=CULM_KEY) as a_client:
            await a_client.messages.create(
                model=wire.CLAUDE, max_tokens=10, messages=ANTHROPIC_HELLO
            )
            with pytest.raises(anthropic.AuthenticationError):
                await a_client.messages.create(
                    model=wire.CLAUDE, max_tokens=10, messages=ANTHROPIC_HELLO
                )
        async with proxy.openai(api_key=CULM_KEY) as client:
            with pytest.raises(openai.PermissionDeniedError):
                await client.models.list()
            stream = await client.chat.completions.create(
                model=wire.CHAT_MODEL,
                messages=HELLO,
                stream=True,
                extra_headers={
                    "authorization": f"Bearer {CULM_KEY}",
                    "x-api-key": CLIENT_OPENAI_KEY,
                },
            )
            async for _ in stream:
                pass
        records = await proxy.records(5)
        never_upstream(proxy, CULM_KEY)
        assert [r.status for r in records] == ["error", "success", "error", "error", "success"]
        assert [r.error for r in records] == [
            "Incorrect API key provided: [redacted].",
            None,
            "invalid x-api-key [redacted]",
            "not for [redacted]",
            None,
        ]
    logged = caplog.text + "".join(capsys.readouterr())
    assert "proxied request failed" in logged
    stored = b"".join(path.read_bytes() for path in (tmp_path / "home").glob("culm.db*"))
    assert b"Incorrect API key provided: [redacted]." in stored
    for key in ALL_KEYS:
        assert key not in logged
        assert key.encode() not in stored


# Hop-by-hop headers


async def test_hop_by_hop_request_headers_stay(proxy: Proxy, http: httpx2.AsyncClient) -> None:
    proxy.upstream.push(body_reply(wire.chat_completion({"role": "assistant", "content": "ok"})))
    headers = {
        "connection": "keep-alive, X-Foo",
        "x-foo": "1",
        "te": "trailers",
        "keep-alive": "timeout=5",
        "proxy-authorization": "Basic c2VjcmV0",
        "proxy-connection": "keep-alive",
        "trailer": "x-checksum",
        "accept-encoding": "gzip, br",
        "x-culm-run-id": "run-1",
        "x-end-to-end": "kept",
    }
    response = await http.post(
        "/openai/v1/chat/completions", json={"model": "m", "messages": []}, headers=headers
    )
    assert response.status_code == 200
    (request,) = proxy.upstream.requests
    sent = {name for name, _ in request.header_list}
    dropped = {"connection", "x-foo", "te", "keep-alive", "proxy-authorization"}
    dropped |= {"proxy-connection", "trailer", "x-culm-run-id"}
    assert not sent & dropped
    assert request.headers["x-end-to-end"] == "kept"
    assert request.headers["accept-encoding"] == "identity"
    assert [name for name, _ in request.header_list].count("host") == 1
    await proxy.record()


async def test_hop_by_hop_response_headers_stay(proxy: Proxy, http: httpx2.AsyncClient) -> None:
    extra = [
        ("connection", "x-bar"),
        ("x-bar", "1"),
        ("keep-alive", "timeout=5"),
        ("proxy-authenticate", "Basic"),
        ("trailer", "x-checksum"),
        ("server", "upstream/1.0"),
        ("x-request-id", "req_123"),
        ("set-cookie", "a=1"),
        ("set-cookie", "b=2"),
    ]
    proxy.upstream.push(stream_reply(wire.responses_events(), extra_headers=extra))
    response = await http.post("/openai/v1/responses", json={"model": "m", "stream": True})
    names = [name.lower() for name, _ in response.headers.raw]
    for name in ("x-bar", "keep-alive", "proxy-authenticate", "trailer"):
        assert name.encode() not in names
    assert response.headers.get("connection") in (None, "keep-alive")
    assert response.headers["server"] == "uvicorn"  # culm's own, once
    assert response.headers["x-request-id"] == "req_123"
    assert response.headers.get_list("set-cookie") == ["a=1", "b=2"]
    assert response.headers["content-type"] == "text/event-stream"
    record = await proxy.record()
    assert response.headers["x-culm-request-id"] == record.request_id
    assert response.content == b"".join(wire.responses_events())


# Byte for byte

ODD_BODY = (
    b'{ "stream" : true ,\n\t"z_last_first": [1, 2.50, 1e3],\n  "model":"m",'
    b' "input" : "caf\\u00e9 \xe2\x98\x83 \\ud83d\\ude00",  "dup": 1, "dup": 2 }'
)


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/openai/v1/chat/completions", ODD_BODY.replace(b'"stream" : true', b'"stream" : false')),
        (
            "/openai/v1/chat/completions",
            ODD_BODY.replace(b"true ,", b'true , "stream_options" : {"include_usage" : true},'),
        ),
        ("/openai/v1/responses", ODD_BODY),
        ("/anthropic/v1/messages", ODD_BODY),
    ],
)
async def test_request_body_goes_upstream_unchanged(
    proxy: Proxy, http: httpx2.AsyncClient, path: str, body: bytes
) -> None:
    proxy.upstream.push(body_reply({}))
    response = await http.post(path, content=body, headers={"content-type": "application/json"})
    assert response.status_code == 200
    assert proxy.upstream.requests[0].body == body
    await proxy.record()


async def test_usage_is_spliced_into_an_odd_chat_stream_body(
    proxy: Proxy, http: httpx2.AsyncClient
) -> None:
    proxy.upstream.push(stream_reply(wire.chat_text_events()))
    body = b"  " + ODD_BODY
    await http.post("/openai/v1/chat/completions", content=body)
    assert proxy.upstream.requests[0].body == (
        b'  {"stream_options":{"include_usage":true},' + ODD_BODY[1:]
    )
    await proxy.record()


@pytest.mark.parametrize("body", [b"not json", b"[1, 2]", b""])
async def test_a_body_that_is_not_an_object_goes_upstream_as_it_is(
    proxy: Proxy, http: httpx2.AsyncClient, body: bytes
) -> None:
    proxy.upstream.push(json_reply(400, wire.openai_error("invalid_request_error", "bad body")))
    response = await http.post("/openai/v1/chat/completions", content=body)
    assert (response.status_code, response.json()["error"]["message"]) == (400, "bad body")
    assert proxy.upstream.requests[0].body == body
    expect(await proxy.record(), status="error", status_code=400, model="", is_stream=False)


@pytest.mark.parametrize(
    ("path", "reply", "expected"),
    [
        (
            "/openai/v1/chat/completions",
            ProxyReply(
                headers={"content-type": "application/json"},
                chunks=wire.rechunk(
                    [json.dumps(wire.chat_completion({"content": "\u00e9"}), indent=3).encode()], 9
                ),
                framing="length",
            ),
            None,
        ),
        ("/openai/v1/responses", stream_reply(wire.rechunk(wire.responses_events(), 5)), None),
        ("/anthropic/v1/messages", stream_reply(wire.rechunk(wire.messages_events(), 5)), None),
        (
            "/openai/v1/chat/completions",
            stream_reply(wire.rechunk(wire.chat_tool_events(), 5)),
            b"".join(e for e in wire.chat_tool_events() if b'"choices": []' not in e),
        ),
        (
            "/anthropic/v1/messages",
            ProxyReply(
                headers={"content-type": "application/json"},
                chunks=[b'{"usage": {"input_tokens": 1}', b', "id": "msg"}'],
                end="close",
            ),
            None,
        ),
    ],
    ids=[
        "chat-json",
        "responses-stream",
        "messages-stream",
        "chat-stream-usage-hidden",
        "json-until-close",
    ],
)
async def test_response_bytes_reach_the_client_unchanged(
    proxy: Proxy, http: httpx2.AsyncClient, path: str, reply: ProxyReply, expected: bytes | None
) -> None:
    proxy.upstream.push(reply)
    streaming = reply.headers["content-type"] == "text/event-stream"
    body = {"model": "m", "stream": streaming}
    async with raw_stream(http, "POST", path, json=body) as (response, chunks):
        received = b"".join([chunk async for chunk in chunks])
    sent = b"".join(reply.chunks)
    assert received == (sent if expected is None else expected)
    if reply.framing == "length":
        assert response.headers["content-length"] == str(len(sent))
    assert (await proxy.record()).status == "success"


async def test_a_chat_stream_with_usage_asked_is_unchanged(
    proxy: Proxy, http: httpx2.AsyncClient
) -> None:
    events = wire.chat_tool_events()
    proxy.upstream.push(stream_reply(wire.rechunk(events, 3)))
    body = {"model": "m", "stream": True, "stream_options": {"include_usage": True}}
    response = await http.post("/openai/v1/chat/completions", json=body)
    assert response.content == b"".join(events)


# Streaming without buffering


@pytest.mark.parametrize(
    ("path", "events"),
    [
        ("/openai/v1/chat/completions", wire.chat_text_events()),
        ("/openai/v1/responses", wire.responses_events()),
        ("/anthropic/v1/messages", wire.messages_events()),
    ],
)
async def test_first_chunk_arrives_while_the_upstream_holds_the_rest(
    proxy: Proxy, http: httpx2.AsyncClient, path: str, events: list[bytes]
) -> None:
    resume = asyncio.Event()
    proxy.upstream.push(stream_reply(events, pause_after=1, resume=resume))
    body = {"model": "m", "stream": True}
    async with raw_stream(http, "POST", path, json=body) as (response, chunks):
        first = await read_at_least(chunks, len(events[0]))
        assert first == events[0]
        assert not resume.is_set()
        resume.set()
        rest = b"".join([chunk async for chunk in chunks])
    assert response.status_code == 200
    assert first + rest == b"".join(e for e in events if b'"choices": []' not in e)
    assert (await proxy.record()).status == "success"


# Trace ids


async def test_run_id_header_sets_the_trace_id(proxy: Proxy, http: httpx2.AsyncClient) -> None:
    proxy.upstream.push(body_reply({"data": []}))
    await http.get("/openai/v1/models", headers={"x-culm-run-id": "run-77"})
    assert "x-culm-run-id" not in proxy.upstream.requests[0].headers
    expect(await proxy.record(), trace_id="run-77")


async def test_traceparent_sets_the_trace_id(proxy: Proxy, http: httpx2.AsyncClient) -> None:
    parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    proxy.upstream.push(body_reply({"data": []}))
    await http.get("/anthropic/v1/models", headers={"traceparent": parent})
    assert proxy.upstream.requests[0].headers["traceparent"] == parent
    expect(await proxy.record(), trace_id="0af76519-16cd-43dd-8448-eb211c80319c")


def proxy_call_command(url: str, header: str, variable: str) -> str:
    """A bash command: Python's urllib POSTs a chat completion to the proxy with ``header``
    set from the environment ``variable``, and prints the answer."""
    code = (
        "import json, os, urllib.request as u\n"
        f"body = json.dumps({{'model': 'gpt-4o', 'messages': []}}).encode()\n"
        f"request = u.Request({url!r}, data=body, headers={{{header!r}: os.environ[{variable!r}],"
        " 'content-type': 'application/json'})\n"
        "answer = u.build_opener(u.ProxyHandler({})).open(request, timeout=20).read()\n"
        "print(json.loads(answer)['choices'][0]['message']['content'])\n"
    )
    return f"{shlex.quote(sys.executable)} -c {shlex.quote(code)}"


@pytest.mark.parametrize(
    ("header", "variable"), [("x-culm-run-id", "CULM_RUN_ID"), ("traceparent", "TRACEPARENT")]
)
async def test_a_runs_tool_calls_through_the_proxy_are_in_its_metrics(
    proxy: Proxy, http: httpx2.AsyncClient, header: str, variable: str
) -> None:
    proxy.upstream.push(body_reply(wire.chat_completion({"role": "assistant", "content": "pong"})))
    command = proxy_call_command(f"{proxy.openai_url}/chat/completions", header, variable)
    call = {"tool_call": {"name": "bash", "arguments": {"command": command}}}
    proxy.server.engine.scripts.register("proxied", {"turns": [[call], [{"text": "done"}]]})
    created = await http.post(
        "/v1/runs", json={"message": "go", "model": "scripted:proxied", "tools": ["bash"]}
    )
    run = created.json()
    done = (await http.get(f"/v1/runs/{run['run_id']}/wait", params={"timeout": 20})).json()
    assert done["status"] == "completed"
    messages = (await http.get(f"/v1/sessions/{run['session_id']}/messages")).json()["messages"]
    assert any("pong" in json.dumps(m) for m in messages if m.get("role") == "tool")

    record = await proxy.record()
    successful(record, wire.CHAT_USAGE_MAPPED, trace_id=run["run_id"])
    listed = await http.get("/v1/metrics/forward/requests", params={"trace_id": run["run_id"]})
    assert [r["request_id"] for r in listed.json()["requests"]] == [record.request_id]
    other = await http.get("/v1/metrics/forward/requests", params={"trace_id": "other"})
    assert other.json()["requests"] == []
    session = (await http.get(f"/v1/metrics/sessions/{run['session_id']}")).json()
    assert [r["request_id"] for r in session["forward_requests"]] == [record.request_id]
    assert session["forward_tokens"] == wire.CHAT_USAGE_MAPPED.model_dump()


# Request body limits


async def test_a_body_over_the_api_limit_is_forwarded(
    proxy: Proxy, http: httpx2.AsyncClient
) -> None:
    big: dict[str, Any] = {
        "model": "m",
        "messages": [{"role": "user", "content": "x" * (1024 * 1024 + 10)}],
    }
    refused = await http.post("/v1/runs", json={"message": big["messages"][0]["content"]})
    assert refused.status_code == 413  # the API's own limit still holds elsewhere
    proxy.upstream.push(body_reply(wire.chat_completion({"content": "ok"})))
    response = await http.post("/openai/v1/chat/completions", json=big)
    assert response.status_code == 200
    assert proxy.upstream.requests[0].json() == big
    successful(await proxy.record(), wire.CHAT_USAGE_MAPPED)


async def test_a_body_over_the_proxy_limit_is_413(
    make_proxy: ProxyFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    async with (
        make_proxy(proxy_max_request_bytes=4096) as proxy,
        httpx2.AsyncClient(base_url=proxy.url, trust_env=False) as http,
    ):
        big = {"model": "m", "input": "x" * 4096}
        response = await http.post("/openai/v1/responses", json=big)
        assert response.status_code == 413
        assert response.json() == {
            "error": {
                "message": "request body over 4096 bytes",
                "type": "body_too_large",
                "param": None,
                "code": "body_too_large",
            }
        }

        async def chunks() -> AsyncIterator[bytes]:  # no content-length: counted as it streams
            for _ in range(10):
                yield b"x" * 512

        streamed = await http.post("/anthropic/v1/messages", content=chunks())
        assert streamed.status_code == 413
        assert streamed.json()["type"] == "error"
        assert streamed.json()["error"]["type"] == "body_too_large"
        assert proxy.upstream.requests == []
        records = await proxy.records(2)
        assert [(r.endpoint, r.status, r.status_code) for r in records] == [
            ("openai.responses", "error", 413),
            ("anthropic.messages", "error", 413),
        ]
        assert response.headers["x-culm-request-id"] == records[0].request_id
        with pytest.raises(openai.APIStatusError, match="request body over 4096 bytes") as raised:
            async with proxy.openai() as client:
                await client.responses.create(model=wire.CHAT_MODEL, input="x" * 4096)
        assert (raised.value.status_code, raised.value.code) == (413, "body_too_large")
        with pytest.raises(anthropic.APIStatusError, match="request body over 4096") as a_raised:
            async with proxy.anthropic() as a_client:
                await a_client.messages.create(
                    model=wire.CLAUDE,
                    max_tokens=10,
                    messages=[{"role": "user", "content": "x" * 4096}],
                )
        assert a_raised.value.status_code == 413
        assert len(await proxy.records(2)) == 2
        proxy.upstream.push(body_reply({}))
        assert (await http.post("/openai/v1/responses", json={"model": "m"})).status_code == 200
        await proxy.record()
    assert "Exception in ASGI application" not in capsys.readouterr().err


# Many at once


async def test_concurrent_streams_each_get_their_record(proxy: Proxy) -> None:
    count = 12
    proxy.upstream.push(
        *(stream_reply(wire.rechunk(wire.chat_tool_events(), 9)) for _ in range(count))
    )

    async def one(client: openai.AsyncOpenAI, index: int) -> str:
        stream = await client.chat.completions.create(
            model=f"model-{index}", messages=HELLO, stream=True
        )
        arguments = ""
        async for chunk in stream:
            for call in chunk.choices[0].delta.tool_calls or []:
                arguments += call.function.arguments or "" if call.function else ""
        return arguments

    async with proxy.openai() as client:
        results = await asyncio.gather(*(one(client, i) for i in range(count)))
    assert set(results) == {'{"city": "Paris"}{"tz": "CET"}'}
    records = await proxy.records(count)
    assert {r.model for r in records} == {f"model-{i}" for i in range(count)}
    for record in records:
        successful(record, wire.CHAT_USAGE_MAPPED, is_stream=True)
