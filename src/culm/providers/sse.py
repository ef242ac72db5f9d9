"""An incremental server-sent events parser, shared by the provider adapters.

It follows the WHATWG event-stream rules: lines end with CRLF, LF or CR (a CRLF split across two
chunks is still one line end); ``field: value`` lines (one space after the colon is dropped);
``data`` lines accumulate, joined by ``\\n``; a line starting with ``:`` is a comment; a blank
line dispatches the event; an event without data is dropped; an event still open when the stream
ends is discarded (a stream cut mid-event must not deliver half a JSON document).

It splits lines itself instead of using ``Response.aiter_lines()``, which splits on every Unicode
line break (U+2028, U+0085 …) and would tear JSON strings that contain those characters.
"""

from __future__ import annotations

import codecs
import re
from collections.abc import AsyncGenerator, AsyncIterable
from dataclasses import dataclass

_LINE_END = re.compile(r"\r\n|\r|\n")


@dataclass(frozen=True, slots=True)
class SSEEvent:
    """One dispatched event. ``event`` is ``"message"`` when the stream named none."""

    event: str
    data: str
    id: str | None = None


class SSEDecoder:
    """Feed it the body's bytes as they arrive; it returns the events completed so far."""

    def __init__(self) -> None:
        self._text = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._pending = ""  # an unterminated line, plus a held-back trailing CR
        self._started = False
        self._event = ""
        self._data: list[str] = []
        self._last_id: str | None = None

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        """Decode ``chunk`` and return every event it completes."""
        text = self._pending + self._text.decode(chunk)
        if not self._started and text:
            self._started = True
            text = text.removeprefix("\ufeff")
        if "\r" not in text:  # the usual stream (LF only): a plain split is a third the cost
            *lines, self._pending = text.split("\n")
            return self._fast_lines(lines)
        # A trailing CR may be the first half of a CRLF: keep it until more text arrives.
        held = "\r" if text.endswith("\r") else ""
        *lines, rest = _LINE_END.split(text[: len(text) - len(held)])
        self._pending = rest + held
        return self.decode_lines(lines)

    def _fast_lines(self, lines: list[str]) -> list[SSEEvent]:
        """:meth:`decode_lines` with the two usual lines (``data: …`` and the blank line that
        dispatches it) handled inline; every other line goes through :meth:`decode_line`."""
        events = []
        for line in lines:
            if line.startswith("data: "):
                self._data.append(line[6:])
            elif not line and self._data and not self._event:
                data = self._data[0] if len(self._data) == 1 else "\n".join(self._data)
                self._data = []
                events.append(SSEEvent("message", data, self._last_id))
            else:
                event = self.decode_line(line)
                if event is not None:
                    events.append(event)
        return events

    def flush(self) -> list[SSEEvent]:
        """End of stream: finish a line ended by a last CR; an open event is discarded."""
        pending, self._pending = self._pending, ""
        return self.decode_lines([pending[:-1]]) if pending.endswith("\r") else []

    def decode_lines(self, lines: list[str]) -> list[SSEEvent]:
        """Process complete lines (without their line ends)."""
        events = []
        for line in lines:
            event = self.decode_line(line)
            if event is not None:
                events.append(event)
        return events

    def decode_line(self, line: str) -> SSEEvent | None:
        """Process one complete line; return the event a blank line dispatches."""
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
        elif name == "id" and "\0" not in value:
            self._last_id = value
        return None  # "retry" and unknown fields are ignored

    def _dispatch(self) -> SSEEvent | None:
        name, self._event = self._event, ""
        if not self._data:
            return None
        data, self._data = "\n".join(self._data), []
        return SSEEvent(event=name or "message", data=data, id=self._last_id)


async def aiter_sse(chunks: AsyncIterable[bytes]) -> AsyncGenerator[SSEEvent, None]:
    """The events of a byte stream, as they complete."""
    decoder = SSEDecoder()
    async for chunk in chunks:
        for event in decoder.feed(chunk):
            yield event
    for event in decoder.flush():
        yield event
