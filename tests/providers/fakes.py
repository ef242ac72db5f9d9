"""A fake upstream provider: a real HTTP/1.1 server on 127.0.0.1 that plays scripted replies.

Each request takes the next :class:`Reply` from the queue and records a :class:`Recorded`
request. A reply streams its chunks with chunked transfer encoding and then ends in one of
four ways (``Reply.end``):

- ``"complete"``: the terminating chunk; the connection stays open for the next request.
- ``"cut"``: the socket is closed mid-body (no terminating chunk).
- ``"close"``: no framing at all; the body ends when the server closes the connection.
- ``"stall"``: nothing more is sent; the server waits until the client closes the connection
  and then sets :attr:`FakeUpstream.client_closed`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import deque
from dataclasses import dataclass, field
from http import HTTPStatus
from types import TracebackType
from typing import Any, Literal, Self

_PHRASES = {status.value: status.phrase for status in HTTPStatus}


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    # Every header line as sent (lower-case names), repeats included.
    header_list: list[tuple[str, str]] = field(default_factory=list)

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Reply:
    status: int = 200
    headers: dict[str, str] = field(default_factory=lambda: {"content-type": "text/event-stream"})
    chunks: list[bytes] = field(default_factory=list)
    end: Literal["complete", "cut", "close", "stall"] = "complete"


def json_reply(status: int, payload: Any, headers: dict[str, str] | None = None) -> Reply:
    """An error (or other JSON) response."""
    all_headers = {"content-type": "application/json", **(headers or {})}
    return Reply(status=status, headers=all_headers, chunks=[json.dumps(payload).encode()])


def openai_events(*chunks: dict[str, Any] | str) -> list[bytes]:
    """``data:`` events, one per chunk; a string is sent as it is (``"[DONE]"``)."""
    return [f"data: {c if isinstance(c, str) else json.dumps(c)}\n\n".encode() for c in chunks]


def anthropic_events(*events: dict[str, Any]) -> list[bytes]:
    """``event: <type>`` + ``data:`` pairs, as the Messages API sends them."""
    return [f"event: {e['type']}\ndata: {json.dumps(e)}\n\n".encode() for e in events]


class FakeUpstream:
    """Use as ``async with FakeUpstream() as upstream``; ``upstream.url`` is its base URL."""

    def __init__(self) -> None:
        self.requests: list[Recorded] = []
        self.connections = 0
        self.client_closed = asyncio.Event()
        self._replies: deque[Reply] = deque()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._server: asyncio.Server | None = None
        self.url = ""

    def push(self, *replies: Reply) -> None:
        self._replies.extend(replies)

    def next_reply(self, request: Recorded) -> Reply:
        """The reply to ``request``: the next pushed one (a subclass may route by request)."""
        return self._replies.popleft() if self._replies else _unscripted()

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._server is not None
        self._server.close()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.connections += 1
        try:
            while (request := await _read_request(reader)) is not None:
                self.requests.append(request)
                reply = self.next_reply(request)
                if not await self._send(reply, reader, writer):
                    break
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self._tasks.discard(task)
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _send(
        self, reply: Reply, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        """Write ``reply``; return whether the connection can serve another request."""
        framing = (
            {"connection": "close"} if reply.end == "close" else {"transfer-encoding": "chunked"}
        )
        lines = [f"HTTP/1.1 {reply.status} {_PHRASES.get(reply.status, 'Unknown')}"]
        lines += [f"{k}: {v}" for k, v in {**reply.headers, **framing}.items()]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        for chunk in reply.chunks:
            writer.write(chunk if reply.end == "close" else b"%x\r\n%s\r\n" % (len(chunk), chunk))
            await writer.drain()
        if reply.end == "complete":
            writer.write(b"0\r\n\r\n")
            await writer.drain()
            return True
        if reply.end == "stall":
            with contextlib.suppress(ConnectionError):
                while await reader.read(65536):
                    pass
            self.client_closed.set()
        return False


async def _read_request(reader: asyncio.StreamReader) -> Recorded | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None
    request_line, *header_lines = head.decode("latin-1").split("\r\n")
    method, path, _ = request_line.split(" ", 2)
    header_list = []
    for line in header_lines:
        if line:
            name, _, value = line.partition(":")
            header_list.append((name.strip().lower(), value.strip()))
    headers = dict(header_list)
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return Recorded(method=method, path=path, headers=headers, body=body, header_list=header_list)


def _unscripted() -> Reply:
    return json_reply(500, {"error": {"message": "the fake upstream has no reply scripted"}})
