"""The incremental SSE parser: framing, fields, line ends, and chunk boundaries anywhere."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from culm.providers.sse import SSEDecoder, SSEEvent, aiter_sse


def decode(*chunks: bytes) -> list[SSEEvent]:
    decoder = SSEDecoder()
    events = [event for chunk in chunks for event in decoder.feed(chunk)]
    return events + decoder.flush()


def bytewise(stream: bytes) -> list[SSEEvent]:
    return decode(*(stream[i : i + 1] for i in range(len(stream))))


def test_data_events_default_to_message() -> None:
    assert decode(b"data: one\n\ndata: two\n\n") == [
        SSEEvent(event="message", data="one"),
        SSEEvent(event="message", data="two"),
    ]


def test_event_name_id_and_multiline_data() -> None:
    stream = b"event: content_block_delta\nid: 7\ndata: a\ndata:b\ndata:  c\n\n"
    assert decode(stream) == [SSEEvent(event="content_block_delta", data="a\nb\n c", id="7")]


def test_event_name_does_not_leak_into_the_next_event() -> None:
    assert [e.event for e in decode(b"event: ping\ndata: {}\n\ndata: x\n\n")] == ["ping", "message"]


def test_comments_retry_unknown_fields_and_dataless_events_are_ignored() -> None:
    stream = b": ping\nretry: 100\nfoo: bar\n\nevent: lonely\n\ndata\n\n"
    # "data" with no colon is a data line with an empty value.
    assert decode(stream) == [SSEEvent(event="message", data="")]


@pytest.mark.parametrize("newline", [b"\n", b"\r\n", b"\r"])
def test_every_line_end(newline: bytes) -> None:
    stream = newline.join([b"event: e", b"data: 1", b"", b"data: 2", b"", b""])
    expected = [SSEEvent(event="e", data="1"), SSEEvent(event="message", data="2")]
    assert decode(stream) == expected
    assert bytewise(stream) == expected


def test_crlf_split_between_chunks_is_one_line_end() -> None:
    assert decode(b"data: a\r", b"\ndata: b\r", b"\n\r", b"\n") == [
        SSEEvent(event="message", data="a\nb")
    ]


def test_a_final_cr_ends_the_last_line() -> None:
    assert decode(b"data: a\r\r") == [SSEEvent(event="message", data="a")]


def test_unicode_line_separators_inside_data_do_not_split_lines() -> None:
    text = 'data: {"t": "a\u2028b\u0085c\u000cd"}\n\n'
    assert decode(text.encode()) == [SSEEvent(event="message", data=text[6:-2])]


def test_multibyte_characters_split_across_chunks() -> None:
    stream = "data: héllo ✓ 🎉\n\n".encode()
    assert bytewise(stream) == [SSEEvent(event="message", data="héllo ✓ 🎉")]


def test_byte_order_mark_is_skipped() -> None:
    assert decode(b"\xef\xbb\xbfdata: x\n\n") == [SSEEvent(event="message", data="x")]


def test_an_event_still_open_at_the_end_is_discarded() -> None:
    assert decode(b'data: {"complete": true}\n\ndata: {"cut') == [
        SSEEvent(event="message", data='{"complete": true}')
    ]
    assert decode(b"data: no blank line\n") == []


async def test_aiter_sse_over_an_async_byte_stream() -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for chunk in (b"event: a\nda", b"ta: 1\n", b"\ndata: 2\n\n", b"data: open"):
            yield chunk

    assert [event async for event in aiter_sse(chunks())] == [
        SSEEvent(event="a", data="1"),
        SSEEvent(event="message", data="2"),
    ]


def test_lf_streams_decode_as_crlf_streams_do() -> None:
    """The LF-only fast path gives the same events as the general path (a CR anywhere in the
    text takes that one): every field, a named event after an unnamed one, an id kept across
    events, multi-line data, a comment, data without the space, whole and byte by byte."""
    stream = (
        "data: one\n\nid: 4\ndata: a\ndata:b\ndata:  c\n\n: note\nevent: ping\ndata: x\n\n"
        "data: after a named one\n\ndata\n\ndata:\n\n\n\ndata: é ✓\n\n"
    )
    lf = stream.encode()
    crlf = stream.replace("\n", "\r\n").encode()
    expected = [
        SSEEvent(event="message", data="one"),
        SSEEvent(event="message", data="a\nb\n c", id="4"),
        SSEEvent(event="ping", data="x", id="4"),
        SSEEvent(event="message", data="after a named one", id="4"),
        SSEEvent(event="message", data="", id="4"),
        SSEEvent(event="message", data="", id="4"),
        SSEEvent(event="message", data="é ✓", id="4"),
    ]
    assert decode(lf) == decode(crlf) == bytewise(lf) == bytewise(crlf) == expected
