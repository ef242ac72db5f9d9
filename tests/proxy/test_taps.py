"""The taps: the bytes they pass on and the usage they read, however the body is chunked."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from culm.domain.models import Usage
from culm.proxy import taps
from culm.proxy.taps import (
    BodyTap,
    ChatCompletionsTap,
    MessagesTap,
    ResponsesTap,
    Tap,
    responses_usage,
    stream_tap,
)
from tests.providers.fakes import anthropic_events, openai_events
from tests.proxy import wire


def run(tap: Tap, chunks: list[bytes]) -> bytes:
    """Feed ``chunks``, then close: everything the tap sends on."""
    return b"".join([*(tap.feed(chunk) for chunk in chunks), tap.close()])


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({0, *(c % (len(data) + 1) for c in cuts), len(data)})
    return [data[a:b] for a, b in zip(points, points[1:], strict=False)]


def crlf(events: list[bytes]) -> list[bytes]:
    return [event.replace(b"\n", b"\r\n") for event in events]


class LoadSpy:
    """Counts the JSON decodes a tap makes."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[bytes] = []
        original = taps.json_or_none

        def load(data: bytes) -> Any:
            self.calls.append(data)
            return original(data)

        monkeypatch.setattr(taps, "json_or_none", load)


# Chat Completions streams

CHAT = wire.chat_text_events()
USAGE_EVENT = CHAT[-2]
assert b'"choices": []' in USAGE_EVENT


def test_chat_stream_passes_every_chunk_on_at_once_when_not_hiding() -> None:
    tap = ChatCompletionsTap(hide_usage_chunk=False)
    for chunk in CHAT:
        assert tap.feed(chunk) == chunk
    assert tap.close() == b""
    assert tap.usage == wire.CHAT_USAGE_MAPPED


def test_chat_stream_hides_the_usage_only_chunk_when_asked() -> None:
    tap = ChatCompletionsTap(hide_usage_chunk=True)
    out = [tap.feed(chunk) for chunk in CHAT]
    assert out == [*CHAT[:-2], b"", CHAT[-1]]
    assert tap.close() == b""
    assert tap.usage == wire.CHAT_USAGE_MAPPED


def test_an_event_split_across_chunks_is_held_until_whole() -> None:
    tap = ChatCompletionsTap(hide_usage_chunk=True)
    first, second = CHAT[1][:10], CHAT[1][10:]
    assert tap.feed(CHAT[0] + first) == CHAT[0]
    assert tap.feed(second) == CHAT[1]
    half = len(USAGE_EVENT) // 2
    assert tap.feed(USAGE_EVENT[:half]) == b""
    assert tap.feed(USAGE_EVENT[half:] + CHAT[-1]) == CHAT[-1]
    assert tap.usage == wire.CHAT_USAGE_MAPPED


def test_a_blank_line_split_between_chunks() -> None:
    tap = ChatCompletionsTap(hide_usage_chunk=True)
    event = CHAT[1]
    assert tap.feed(event[:-1]) == b""  # "…}\n" — the blank line is not there yet
    assert tap.feed(event[-1:]) == event


@pytest.mark.parametrize("hide", [True, False])
def test_crlf_framing(hide: bool) -> None:
    events = crlf(CHAT)
    tap = ChatCompletionsTap(hide_usage_chunk=hide)
    out = run(tap, wire.rechunk(events, 5))
    expected = b"".join(events)
    assert out == (expected.replace(events[-2], b"") if hide else expected)
    assert tap.usage == wire.CHAT_USAGE_MAPPED


def test_cr_framing() -> None:
    events = [event.replace(b"\n", b"\r") for event in CHAT]
    tap = ChatCompletionsTap(hide_usage_chunk=True)
    assert run(tap, wire.rechunk(events, 3)) == b"".join(events).replace(events[-2], b"")
    assert tap.usage == wire.CHAT_USAGE_MAPPED


def test_usage_with_choices_is_read_but_not_hidden() -> None:
    """Some compatible servers put the usage on the last content chunk: that chunk stays."""
    last = wire.chat_chunk({}, "stop") | {"usage": wire.CHAT_USAGE}
    events = [*CHAT[:3], *openai_events(last, "[DONE]")]
    tap = ChatCompletionsTap(hide_usage_chunk=True)
    assert run(tap, events) == b"".join(events)
    assert tap.usage == wire.CHAT_USAGE_MAPPED


def test_null_usage_chunks_are_not_decoded(monkeypatch: pytest.MonkeyPatch) -> None:
    spy = LoadSpy(monkeypatch)
    tap = ChatCompletionsTap(hide_usage_chunk=True)
    spaced = CHAT[1].replace(b'"usage": null', b'"usage" :  null')
    run(tap, [*CHAT[:1], spaced, *CHAT[2:]])
    assert len(spy.calls) == 1  # the usage-only chunk
    assert tap.usage == wire.CHAT_USAGE_MAPPED


def test_chunks_without_usage_are_not_decoded(monkeypatch: pytest.MonkeyPatch) -> None:
    spy = LoadSpy(monkeypatch)
    tap = ChatCompletionsTap(hide_usage_chunk=False)
    run(tap, openai_events({"choices": [{"delta": {"content": "x"}}]}, "[DONE]"))
    assert spy.calls == []
    assert tap.usage is None


def test_the_word_usage_in_content_is_not_usage() -> None:
    text = 'the "usage": {"prompt_tokens": 1} of it'
    events = openai_events(wire.chat_chunk({"content": text}), "[DONE]")
    tap = ChatCompletionsTap(hide_usage_chunk=True)
    assert run(tap, events) == b"".join(events)
    assert tap.usage is None


def test_an_unterminated_last_event_is_sent_on_close() -> None:
    tap = ChatCompletionsTap(hide_usage_chunk=True)
    assert tap.feed(CHAT[0] + b"data: [DONE]") == CHAT[0]
    assert tap.close() == b"data: [DONE]"
    assert tap.close() == b""


def test_an_unterminated_usage_event_is_still_read() -> None:
    tap = ChatCompletionsTap(hide_usage_chunk=True)
    run(tap, [CHAT[0], USAGE_EVENT.rstrip(b"\n")])
    assert tap.usage == wire.CHAT_USAGE_MAPPED


@st.composite
def chat_streams(draw: st.DrawFn) -> tuple[list[bytes], list[bytes]]:
    """A Chat Completions stream (random text and tool-call pieces, the usage-only chunk
    somewhere near the end) and the same bytes cut at random points."""
    pieces = draw(st.lists(st.text(max_size=12), max_size=8))
    deltas: list[dict[str, Any]] = [{"content": piece} for piece in pieces]
    if draw(st.booleans()):
        deltas.append({"tool_calls": [{"index": 0, "function": {"arguments": '{"a": "\\n\\n"}'}}]})
    events = openai_events(
        *(wire.chat_chunk(delta) for delta in deltas), wire.chat_chunk({}, "stop")
    )
    usage_event = openai_events(wire.chat_usage_chunk())[0]
    done = b"data: [DONE]\n\n" if draw(st.booleans()) else b""
    stream = [*events, usage_event, done]
    if draw(st.booleans()):
        stream = crlf(stream)
    data = b"".join(stream)
    cuts = draw(st.lists(st.integers(min_value=0, max_value=len(data)), max_size=12))
    return stream, split(data, cuts)


@settings(max_examples=300, deadline=None)
@given(chat_streams())
def test_any_chunking_hides_exactly_the_usage_event(
    case: tuple[list[bytes], list[bytes]],
) -> None:
    events, chunks = case
    hidden = ChatCompletionsTap(hide_usage_chunk=True)
    assert run(hidden, chunks) == b"".join(e for e in events if b'"choices": []' not in e)
    assert hidden.usage == wire.CHAT_USAGE_MAPPED
    shown = ChatCompletionsTap(hide_usage_chunk=False)
    assert run(shown, chunks) == b"".join(events)
    assert shown.usage == wire.CHAT_USAGE_MAPPED


# Responses and Messages streams


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=10_000), max_size=12), st.booleans())
def test_responses_stream_any_chunking(cuts: list[int], use_crlf: bool) -> None:
    events = wire.responses_events()
    events = crlf(events) if use_crlf else events
    tap = stream_tap("responses", hide_usage_chunk=False)
    assert isinstance(tap, ResponsesTap)
    data = b"".join(events)
    assert run(tap, split(data, cuts)) == data
    assert tap.usage == wire.RESPONSES_USAGE_MAPPED


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=10_000), max_size=12), st.booleans())
def test_messages_stream_any_chunking(cuts: list[int], use_crlf: bool) -> None:
    events = wire.messages_events()
    events = crlf(events) if use_crlf else events
    tap = stream_tap("messages", hide_usage_chunk=False)
    assert isinstance(tap, MessagesTap)
    data = b"".join(events)
    assert run(tap, split(data, cuts)) == data
    assert tap.usage == wire.MESSAGES_USAGE_MAPPED


@pytest.mark.parametrize("kind", ["response.incomplete", "response.failed"])
def test_responses_usage_of_an_unfinished_response(kind: str) -> None:
    event = {"type": kind, "response": wire.response_object(kind, usage=wire.RESPONSES_USAGE)}
    tap = ResponsesTap()
    run(tap, [f"event: {kind}\ndata: {json.dumps(event)}\n\n".encode()])
    assert tap.usage == wire.RESPONSES_USAGE_MAPPED


def test_messages_usage_so_far_after_message_start() -> None:
    tap = MessagesTap()
    run(tap, wire.messages_events()[:3])
    assert tap.usage == Usage(
        prompt_tokens=175,
        completion_tokens=1,
        total_tokens=176,
        cache_read_tokens=50,
        cache_write_tokens=100,
    )


def test_message_delta_usage_is_cumulative() -> None:
    """A later ``message_delta`` replaces the counts it carries, keeps the others."""
    tap = MessagesTap()
    start = {"type": "message_start", "message": wire.message_object([], {"input_tokens": 9})}
    deltas = [
        {"type": "message_delta", "delta": {}, "usage": {"output_tokens": 3}},
        {"type": "message_delta", "delta": {}, "usage": {"output_tokens": 8, "input_tokens": 10}},
    ]
    run(tap, anthropic_events(start, *deltas))
    assert tap.usage == Usage(prompt_tokens=10, completion_tokens=8, total_tokens=18)


@pytest.mark.parametrize("prefix", [b"event: error", b"event:error"])
def test_messages_stream_error_event(prefix: bytes) -> None:
    error = json.dumps(wire.anthropic_error("overloaded_error", "Overloaded")).encode()
    tap = MessagesTap()
    run(tap, [*wire.messages_events()[:1], prefix + b"\ndata: " + error + b"\n\n"])
    assert tap.error == "Overloaded"
    assert tap.usage is not None and tap.usage.prompt_tokens == 175


def test_models_list_stream_tap_reads_nothing() -> None:
    tap = stream_tap("none", hide_usage_chunk=True)
    assert type(tap) is Tap
    assert run(tap, CHAT) == b"".join(CHAT)
    assert tap.usage is None


def test_multi_line_data_is_joined() -> None:
    payload = json.dumps(wire.chat_usage_chunk(), indent=1).encode()
    event = b"".join(b"data: " + line + b"\n" for line in payload.splitlines()) + b"\n"
    tap = ChatCompletionsTap(hide_usage_chunk=True)
    assert run(tap, [event, b"data: [DONE]\n\n"]) == b"data: [DONE]\n\n"
    assert tap.usage == wire.CHAT_USAGE_MAPPED


# Whole bodies


@pytest.mark.parametrize(
    ("usage_format", "usage", "mapped"),
    [
        ("chat", wire.CHAT_USAGE, wire.CHAT_USAGE_MAPPED),
        ("responses", wire.RESPONSES_USAGE, wire.RESPONSES_USAGE_MAPPED),
        ("messages", wire.MESSAGE_BODY_USAGE, wire.MESSAGES_USAGE_MAPPED),
    ],
)
def test_body_usage(usage_format: taps.UsageFormat, usage: dict[str, Any], mapped: Usage) -> None:
    body = json.dumps({"id": "x", "usage": usage}, indent=2).encode()
    tap = BodyTap(usage_format)
    chunks = wire.rechunk([body], 7)
    assert [tap.feed(chunk) for chunk in chunks] == chunks
    assert tap.close() == b""
    assert tap.usage == mapped
    assert tap.error is None


@pytest.mark.parametrize(
    "body", [b"", b"not json", b"[1, 2]", b'{"usage": null}', b'{"usage": [1]}', b'{"id": "x"}']
)
def test_body_without_usage(body: bytes) -> None:
    tap = BodyTap("chat")
    run(tap, [body])
    assert tap.usage is None


def test_models_body_reads_no_usage() -> None:
    tap = BodyTap("none")
    run(tap, [json.dumps({"data": [], "usage": wire.CHAT_USAGE}).encode()])
    assert tap.usage is None


def test_a_body_over_the_limit_passes_through_unread(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(taps, "JSON_BODY_LIMIT", 64)
    body = json.dumps({"usage": wire.CHAT_USAGE, "pad": "x" * 100}).encode()
    tap = BodyTap("chat")
    chunks = wire.rechunk([body], 10)
    assert run(tap, chunks) == body
    assert tap.usage is None


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (json.dumps(wire.openai_error("rate_limit_exceeded", "Slow down")).encode(), "Slow down"),
        (json.dumps(wire.anthropic_error("authentication_error", "bad key")).encode(), "bad key"),
        (b"<html>502  Bad\n Gateway</html>", "<html>502 Bad Gateway</html>"),
    ],
)
def test_error_body_message(body: bytes, message: str) -> None:
    tap = BodyTap("chat", failed=True)
    assert run(tap, wire.rechunk([body], 4)) == body
    assert tap.error == message
    assert tap.usage is None


def test_responses_usage_mapping_defaults() -> None:
    assert responses_usage({"input_tokens": 3, "output_tokens": 4}) == Usage(
        prompt_tokens=3, completion_tokens=4, total_tokens=7
    )
    assert responses_usage({}) == Usage()


def test_only_a_tap_that_may_leave_an_event_out_holds_bytes_back() -> None:
    """The exchange sends a passing tap's chunk before the tap reads it (first byte first)."""
    assert ChatCompletionsTap(hide_usage_chunk=False).passes_through
    assert not ChatCompletionsTap(hide_usage_chunk=True).passes_through
    assert ResponsesTap().passes_through
    assert MessagesTap().passes_through
    assert BodyTap("chat").passes_through


# Edges found by mutation testing (docs/testing.md, "Mutation testing")


def test_stream_tap_for_chat_hides_the_usage_chunk_only_when_asked() -> None:
    hidden = stream_tap("chat", hide_usage_chunk=True)
    assert run(hidden, CHAT) == b"".join(CHAT).replace(USAGE_EVENT, b"")
    assert hidden.usage == wire.CHAT_USAGE_MAPPED
    shown = stream_tap("chat", hide_usage_chunk=False)
    assert run(shown, CHAT) == b"".join(CHAT)
    assert shown.usage == wire.CHAT_USAGE_MAPPED


@pytest.mark.parametrize("usage_format", ["chat", "responses", "messages", "none"])
def test_a_stream_tap_that_got_no_bytes_sends_and_reads_nothing(
    usage_format: taps.UsageFormat,
) -> None:
    tap = stream_tap(usage_format, hide_usage_chunk=True)
    assert tap.close() == b""
    assert tap.usage is None and tap.error is None


def test_a_passing_tap_never_sends_an_unterminated_last_event_twice() -> None:
    tap = ChatCompletionsTap(hide_usage_chunk=False)
    chunk = CHAT[0] + USAGE_EVENT.rstrip(b"\n")
    assert tap.feed(chunk) == chunk
    assert tap.close() == b""
    assert tap.usage == wire.CHAT_USAGE_MAPPED


def test_a_held_event_tap_sends_whole_events_only() -> None:
    tap = taps.EventTap(hold=True)
    assert tap.feed(CHAT[0] + CHAT[1][:7]) == CHAT[0]
    assert tap.feed(CHAT[1][7:] + CHAT[2]) == CHAT[1] + CHAT[2]
    assert tap.close() == b""


def test_data_without_a_space_after_the_colon_is_read() -> None:
    """``data:{…}`` is as valid SSE as ``data: {…}``."""
    event = b"data:" + json.dumps(wire.chat_usage_chunk()).encode() + b"\n\n"
    tap = ChatCompletionsTap(hide_usage_chunk=True)
    assert run(tap, [CHAT[0], event]) == CHAT[0]
    assert tap.usage == wire.CHAT_USAGE_MAPPED


@pytest.mark.parametrize("usage", [b'"n/a"', b"[1]", b"7"])
def test_a_chat_usage_that_is_not_an_object_is_sent_on_unread(usage: bytes) -> None:
    event = b'data: {"choices": [], "usage": ' + usage + b"}\n\n"
    tap = ChatCompletionsTap(hide_usage_chunk=True)
    assert run(tap, [event]) == event
    assert tap.usage is None


def test_events_that_mention_usage_but_are_not_json_objects_pass_unread() -> None:
    chat = [b'data: ["usage", 1]\n\n', b'data: {"usage": {broken\n\n']
    responses = [b"event: response.completed\ndata: [1]\n\n", b"data: response.failed\n\n"]
    messages = [
        b"event: message_start\ndata: [1]\n\n",
        b'event: message_start\ndata: {"message": null}\n\n',
        b'event: message_start\ndata: {"message": {"usage": 3}}\n\n',
        b"event: message_delta\ndata: null\n\n",
    ]
    cases: list[tuple[Tap, list[bytes]]] = [
        (ChatCompletionsTap(hide_usage_chunk=True), chat),
        (ResponsesTap(), responses),
        (MessagesTap(), messages),
    ]
    for tap, events in cases:
        assert run(tap, events) == b"".join(events)
        assert tap.usage is None and tap.error is None


def test_only_the_events_that_end_a_response_are_decoded(monkeypatch: pytest.MonkeyPatch) -> None:
    spy = LoadSpy(monkeypatch)
    events = wire.responses_events()
    tap = ResponsesTap()
    run(tap, events)
    assert len(spy.calls) == 1
    assert b'"type": "response.completed"' in spy.calls[0]
    assert tap.usage == wire.RESPONSES_USAGE_MAPPED


def responses_done(status: str, **fields: Any) -> bytes:
    kind = {"completed": "response.completed", "failed": "response.failed"}[status]
    response = wire.response_object(status, usage=wire.RESPONSES_USAGE) | fields
    return f"event: {kind}\ndata: {json.dumps({'type': kind, 'response': response})}\n\n".encode()


@pytest.mark.parametrize(
    ("event", "error"),
    [
        (responses_done("completed"), None),
        (responses_done("completed", error={"message": "ignored"}), None),
        (responses_done("failed", error={"code": "server_error", "message": "Boom"}), "Boom"),
        (responses_done("failed", error=None), "the response failed"),
        (responses_done("failed", error={"code": "server_error"}), "the response failed"),
        (responses_done("failed", error="just text"), "the response failed"),
    ],
)
def test_a_failed_response_gives_its_error_message(event: bytes, error: str | None) -> None:
    tap = ResponsesTap()
    assert run(tap, [event]) == event
    assert tap.error == error
    assert tap.usage == wire.RESPONSES_USAGE_MAPPED


def test_responses_usage_keeps_the_providers_total() -> None:
    assert responses_usage({"input_tokens": 3, "output_tokens": 4, "total_tokens": 9}) == Usage(
        prompt_tokens=3, completion_tokens=4, total_tokens=9
    )


@pytest.mark.parametrize("extra", [0, 1])
def test_a_body_exactly_at_the_limit_is_read_one_byte_over_is_not(
    monkeypatch: pytest.MonkeyPatch, extra: int
) -> None:
    body = json.dumps({"usage": wire.CHAT_USAGE}).encode()
    monkeypatch.setattr(taps, "JSON_BODY_LIMIT", len(body))
    body += b" " * extra  # still the same JSON
    tap = BodyTap("chat")
    assert run(tap, wire.rechunk([body], 9)) == body
    assert tap.usage == (wire.CHAT_USAGE_MAPPED if extra == 0 else None)
