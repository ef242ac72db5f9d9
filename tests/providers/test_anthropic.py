"""The Messages adapter against a real HTTP server speaking the wire format."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import httpx2
import pytest

from culm.domain.models import AssistantMessage, ToolCall, ToolResultMessage, Usage, UserMessage
from culm.errors import ModelAuthError, ModelConnectionError, ModelHTTPError, ModelRequestError
from culm.providers.base import (
    Finish,
    Model,
    ModelRequest,
    ReasoningDelta,
    TextDelta,
    ToolCallDelta,
    ToolSpec,
    UsageReport,
)
from culm.providers.remote import build_http_model
from culm.settings import Settings
from tests.providers.conftest import assemble_tool_calls, collect
from tests.providers.fakes import FakeUpstream, Reply, anthropic_events, json_reply

HELLO = ModelRequest(system_prompt="Be brief.", messages=[UserMessage(content="Hi")])


def message_start(**usage: int) -> dict[str, Any]:
    message = {"id": "msg_1", "type": "message", "role": "assistant", "content": [], "usage": usage}
    return {"type": "message_start", "message": message}


def block_start(index: int, block: dict[str, Any]) -> dict[str, Any]:
    return {"type": "content_block_start", "index": index, "content_block": block}


def delta(index: int, **fields: Any) -> dict[str, Any]:
    return {"type": "content_block_delta", "index": index, "delta": fields}


def block_stop(index: int) -> dict[str, Any]:
    return {"type": "content_block_stop", "index": index}


def message_delta(stop_reason: str | None, **usage: int) -> dict[str, Any]:
    return {"type": "message_delta", "delta": {"stop_reason": stop_reason}, "usage": usage}


PING = {"type": "ping"}
STOP = {"type": "message_stop"}


def text_stream(*texts: str, end: Any = "complete") -> Reply:
    events = [message_start(input_tokens=10, output_tokens=1)]
    events += [block_start(0, {"type": "text", "text": ""})]
    events += [delta(0, type="text_delta", text=text) for text in texts]
    events += [block_stop(0), message_delta("end_turn", output_tokens=5), STOP]
    return Reply(chunks=anthropic_events(*events), end=end)


@pytest.fixture
def model(upstream_settings: Settings, http_client: httpx2.AsyncClient) -> Model:
    return build_http_model("anthropic", "claude-sonnet-4-5", upstream_settings, http_client)


async def test_text_stream_request_and_usage(upstream: FakeUpstream, model: Model) -> None:
    upstream.push(
        Reply(
            chunks=anthropic_events(
                message_start(
                    input_tokens=100,
                    cache_read_input_tokens=2000,
                    cache_creation_input_tokens=300,
                    output_tokens=1,
                ),
                PING,
                block_start(0, {"type": "text", "text": ""}),
                delta(0, type="text_delta", text="Hel"),
                PING,
                delta(0, type="text_delta", text="lo"),
                block_stop(0),
                message_delta("end_turn", output_tokens=42),
                STOP,
            )
        )
    )
    parts = await collect(model.stream(HELLO))

    def usage(output: int) -> UsageReport:
        return UsageReport(
            usage=Usage(
                prompt_tokens=2400,
                completion_tokens=output,
                total_tokens=2400 + output,
                cache_read_tokens=2000,
                cache_write_tokens=300,
            )
        )

    assert parts == [
        usage(1),
        TextDelta(text="Hel"),
        TextDelta(text="lo"),
        Finish(reason="end_turn"),
        usage(42),
    ]
    [request] = upstream.requests
    assert (request.method, request.path) == ("POST", "/v1/messages")
    assert request.headers["x-api-key"] == "ak-test"
    assert request.headers["anthropic-version"] == "2023-06-01"
    assert "authorization" not in request.headers
    assert request.json() == {
        "model": "claude-sonnet-4-5",
        "max_tokens": 8192,
        "system": "Be brief.",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}],
        "stream": True,
    }


async def test_tool_use_blocks(upstream: FakeUpstream, model: Model) -> None:
    upstream.push(
        Reply(
            chunks=anthropic_events(
                message_start(input_tokens=10, output_tokens=1),
                block_start(0, {"type": "text", "text": ""}),
                delta(0, type="text_delta", text="Let me look."),
                block_stop(0),
                block_start(1, {"type": "tool_use", "id": "toolu_a", "name": "read", "input": {}}),
                delta(1, type="input_json_delta", partial_json=""),
                delta(1, type="input_json_delta", partial_json='{"path": '),
                PING,
                delta(1, type="input_json_delta", partial_json='"a.txt"}'),
                block_stop(1),
                block_start(2, {"type": "tool_use", "id": "toolu_b", "name": "ls", "input": {}}),
                delta(2, type="input_json_delta", partial_json="{}"),
                block_stop(2),
                message_delta("tool_use", output_tokens=30),
                STOP,
            )
        )
    )
    parts = await collect(model.stream(HELLO))

    assert assemble_tool_calls(parts) == {
        1: {"id": "toolu_a", "name": "read", "arguments": '{"path": "a.txt"}'},
        2: {"id": "toolu_b", "name": "ls", "arguments": "{}"},
    }
    assert [p for p in parts if isinstance(p, ToolCallDelta)][0] == ToolCallDelta(
        index=1, id="toolu_a", name="read"
    )
    assert TextDelta(text="Let me look.") in parts
    assert Finish(reason="tool_use") in parts


async def test_thinking_and_signature(upstream: FakeUpstream, model: Model) -> None:
    upstream.push(
        Reply(
            chunks=anthropic_events(
                message_start(input_tokens=10, output_tokens=1),
                block_start(0, {"type": "thinking", "thinking": ""}),
                delta(0, type="thinking_delta", thinking="Let me "),
                delta(0, type="thinking_delta", thinking="think."),
                delta(0, type="signature_delta", signature="c2lnbmF0dXJl"),
                block_stop(0),
                block_start(1, {"type": "text", "text": ""}),
                delta(1, type="text_delta", text="42"),
                block_stop(1),
                message_delta("end_turn", output_tokens=9),
                STOP,
            )
        )
    )
    parts = await collect(model.stream(HELLO))

    assert [p for p in parts if not isinstance(p, UsageReport)] == [
        ReasoningDelta(text="Let me "),
        ReasoningDelta(text="think."),
        ReasoningDelta(text="", signature="c2lnbmF0dXJl"),
        TextDelta(text="42"),
        Finish(reason="end_turn"),
    ]


async def test_conversation_is_converted_and_merged(upstream: FakeUpstream, model: Model) -> None:
    upstream.push(text_stream("ok"))
    request = ModelRequest(
        system_prompt=None,
        messages=[
            UserMessage(content="Look at both files"),
            AssistantMessage(
                content="Reading.",
                reasoning="I should read them.",
                reasoning_signature="sig",
                tool_calls=(
                    ToolCall(id="t1", name="read", arguments='{"path": "a"}'),
                    ToolCall(id="t2", name="read", arguments='{"path": "b"}'),
                ),
            ),
            ToolResultMessage(tool_call_id="t1", tool_name="read", content="A"),
            ToolResultMessage(
                tool_call_id="t2", tool_name="read", content="no such file", is_error=True
            ),
            UserMessage(content="And summarize"),
            UserMessage(content="please"),
        ],
        tools=[ToolSpec(name="read", description="Read a file", parameters={"type": "object"})],
        max_output_tokens=1000,
    )
    await collect(model.stream(request))

    body = upstream.requests[0].json()
    assert "system" not in body
    assert body["max_tokens"] == 1000
    assert body["tools"] == [
        {"name": "read", "description": "Read a file", "input_schema": {"type": "object"}}
    ]
    assert body["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "Look at both files"}]},
        {
            "role": "assistant",
            "content": [
                {"type": "thinking", "thinking": "I should read them.", "signature": "sig"},
                {"type": "text", "text": "Reading."},
                {"type": "tool_use", "id": "t1", "name": "read", "input": {"path": "a"}},
                {"type": "tool_use", "id": "t2", "name": "read", "input": {"path": "b"}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "t1", "content": "A", "is_error": False},
                {
                    "type": "tool_result",
                    "tool_use_id": "t2",
                    "content": "no such file",
                    "is_error": True,
                },
                {"type": "text", "text": "And summarize"},
                {"type": "text", "text": "please"},
            ],
        },
    ]


async def test_max_tokens_default_comes_from_the_model_table(
    upstream: FakeUpstream, upstream_settings: Settings, http_client: httpx2.AsyncClient
) -> None:
    upstream.push(text_stream("a"), text_stream("b"))
    for name, expected in (("claude-3-haiku-20240307", 4096), ("some-new-model", 8192)):
        await collect(
            build_http_model("anthropic", name, upstream_settings, http_client).stream(HELLO)
        )
        assert upstream.requests[-1].json()["max_tokens"] == expected


async def test_error_event_in_the_stream(upstream: FakeUpstream, model: Model) -> None:
    error = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    upstream.push(
        Reply(
            chunks=anthropic_events(
                message_start(input_tokens=10, output_tokens=1),
                block_start(0, {"type": "text", "text": ""}),
                delta(0, type="text_delta", text="Hel"),
                error,
            )
        )
    )
    with pytest.raises(ModelHTTPError, match="anthropic.*Overloaded") as caught:
        await collect(model.stream(HELLO))
    assert caught.value.status == 529 and caught.value.retryable


@pytest.mark.parametrize(
    ("status", "kind", "error_type"),
    [
        (401, "authentication_error", ModelAuthError),
        (403, "permission_error", ModelAuthError),
        (400, "invalid_request_error", ModelRequestError),
        (404, "not_found_error", ModelRequestError),
        (500, "api_error", ModelHTTPError),
        (529, "overloaded_error", ModelHTTPError),
    ],
)
async def test_error_responses(
    upstream: FakeUpstream,
    model: Model,
    status: int,
    kind: str,
    error_type: type[ModelHTTPError],
) -> None:
    message = f"{kind} happened"
    upstream.push(
        json_reply(status, {"type": "error", "error": {"type": kind, "message": message}})
    )
    with pytest.raises(error_type) as caught:
        await collect(model.stream(HELLO))
    assert type(caught.value) is error_type
    assert caught.value.status == status
    for word in ["anthropic", str(status), message]:
        assert word in str(caught.value)
    if error_type is ModelAuthError:
        assert "ANTHROPIC_API_KEY" in str(caught.value)


async def test_429_with_an_http_date(upstream: FakeUpstream, model: Model) -> None:
    when = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    body = {"type": "error", "error": {"type": "rate_limit_error", "message": "Slow down"}}
    upstream.push(json_reply(429, body, {"retry-after": when}))
    with pytest.raises(ModelHTTPError, match="Slow down") as caught:
        await collect(model.stream(HELLO))
    assert caught.value.status == 429 and caught.value.retryable
    assert caught.value.retry_after is not None and 25 <= caught.value.retry_after <= 30


async def test_stream_without_message_stop(upstream: FakeUpstream, model: Model) -> None:
    events = [message_start(input_tokens=1), block_start(0, {"type": "text", "text": ""})]
    upstream.push(Reply(chunks=anthropic_events(*events), end="close"))
    with pytest.raises(ModelConnectionError, match="anthropic stream ended before message_stop"):
        await collect(model.stream(HELLO))


async def test_connection_cut_mid_body(upstream: FakeUpstream, model: Model) -> None:
    reply = text_stream("Hel", "lo", end="cut")
    reply.chunks = reply.chunks[:4]  # message_start, block start, two deltas; then the cut
    upstream.push(reply)
    parts: list[Any] = []
    with pytest.raises(ModelConnectionError, match="anthropic"):
        async for part in model.stream(HELLO):
            parts.append(part)
    assert [p for p in parts if isinstance(p, TextDelta)] == [
        TextDelta(text="Hel"),
        TextDelta(text="lo"),
    ]


async def test_connection_is_reused_after_message_stop(
    upstream: FakeUpstream, model: Model
) -> None:
    upstream.push(text_stream("a"), text_stream("b"))
    for _ in range(2):
        await collect(model.stream(HELLO))
    assert upstream.connections == 1


async def test_stalled_stream_can_be_cancelled(upstream: FakeUpstream, model: Model) -> None:
    reply = text_stream("Hel", end="stall")
    reply.chunks = reply.chunks[:3]
    upstream.push(reply)
    parts = model.stream(HELLO)
    assert isinstance(await anext(parts), UsageReport)
    assert await anext(parts) == TextDelta(text="Hel")
    stalled = asyncio.ensure_future(anext(parts))
    await asyncio.sleep(0.1)
    stalled.cancel()
    with pytest.raises(asyncio.CancelledError):
        await stalled
    async with asyncio.timeout(5):
        await upstream.client_closed.wait()
