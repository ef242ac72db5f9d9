"""The Chat Completions adapter against a real HTTP server speaking the wire format."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from typing import Any

import httpx2
import pytest

from culm.domain.models import AssistantMessage, ToolCall, ToolResultMessage, Usage, UserMessage
from culm.errors import (
    ModelAuthError,
    ModelConnectionError,
    ModelHTTPError,
    ModelRequestError,
)
from culm.providers.base import (
    Finish,
    Model,
    ModelRequest,
    ReasoningDelta,
    TextDelta,
    ToolSpec,
    UsageReport,
)
from culm.providers.catalog import provider_config
from culm.providers.openai import OpenAIChatModel
from culm.providers.remote import build_http_model
from culm.settings import Settings
from tests.providers.conftest import assemble_tool_calls, collect
from tests.providers.fakes import FakeUpstream, Reply, json_reply, openai_events

HELLO = ModelRequest(system_prompt="Be brief.", messages=[UserMessage(content="Hi")])


def chunk(delta: dict[str, Any] | None = None, finish: str | None = None) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "model": "gpt-4o",
        "choices": [{"index": 0, "delta": delta or {}, "finish_reason": finish}],
    }


def usage_chunk(**usage: Any) -> dict[str, Any]:
    return {"id": "chatcmpl-1", "object": "chat.completion.chunk", "choices": [], "usage": usage}


def stream_reply(*chunks: dict[str, Any] | str, end: Any = "complete") -> Reply:
    return Reply(chunks=openai_events(*chunks), end=end)


@pytest.fixture
def model(upstream_settings: Settings, http_client: httpx2.AsyncClient) -> Model:
    return build_http_model("openai", "gpt-4o", upstream_settings, http_client)


async def test_text_stream_request_and_usage(upstream: FakeUpstream, model: Model) -> None:
    upstream.push(
        stream_reply(
            chunk({"role": "assistant", "content": ""}),
            chunk({"content": "Hel"}),
            chunk({"content": "lo"}),
            chunk({}, finish="stop"),
            usage_chunk(
                prompt_tokens=20,
                completion_tokens=5,
                total_tokens=25,
                prompt_tokens_details={"cached_tokens": 12},
                completion_tokens_details={"reasoning_tokens": 3},
            ),
            "[DONE]",
        )
    )
    parts = await collect(model.stream(HELLO))

    assert parts == [
        TextDelta(text="Hel"),
        TextDelta(text="lo"),
        Finish(reason="stop"),
        UsageReport(
            usage=Usage(
                prompt_tokens=20,
                completion_tokens=5,
                total_tokens=25,
                cache_read_tokens=12,
                reasoning_tokens=3,
            )
        ),
    ]
    [request] = upstream.requests
    assert (request.method, request.path) == ("POST", "/v1/chat/completions")
    assert request.headers["authorization"] == "Bearer sk-test"
    assert request.json() == {
        "model": "gpt-4o",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
        ],
        "stream": True,
        "stream_options": {"include_usage": True},
    }


async def test_tool_calls_split_across_chunks(upstream: FakeUpstream, model: Model) -> None:
    def call(index: int, **fields: Any) -> dict[str, Any]:
        function = {k: v for k, v in fields.items() if k in ("name", "arguments")}
        piece = {"index": index, "function": function}
        if "id" in fields:
            piece |= {"id": fields["id"], "type": "function"}
        return chunk({"tool_calls": [piece]})

    upstream.push(
        stream_reply(
            chunk({"role": "assistant", "content": None}),
            call(0, id="call_a", name="read_file", arguments=""),
            call(0, arguments='{"pa'),
            {"id": "chatcmpl-1", "choices": []},
            chunk({}),
            call(0, arguments='th": "a.txt"}'),
            call(1, id="call_b", name="bash", arguments='{"command":'),
            call(1, arguments=' "ls"}'),
            chunk({}, finish="tool_calls"),
            "[DONE]",
        )
    )
    parts = await collect(model.stream(HELLO))

    assert assemble_tool_calls(parts) == {
        0: {"id": "call_a", "name": "read_file", "arguments": '{"path": "a.txt"}'},
        1: {"id": "call_b", "name": "bash", "arguments": '{"command": "ls"}'},
    }
    assert parts[-1] == Finish(reason="tool_calls")
    assert not [p for p in parts if isinstance(p, TextDelta)]


async def test_reasoning_deltas_of_compatible_servers(upstream: FakeUpstream, model: Model) -> None:
    upstream.push(
        stream_reply(
            chunk({"reasoning_content": "Think", "content": None}),
            chunk({"reasoning": "ing."}),
            chunk({"content": "Answer"}, finish="stop"),
            "[DONE]",
        )
    )
    parts = await collect(model.stream(HELLO))

    assert parts == [
        ReasoningDelta(text="Think"),
        ReasoningDelta(text="ing."),
        TextDelta(text="Answer"),
        Finish(reason="stop"),
    ]


async def test_conversation_and_tools_are_converted(upstream: FakeUpstream, model: Model) -> None:
    upstream.push(stream_reply(chunk({"content": "ok"}, finish="stop"), "[DONE]"))
    request = ModelRequest(
        system_prompt=None,
        messages=[
            UserMessage(content="List files"),
            AssistantMessage(
                reasoning="not sent back",
                tool_calls=(ToolCall(id="c1", name="bash", arguments='{"command": "ls"}'),),
            ),
            ToolResultMessage(tool_call_id="c1", tool_name="bash", content="a.txt"),
            AssistantMessage(content="There is a.txt"),
        ],
        tools=[ToolSpec(name="bash", description="Run a command", parameters={"type": "object"})],
        max_output_tokens=100,
    )
    await collect(model.stream(request))

    body = upstream.requests[0].json()
    assert body["messages"] == [
        {"role": "user", "content": "List files"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "c1",
                    "type": "function",
                    "function": {"name": "bash", "arguments": '{"command": "ls"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "a.txt"},
        {"role": "assistant", "content": "There is a.txt"},
    ]
    assert body["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "bash",
                "description": "Run a command",
                "parameters": {"type": "object"},
            },
        }
    ]
    # A compatible server gets ``max_tokens``; the public API ``max_completion_tokens``.
    assert body["max_tokens"] == 100
    assert "max_completion_tokens" not in body


def test_public_api_gets_max_completion_tokens(
    http_client: httpx2.AsyncClient, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("CULM_HOME", str(tmp_path))
    config = provider_config("openai", Settings(openai_api_key="sk-x"))
    model = OpenAIChatModel(model="o3", config=config, client=http_client)
    body = model.request_body(ModelRequest(system_prompt=None, messages=[], max_output_tokens=9))
    assert body["max_completion_tokens"] == 9
    assert "max_tokens" not in body


async def test_no_authorization_header_without_a_key(
    upstream: FakeUpstream, http_client: httpx2.AsyncClient, upstream_settings: Settings
) -> None:
    local = upstream_settings.model_copy(update={"openai_api_key": None})
    model = build_http_model("openai", "llama3", local, http_client)
    upstream.push(stream_reply(chunk({"content": "hi"}, finish="stop"), "[DONE]"))
    await collect(model.stream(HELLO))
    assert "authorization" not in upstream.requests[0].headers


@pytest.mark.parametrize(
    ("status", "error_type", "words"),
    [
        (401, ModelAuthError, ["OPENAI_API_KEY", "rejected"]),
        (403, ModelAuthError, ["OPENAI_API_KEY"]),
        (400, ModelRequestError, []),
        (404, ModelRequestError, []),
        (500, ModelHTTPError, []),
    ],
)
async def test_error_responses(
    upstream: FakeUpstream,
    model: Model,
    status: int,
    error_type: type[ModelHTTPError],
    words: list[str],
) -> None:
    message = f"upstream says no ({status})"
    upstream.push(json_reply(status, {"error": {"message": message, "type": "x"}}))
    with pytest.raises(error_type) as caught:
        await collect(model.stream(HELLO))
    assert type(caught.value) is error_type
    assert caught.value.status == status
    assert caught.value.retryable is (status >= 500)
    for word in ["openai", str(status), message, *words]:
        assert word in str(caught.value)


async def test_429_carries_retry_after(upstream: FakeUpstream, model: Model) -> None:
    body = {"error": {"message": "Rate limit reached", "code": "rate_limit_exceeded"}}
    upstream.push(
        json_reply(429, body, {"retry-after": "7"}),
        json_reply(429, body, {"retry-after": "7", "retry-after-ms": "1500"}),
    )
    for expected in (7.0, 1.5):
        with pytest.raises(ModelHTTPError) as caught:
            await collect(model.stream(HELLO))
        assert (caught.value.status, caught.value.retry_after) == (429, expected)
        assert caught.value.retryable
        assert "Rate limit reached" in str(caught.value)


async def test_error_inside_the_stream(upstream: FakeUpstream, model: Model) -> None:
    upstream.push(
        stream_reply(
            chunk({"content": "par"}),
            {"error": {"message": "The server had an error", "type": "server_error"}},
        )
    )
    parts: list[Any] = []
    with pytest.raises(ModelHTTPError, match="The server had an error") as caught:
        async for part in model.stream(HELLO):
            parts.append(part)
    assert parts == [TextDelta(text="par")]
    assert caught.value.status == 500 and caught.value.retryable


async def test_json_instead_of_a_stream_is_an_error(upstream: FakeUpstream, model: Model) -> None:
    upstream.push(json_reply(200, {"error": {"message": "model is loading", "code": 503}}))
    with pytest.raises(ModelHTTPError, match="model is loading") as caught:
        await collect(model.stream(HELLO))
    assert caught.value.status == 503


async def test_connection_cut_mid_body(upstream: FakeUpstream, model: Model) -> None:
    upstream.push(stream_reply(chunk({"content": "Hel"}), chunk({"content": "lo"}), end="cut"))
    parts: list[Any] = []
    with pytest.raises(ModelConnectionError, match="openai"):
        async for part in model.stream(HELLO):
            parts.append(part)
    assert parts == [TextDelta(text="Hel"), TextDelta(text="lo")]


async def test_stream_ending_without_done_or_finish(upstream: FakeUpstream, model: Model) -> None:
    upstream.push(stream_reply(chunk({"content": "Hel"}), end="close"))
    with pytest.raises(ModelConnectionError, match="stream ended before completion"):
        await collect(model.stream(HELLO))


async def test_finish_reason_without_done_is_complete(upstream: FakeUpstream, model: Model) -> None:
    upstream.push(stream_reply(chunk({"content": "Hi"}, finish="stop"), end="close"))
    assert await collect(model.stream(HELLO)) == [TextDelta(text="Hi"), Finish(reason="stop")]


async def test_malformed_data_is_a_connection_error(upstream: FakeUpstream, model: Model) -> None:
    upstream.push(Reply(chunks=[b'data: {"choices": [\n\n']))
    with pytest.raises(ModelConnectionError, match="malformed"):
        await collect(model.stream(HELLO))


async def test_half_an_emoji_per_chunk_is_text(upstream: FakeUpstream, model: Model) -> None:
    """A server may split a surrogate pair between two chunks (each a lone surrogate escape,
    which some JSON parsers refuse): each piece is the text the server sent."""
    halves = [
        b'data: {"choices": [{"index": 0, "delta": {"content": "\\ud83c"}}]}\n\n',
        b'data: {"choices": [{"index": 0, "delta": {"content": "\\udf89"}}]}\n\n',
        b'data: {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}\n\n',
    ]
    upstream.push(Reply(chunks=halves))
    assert await collect(model.stream(HELLO)) == [
        TextDelta(text="\ud83c"),
        TextDelta(text="\udf89"),
        Finish(reason="stop"),
    ]


async def test_connection_refused(
    http_client: httpx2.AsyncClient, upstream_settings: Settings
) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    closed = upstream_settings.model_copy(update={"openai_base_url": f"http://127.0.0.1:{port}/v1"})
    model = build_http_model("openai", "gpt-4o", closed, http_client)
    with pytest.raises(ModelConnectionError, match=f"cannot connect to openai at .*:{port}"):
        await collect(model.stream(HELLO))


async def test_connection_is_reused_after_done(upstream: FakeUpstream, model: Model) -> None:
    for _ in range(3):
        upstream.push(stream_reply(chunk({"content": "x"}, finish="stop"), "[DONE]"))
        await collect(model.stream(HELLO))
    assert len(upstream.requests) == 3
    assert upstream.connections == 1


async def test_stalled_stream_can_be_cancelled(upstream: FakeUpstream, model: Model) -> None:
    upstream.push(stream_reply(chunk({"content": "Hel"}), end="stall"))
    parts = model.stream(HELLO)
    assert await anext(parts) == TextDelta(text="Hel")
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.2):
            await anext(parts)
    # The cancelled generator closed its response: the server sees the connection go.
    async with asyncio.timeout(5):
        await upstream.client_closed.wait()


async def test_closing_the_generator_early_closes_the_response(
    upstream: FakeUpstream, model: Model
) -> None:
    upstream.push(stream_reply(chunk({"content": "Hel"}), end="stall"))
    parts = model.stream(HELLO)
    assert await anext(parts) == TextDelta(text="Hel")
    await parts.aclose()  # type: ignore[attr-defined]
    async with asyncio.timeout(5):
        await upstream.client_closed.wait()


async def test_redirects_are_errors_that_say_where(upstream: FakeUpstream, model: Model) -> None:
    location = "https://example.invalid/v1/chat/completions"
    upstream.push(Reply(status=307, headers={"location": location}))
    with pytest.raises(ModelHTTPError, match=f"HTTP 307.*redirected to {location}"):
        await collect(model.stream(HELLO))
