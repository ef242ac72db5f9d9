"""Message content on a proxied request's span: recorded when the content-capture setting asks for
it, converted from each wire format (the request the SDK sent, the answer whole or streamed);
nothing when it is off."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import httpx2
import pytest

from culm.tracing import wire_content
from tests.proxy import wire
from tests.proxy.conftest import Proxy, ProxyFactory
from tests.proxy.test_proxy import body_reply, stream_reply
from tests.proxy.upstream import ProxyReply
from tests.tracing.receiver import OTLPReceiver, ReceivedSpan

CAPTURE = "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT"
SYSTEM = "gen_ai.system_instructions"
INPUT = "gen_ai.input.messages"
OUTPUT = "gen_ai.output.messages"
IMAGE = "data:image/png;base64,iVBORw0KGgoAAAANSUhEUg=="

Call = Callable[[Proxy], Awaitable[Any]]


async def proxied_span(
    make_proxy: ProxyFactory,
    monkeypatch: pytest.MonkeyPatch,
    reply: ProxyReply,
    call: Call,
    *,
    capture: str | None = "true",
    **settings: Any,
) -> ReceivedSpan:
    """The span of one request made by ``call`` through a proxy whose upstream plays ``reply``."""
    with OTLPReceiver() as receiver:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint)
        if capture is None:
            monkeypatch.delenv(CAPTURE, raising=False)
        else:
            monkeypatch.setenv(CAPTURE, capture)
        async with make_proxy(**settings) as proxy:
            proxy.upstream.push(reply)
            await call(proxy)
            await proxy.record()
        spans = receiver.named("chat ")
    (span,) = spans
    return span


def content(span: ReceivedSpan) -> dict[str, Any]:
    return {
        name: json.loads(span.attributes[name])
        for name in (SYSTEM, INPUT, OUTPUT)
        if name in span.attributes
    }


def text(value: str) -> dict[str, str]:
    return {"type": "text", "content": value}


def tool_call(call_id: str, name: str, arguments: Any) -> dict[str, Any]:
    return {"type": "tool_call", "id": call_id, "name": name, "arguments": arguments}


def tool_response(call_id: str, response: str) -> dict[str, str]:
    return {"type": "tool_call_response", "id": call_id, "response": response}


def answer(*parts: dict[str, Any], finish: str) -> list[dict[str, Any]]:
    return [{"role": "assistant", "parts": list(parts), "finish_reason": finish}]


# What each wire format sends: a system prompt, a user turn with an image, an assistant tool call,
# its result; and what the span records of it.

EXPECTED_INPUT = [
    {"role": "user", "parts": [text("What is this?"), {"type": "IMAGE"}]},
    {"role": "assistant", "parts": [tool_call("call_0", "weather", {"city": "Oslo"})]},
    {"role": "TOOL", "parts": [tool_response("call_0", "Rain")]},
]


def expected_input(image: str, tool_role: str) -> list[dict[str, Any]]:
    return json.loads(json.dumps(EXPECTED_INPUT).replace("IMAGE", image).replace("TOOL", tool_role))


CHAT_MESSAGES: list[Any] = [
    {"role": "system", "content": "Be brief."},
    {
        "role": "user",
        "content": [
            {"type": "text", "text": "What is this?"},
            {"type": "image_url", "image_url": {"url": IMAGE}},
        ],
    },
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_0",
                "type": "function",
                "function": {"name": "weather", "arguments": '{"city": "Oslo"}'},
            }
        ],
    },
    {"role": "tool", "tool_call_id": "call_0", "content": "Rain"},
]
CHAT_INPUT = {SYSTEM: [text("Be brief.")], INPUT: expected_input("image_url", "tool")}

RESPONSES_INPUT: list[Any] = [
    {"role": "developer", "content": "Be brief."},
    {
        "role": "user",
        "content": [
            {"type": "input_text", "text": "What is this?"},
            {"type": "input_image", "image_url": IMAGE, "detail": "auto"},
        ],
    },
    {
        "type": "function_call",
        "call_id": "call_0",
        "name": "weather",
        "arguments": '{"city": "Oslo"}',
    },
    {"type": "function_call_output", "call_id": "call_0", "output": "Rain"},
]
RESPONSES_EXPECTED = {
    SYSTEM: [text("Answer in English."), text("Be brief.")],
    INPUT: expected_input("input_image", "tool"),
}

MESSAGES: list[Any] = [
    {
        "role": "user",
        "content": [
            {"type": "text", "text": "What is this?"},
            {
                "type": "image",
                "source": {"type": "base64", "media_type": "image/png", "data": IMAGE[22:]},
            },
        ],
    },
    {
        "role": "assistant",
        "content": [
            {"type": "tool_use", "id": "call_0", "name": "weather", "input": {"city": "Oslo"}}
        ],
    },
    {
        "role": "user",
        "content": [{"type": "tool_result", "tool_use_id": "call_0", "content": "Rain"}],
    },
]
MESSAGES_INPUT = {SYSTEM: [text("Be brief.")], INPUT: expected_input("image", "user")}


async def chat(proxy: Proxy, *, stream: bool) -> None:
    async with proxy.openai() as client:
        if not stream:
            await client.chat.completions.create(model=wire.CHAT_MODEL, messages=CHAT_MESSAGES)
            return
        chunks = await client.chat.completions.create(
            model=wire.CHAT_MODEL, messages=CHAT_MESSAGES, stream=True
        )
        async for _ in chunks:
            pass


async def responses(proxy: Proxy, *, stream: bool) -> None:
    async with proxy.openai() as client:
        created = await client.responses.create(
            model=wire.CHAT_MODEL,
            instructions="Answer in English.",
            input=RESPONSES_INPUT,
            stream=stream,
        )
        if stream:
            async for _ in created:  # type: ignore[union-attr]
                pass


async def messages(proxy: Proxy, *, stream: bool) -> None:
    async with proxy.anthropic() as client:
        created = await client.messages.create(
            model=wire.CLAUDE, max_tokens=100, system="Be brief.", messages=MESSAGES, stream=stream
        )
        if stream:
            async for _ in created:  # type: ignore[union-attr]
                pass


MESSAGE_CONTENT: list[dict[str, Any]] = [
    {"type": "text", "text": "Checking."},
    {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {"city": "Paris"}},
]
CHECKING_PARIS = (text("Checking."), tool_call("toolu_1", "weather", {"city": "Paris"}))

CASES: dict[str, tuple[Call, ProxyReply, dict[str, Any], list[dict[str, Any]]]] = {
    "chat": (
        lambda proxy: chat(proxy, stream=False),
        body_reply(wire.chat_completion(wire.TOOL_CALLS_MESSAGE, "tool_calls")),
        CHAT_INPUT,
        answer(
            tool_call("call_a", "weather", {"city": "Paris"}),
            tool_call("call_b", "clock", {"tz": "CET"}),
            finish="tool_call",
        ),
    ),
    "chat-stream-text": (
        lambda proxy: chat(proxy, stream=True),
        stream_reply(wire.rechunk(wire.chat_text_events(), 11)),
        CHAT_INPUT,
        answer(text("Hello world"), finish="stop"),
    ),
    "chat-stream-tool-calls": (
        lambda proxy: chat(proxy, stream=True),
        stream_reply(wire.rechunk(wire.chat_tool_events(), 11)),
        CHAT_INPUT,
        answer(
            tool_call("call_a", "weather", {"city": "Paris"}),
            tool_call("call_b", "clock", {"tz": "CET"}),
            finish="tool_call",
        ),
    ),
    "responses": (
        lambda proxy: responses(proxy, stream=False),
        body_reply(wire.response_object("completed", text="Hi there", usage=wire.RESPONSES_USAGE)),
        RESPONSES_EXPECTED,
        answer(text("Hi there"), finish="stop"),
    ),
    "responses-stream": (
        lambda proxy: responses(proxy, stream=True),
        stream_reply(wire.rechunk(wire.responses_events(), 13)),
        RESPONSES_EXPECTED,
        answer(text("Hi there"), finish="stop"),
    ),
    "messages": (
        lambda proxy: messages(proxy, stream=False),
        body_reply(wire.message_object(MESSAGE_CONTENT, wire.MESSAGE_BODY_USAGE)),
        MESSAGES_INPUT,
        answer(*CHECKING_PARIS, finish="tool_call"),
    ),
    "messages-stream": (
        lambda proxy: messages(proxy, stream=True),
        stream_reply(wire.rechunk(wire.messages_events(), 17)),
        MESSAGES_INPUT,
        answer(
            {"type": "reasoning", "content": "Weather first."}, *CHECKING_PARIS, finish="tool_call"
        ),
    ),
}


@pytest.mark.parametrize("case", list(CASES))
async def test_with_capture_on_the_span_records_what_was_sent_and_answered(
    make_proxy: ProxyFactory, monkeypatch: pytest.MonkeyPatch, case: str
) -> None:
    call, reply, sent, answered = CASES[case]
    span = await proxied_span(make_proxy, monkeypatch, reply, call)
    assert content(span) == {**sent, OUTPUT: answered}
    assert span.attributes["http.response.status_code"] == 200


@pytest.mark.parametrize("case", ["chat", "responses-stream", "messages-stream"])
@pytest.mark.parametrize("setting", [None, "false"])
async def test_with_capture_off_no_content_is_recorded(
    make_proxy: ProxyFactory, monkeypatch: pytest.MonkeyPatch, case: str, setting: str | None
) -> None:
    call, reply, _, _ = CASES[case]
    span = await proxied_span(make_proxy, monkeypatch, reply, call, capture=setting)
    assert content(span) == {}
    assert span.attributes["gen_ai.usage.output_tokens"] > 0  # the span itself is there


async def test_a_cut_stream_records_what_arrived(
    make_proxy: ProxyFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def cut(proxy: Proxy) -> None:
        body = {"model": wire.CHAT_MODEL, "input": "Hi", "stream": True}
        async with httpx2.AsyncClient(base_url=proxy.url, trust_env=False) as http:
            with pytest.raises(httpx2.RemoteProtocolError):
                await http.post("/openai/v1/responses", json=body)

    reply = stream_reply(wire.responses_events()[:3], end="cut")
    span = await proxied_span(make_proxy, monkeypatch, reply, cut)
    assert content(span) == {
        INPUT: [{"role": "user", "parts": [text("Hi")]}],
        OUTPUT: answer(text("Hi there"), finish="error"),
    }


async def test_a_stalled_messages_stream_records_what_arrived(
    make_proxy: ProxyFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def stalled(proxy: Proxy) -> None:
        body = {"model": wire.CLAUDE, "max_tokens": 10, "messages": [], "stream": True}
        async with httpx2.AsyncClient(base_url=proxy.url, trust_env=False) as http:
            with pytest.raises(httpx2.RemoteProtocolError):
                await http.post("/anthropic/v1/messages", json=body)

    reply = stream_reply(wire.messages_events()[:9], end="stall")  # through the text block
    span = await proxied_span(make_proxy, monkeypatch, reply, stalled, proxy_read_timeout=0.3)
    reasoning = {"type": "reasoning", "content": "Weather first."}
    assert content(span)[OUTPUT] == answer(reasoning, text("Checking."), finish="error")


async def test_an_error_answer_records_the_input_only(
    make_proxy: ProxyFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def refused(proxy: Proxy) -> None:
        async with proxy.anthropic() as client:
            with pytest.raises(Exception, match="overloaded"):
                await client.messages.create(
                    model=wire.CLAUDE, max_tokens=10, system="Be brief.", messages=MESSAGES
                )

    reply = body_reply(wire.anthropic_error("overloaded_error", "overloaded"), status=529)
    span = await proxied_span(make_proxy, monkeypatch, reply, refused)
    assert content(span) == MESSAGES_INPUT


@pytest.mark.parametrize(("exporting", "setting"), [(False, "true"), (True, "false")])
async def test_nothing_is_converted_unless_a_recording_span_asks(
    make_proxy: ProxyFactory, monkeypatch: pytest.MonkeyPatch, exporting: bool, setting: str
) -> None:
    """Capture on without an exporter (the span does not record), or an exporter without capture:
    the request and the answer are not read for content, nor is the stream accumulated."""

    def never(*args: Any) -> None:
        raise AssertionError("content was converted")

    monkeypatch.setattr(wire_content, "request_attributes", never)
    monkeypatch.setattr(wire_content, "output_recorder", never)
    monkeypatch.setenv(CAPTURE, setting)
    with OTLPReceiver() as receiver:
        if exporting:
            monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint)
        else:
            monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT", raising=False)
        async with make_proxy() as proxy:
            proxy.upstream.push(stream_reply(wire.messages_events()))
            await messages(proxy, stream=True)
            record = await proxy.record()
    assert record.status == "success"
    assert len(receiver.named("chat ")) == (1 if exporting else 0)
