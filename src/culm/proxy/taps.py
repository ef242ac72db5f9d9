"""Taps: read the usage out of a forwarded response while its bytes pass through.

A tap sees the upstream body chunk by chunk (:meth:`Tap.feed`) and returns the bytes to send on.
They are the chunk itself, at once, except in one case: a Chat Completions stream for which the
proxy asked for usage on the client's behalf (``stream_options.include_usage``). Then the tap
sends whole events only and leaves out the usage-only chunk (``"choices": []`` with a
``usage``), so the client gets the stream it asked for. An event that is still incomplete at the
end of a chunk is held back until its blank line arrives; :meth:`Tap.close` returns what is left.

Where the usage is:

- Chat Completions: the chunk whose ``usage`` is not null (the last one); a whole JSON body's
  ``usage``. Mapped by :func:`~culm.providers.openai.chat_usage`.
- Responses: ``response.completed`` (or ``.incomplete`` / ``.failed``) → ``response.usage``; a
  whole body's ``usage``. Mapped by :func:`responses_usage`.
- Messages: ``message_start`` → ``message.usage``, then each ``message_delta`` → ``usage``
  (cumulative: later values replace earlier ones); a whole body's ``usage``. Mapped by
  :func:`~culm.providers.anthropic.messages_usage`.

Only events that can carry usage are decoded, so a token chunk costs a byte search, not a JSON
parse. When the span records message content, the forwarder gives the tap a ``content`` recorder
(:mod:`culm.tracing.wire_content`): then every event (or the whole body) goes to it as well.
Without one, nothing more is read or kept.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any, Final, Literal

from culm.domain.models import Usage
from culm.providers.anthropic import messages_usage
from culm.providers.http import json_or_none, provider_message
from culm.providers.openai import chat_usage
from culm.tracing.wire_content import OutputRecorder

UsageFormat = Literal["chat", "responses", "messages", "none"]

# A whole JSON body is kept (to read its usage) up to this size; past it, usage is not read.
JSON_BODY_LIMIT: Final = 16 * 1024 * 1024

_EVENT_END = re.compile(rb"\r\n\r\n|\n\n|\r\r")
_NULL_USAGE = re.compile(rb'"usage"\s*:\s*null')
_RESPONSE_DONE = (b"response.completed", b"response.incomplete", b"response.failed")


def responses_usage(usage: Mapping[str, Any]) -> Usage:
    """A Responses API ``usage`` object in culm's terms."""
    prompt = usage.get("input_tokens") or 0
    completion = usage.get("output_tokens") or 0
    input_details = usage.get("input_tokens_details") or {}
    output_details = usage.get("output_tokens_details") or {}
    return Usage(
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=usage.get("total_tokens") or prompt + completion,
        cache_read_tokens=input_details.get("cached_tokens") or 0,
        reasoning_tokens=output_details.get("reasoning_tokens") or 0,
    )


_MAPPINGS: Final[dict[UsageFormat, Callable[[Mapping[str, Any]], Usage]]] = {
    "chat": chat_usage,
    "responses": responses_usage,
    "messages": messages_usage,
}


class Tap:
    """Passes bytes through unchanged and reads nothing (``GET /models``)."""

    usage: Usage | None = None
    # The provider's error message, from an error body or an ``error`` stream event.
    error: str | None = None
    # ``feed`` returns its chunk unchanged: it may be sent on before the tap reads it.
    passes_through = True
    # Reads the answer's content for the span, when it records content (else None).
    content: OutputRecorder | None = None

    def feed(self, chunk: bytes) -> bytes:
        return chunk

    def close(self) -> bytes:
        return b""


class BodyTap(Tap):
    """A whole (non-streaming) body: kept, then read at the end. With ``failed``, the body is an
    error response and only its message is read."""

    def __init__(self, usage_format: UsageFormat, *, failed: bool = False) -> None:
        self._format = usage_format
        self._failed = failed
        self._parts: list[bytes] = []
        self._size = 0

    def feed(self, chunk: bytes) -> bytes:
        self._size += len(chunk)
        if self._size <= JSON_BODY_LIMIT:
            self._parts.append(chunk)
        return chunk

    def close(self) -> bytes:
        if self._size > JSON_BODY_LIMIT:
            return b""
        body = b"".join(self._parts)
        if self._failed:
            self.error = provider_message(body)
            return b""
        mapping = _MAPPINGS.get(self._format)
        payload = json_or_none(body)
        usage = payload.get("usage") if isinstance(payload, dict) else None
        if mapping is not None and isinstance(usage, Mapping):
            self.usage = mapping(usage)
        if self.content is not None and isinstance(payload, dict):
            self.content.body(payload)
        return b""


class EventTap(Tap):
    """A server-sent event stream. Subclasses say what an event means (:meth:`inspect`)."""

    def __init__(self, *, hold: bool = False) -> None:
        # ``hold``: send whole events only, so :meth:`inspect` may leave one out.
        self.passes_through = not hold
        self._pending = b""

    def feed(self, chunk: bytes) -> bytes:
        data = self._pending + chunk if self._pending else chunk
        start = 0
        kept: list[bytes] = []
        for match in _EVENT_END.finditer(data):
            event = data[start : match.end()]
            start = match.end()
            if self.content is not None:
                self.content.event(_data(event))
            if self.inspect(event) and not self.passes_through:
                kept.append(event)
        self._pending = data[start:]
        if self.passes_through:
            return chunk
        return b"".join(kept) if len(kept) != 1 else kept[0]

    def close(self) -> bytes:
        rest, self._pending = self._pending, b""
        if rest.strip():
            self.inspect(rest)
        return b"" if self.passes_through else rest

    def inspect(self, event: bytes) -> bool:
        """Read one whole event; ``False`` leaves it out of a held stream."""
        return True


class ChatCompletionsTap(EventTap):
    """With ``hide_usage_chunk``, the usage-only chunk is read but not sent on."""

    def __init__(self, *, hide_usage_chunk: bool) -> None:
        super().__init__(hold=hide_usage_chunk)

    def inspect(self, event: bytes) -> bool:
        if b'"usage"' not in event or _NULL_USAGE.search(event):
            return True
        payload = json_or_none(_data(event))
        usage = payload.get("usage") if isinstance(payload, dict) else None
        if not isinstance(usage, Mapping):
            return True
        self.usage = chat_usage(usage)
        return bool(payload.get("choices"))


class ResponsesTap(EventTap):
    def inspect(self, event: bytes) -> bool:
        if not any(kind in event for kind in _RESPONSE_DONE):
            return True
        payload = json_or_none(_data(event))
        response = payload.get("response") if isinstance(payload, dict) else None
        if not isinstance(response, dict):
            return True
        usage = response.get("usage")
        if isinstance(usage, Mapping):
            self.usage = responses_usage(usage)
        if response.get("status") == "failed":
            error = response.get("error")
            message = error.get("message") if isinstance(error, dict) else None
            self.error = str(message or "the response failed")
        return True


class MessagesTap(EventTap):
    def __init__(self) -> None:
        super().__init__()
        self._raw: dict[str, int] = {}

    def inspect(self, event: bytes) -> bool:
        if b"message_start" in event:
            payload = json_or_none(_data(event))
            message = payload.get("message") if isinstance(payload, dict) else None
            self._update(message.get("usage") if isinstance(message, dict) else None)
        elif b"message_delta" in event:
            payload = json_or_none(_data(event))
            self._update(payload.get("usage") if isinstance(payload, dict) else None)
        elif event.startswith(b"event: error") or event.startswith(b"event:error"):
            self.error = provider_message(_data(event))
        return True

    def _update(self, usage: Any) -> None:
        if isinstance(usage, Mapping):
            self._raw.update({k: v for k, v in usage.items() if isinstance(v, int)})
            self.usage = messages_usage(self._raw)


def stream_tap(usage_format: UsageFormat, *, hide_usage_chunk: bool) -> Tap:
    """The tap for an event stream of ``usage_format``."""
    if usage_format == "chat":
        return ChatCompletionsTap(hide_usage_chunk=hide_usage_chunk)
    if usage_format == "responses":
        return ResponsesTap()
    if usage_format == "messages":
        return MessagesTap()
    return Tap()


def _data(event: bytes) -> bytes:
    """The ``data:`` lines of one event, joined as the SSE spec says."""
    lines = [
        line[5:].removeprefix(b" ") for line in event.splitlines() if line.startswith(b"data:")
    ]
    return b"\n".join(lines)
