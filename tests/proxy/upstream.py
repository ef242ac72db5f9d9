"""The fake provider behind the proxy: :class:`~tests.providers.fakes.FakeUpstream` plus what
the proxy's tests need besides (a :class:`ProxyReply`):

- ``answer_when``: hold the status line until an event is set (a slow provider);
- ``never_answer``: send nothing at all, wait for the client to leave (sets ``client_closed``);
- ``pause_after`` + ``resume``: send that many chunks, then wait for ``resume`` (sets
  ``paused`` first), then the rest;
- ``framing="length"``: a ``content-length`` body instead of a chunked one;
- ``extra_headers``: more header lines, repeats allowed (``connection``, ``keep-alive`` …).

``received`` is set once a request has arrived.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Literal

from tests.providers.fakes import FakeUpstream, Recorded, Reply

_PHRASES = {status.value: status.phrase for status in HTTPStatus}


@dataclass
class ProxyReply(Reply):
    answer_when: asyncio.Event | None = None
    never_answer: bool = False
    pause_after: int | None = None
    resume: asyncio.Event | None = None
    framing: Literal["chunked", "length"] = "chunked"
    extra_headers: list[tuple[str, str]] = field(default_factory=list)


class ProxyUpstream(FakeUpstream):
    def __init__(self) -> None:
        super().__init__()
        self.received = asyncio.Event()
        self.paused = asyncio.Event()

    def next_reply(self, request: Recorded) -> Reply:
        self.received.set()
        return super().next_reply(request)

    async def _send(
        self, reply: Reply, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        if not isinstance(reply, ProxyReply):
            return await super()._send(reply, reader, writer)
        if reply.never_answer:
            await self._until_closed(reader)
            return False
        if reply.answer_when is not None:
            await reply.answer_when.wait()
        chunked = reply.end != "close" and reply.framing == "chunked"
        framing = (
            [("connection", "close")]
            if reply.end == "close"
            else [("transfer-encoding", "chunked")]
            if chunked
            else [("content-length", str(sum(map(len, reply.chunks))))]
        )
        lines = [f"HTTP/1.1 {reply.status} {_PHRASES.get(reply.status, 'Unknown')}"]
        lines += [f"{k}: {v}" for k, v in [*reply.headers.items(), *reply.extra_headers, *framing]]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        await writer.drain()
        for index, chunk in enumerate(reply.chunks):
            if index == reply.pause_after:
                assert reply.resume is not None
                self.paused.set()
                await reply.resume.wait()
            writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk) if chunked else chunk)
            await writer.drain()
        if reply.end == "complete":
            if chunked:
                writer.write(b"0\r\n\r\n")
                await writer.drain()
            return True
        if reply.end == "stall":
            await self._until_closed(reader)
        return False

    async def _until_closed(self, reader: asyncio.StreamReader) -> None:
        with contextlib.suppress(ConnectionError):
            while await reader.read(65536):
                pass
        self.client_closed.set()
