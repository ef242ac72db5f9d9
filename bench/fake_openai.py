"""A fast fake OpenAI upstream for the proxy benchmark: Chat Completions with zero delay.

A raw ``asyncio.Protocol`` HTTP/1.1 server (keep-alive, no framework), so that it costs little
next to the proxies it stands behind. It speaks:

* ``POST /v1/chat/completions``: without ``"stream": true``, one JSON completion with a
  ``usage`` object; with it, Server-Sent Events (``Transfer-Encoding: chunked``): a first chunk
  with ``delta.role``, ``--chunks`` content chunks (one word each), a chunk with
  ``finish_reason: "stop"``, then, when ``stream_options.include_usage`` is true, a chunk with
  ``choices: []`` and ``usage``, and ``data: [DONE]``. The response echoes the request's
  ``model``. By default the whole stream is written at once; ``--chunk-delay-ms`` sleeps between
  content chunks instead.
* With ``--tool NAME`` (bench/peers.py's two-round tool task), a request whose ``messages`` hold
  no ``role: "tool"`` message is answered with one call (arguments ``{}``, ``finish_reason:
  "tool_calls"``; streamed, it is one write) of the request's first tool, or of ``NAME`` if it
  offers none, and a request that holds the tool's result gets the answer above: the same task
  for every client, whatever its framework remembers between rounds.
* ``--park-s`` holds every completion that long before its first byte (a model that has not
  answered yet), so that a benchmark can count how many requests are waiting (``/stats``:
  ``parked_now``, the requests held at this moment whose client is still connected).
* ``GET /v1/models``: the models of ``--models`` (any model name is accepted by the completions
  route anyway).
* ``GET /health``: ``{"status": "ok"}``; ``GET /stats``: requests served so far (chat, of which
  streaming, models), connections accepted (and of them, those that carried a completion), and
  bad requests, for the benchmark's checks.

Any other route answers 404 in OpenAI's error format. Responses are built once per (model,
stream, include_usage, tool round) and cached.

Run it as its own process::

    .venv/bin/python bench/fake_openai.py --port 9100
    .venv/bin/python bench/fake_openai.py --port 9100 --chunks 50 --chunk-delay-ms 5
    .venv/bin/python bench/fake_openai.py --port 0 --chunks 100 --tool noop --park-s 60
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from typing import Any

CREATED = 1_700_000_000
MAX_HEAD = 64 * 1024
MAX_BODY = 16 * 2**20
REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed"}


class Upstream:
    """Builds (and caches) the responses; counts what it served."""

    def __init__(
        self,
        chunks: int,
        models: list[str],
        chunk_delay: float,
        tool: str | None = None,
        park: float = 0.0,
    ) -> None:
        self.chunks = chunks
        self.models = models
        self.chunk_delay = chunk_delay
        self.tool = tool
        self.park = park
        self.words = [f"w{i} " for i in range(chunks)]
        self.cache: dict[tuple[str, bool, bool], Any] = {}
        self.tool_cache: dict[tuple[str, bool, str], bytes] = {}
        self.stats = {
            "chat": 0,
            "chat_stream": 0,
            "tool_rounds": 0,
            "answer_rounds": 0,
            "parked_now": 0,  # requests held by --park-s right now (a client's retry is not new)
            "models": 0,
            "connections": 0,
            "chat_connections": 0,  # connections that carried a chat completion (not /stats)
            "bad_requests": 0,
            "not_found": 0,
        }

    def usage(self) -> dict[str, int]:
        return {
            "prompt_tokens": 12,
            "completion_tokens": self.chunks,
            "total_tokens": 12 + self.chunks,
        }

    def completion(self, model: str) -> bytes:
        key = (model, False, False)
        cached = self.cache.get(key)
        if cached is None:
            body = json.dumps(
                {
                    "id": "chatcmpl-bench",
                    "object": "chat.completion",
                    "created": CREATED,
                    "model": model,
                    "system_fingerprint": None,
                    "choices": [
                        {
                            "index": 0,
                            "message": {
                                "role": "assistant",
                                "content": "".join(self.words),
                                "refusal": None,
                            },
                            "logprobs": None,
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": self.usage(),
                },
                separators=(",", ":"),
            ).encode()
            cached = self.cache[key] = response(200, body, b"application/json")
        assert isinstance(cached, bytes)
        return cached

    def stream_frames(self, model: str, include_usage: bool) -> list[bytes]:
        """The SSE events, each already framed as one HTTP chunk."""
        key = (model, True, include_usage)
        cached = self.cache.get(key)
        if cached is None:

            def chunk(delta: dict[str, Any], finish: str | None) -> dict[str, Any]:
                payload: dict[str, Any] = {
                    "id": "chatcmpl-bench",
                    "object": "chat.completion.chunk",
                    "created": CREATED,
                    "model": model,
                    "system_fingerprint": None,
                    "choices": [
                        {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
                    ],
                }
                if include_usage:
                    payload["usage"] = None
                return payload

            events = [chunk({"role": "assistant", "content": ""}, None)]
            events += [chunk({"content": word}, None) for word in self.words]
            events.append(chunk({}, "stop"))
            if include_usage:
                last = chunk({}, None)
                last["choices"] = []
                last["usage"] = self.usage()
                events.append(last)
            frames = [
                http_chunk(b"data: " + json.dumps(e, separators=(",", ":")).encode() + b"\n\n")
                for e in events
            ]
            frames.append(http_chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n")
            cached = self.cache[key] = frames
        assert isinstance(cached, list)
        return cached

    def tool_call(self, model: str, stream: bool, tool: str) -> bytes:
        """One call of ``tool`` with no arguments: a whole response, streamed or not."""
        key = (model, stream, tool)
        cached = self.tool_cache.get(key)
        if cached is not None:
            return cached
        call = {"id": "call_bench", "type": "function", "function": {"name": tool}}
        if not stream:
            message = {"role": "assistant", "content": None, "refusal": None}
            message["tool_calls"] = [{**call, "function": {"name": tool, "arguments": "{}"}}]
            body = {
                "id": "chatcmpl-bench",
                "object": "chat.completion",
                "created": CREATED,
                "model": model,
                "choices": [{"index": 0, "message": message, "finish_reason": "tool_calls"}],
                "usage": {"prompt_tokens": 12, "completion_tokens": 1, "total_tokens": 13},
            }
            cached = response(200, json.dumps(body).encode(), b"application/json")
        else:
            opening = {"index": 0, **call, "function": {"name": tool, "arguments": ""}}
            deltas: list[tuple[dict[str, Any], str | None]] = [
                ({"role": "assistant", "content": None}, None),
                ({"tool_calls": [opening]}, None),
                ({"tool_calls": [{"index": 0, "function": {"arguments": "{}"}}]}, None),
                ({}, "tool_calls"),
            ]
            frames = b"".join(
                http_chunk(b"data: " + json.dumps(stream_chunk(model, *delta)).encode() + b"\n\n")
                for delta in deltas
            )
            cached = STREAM_HEAD + frames + http_chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n"
        self.tool_cache[key] = cached
        return cached

    def models_list(self) -> bytes:
        key = ("", False, True)
        cached = self.cache.get(key)
        if cached is None:
            data = [
                {"id": name, "object": "model", "created": CREATED, "owned_by": "bench"}
                for name in self.models
            ]
            body = json.dumps({"object": "list", "data": data}).encode()
            cached = self.cache[key] = response(200, body, b"application/json")
        assert isinstance(cached, bytes)
        return cached


def stream_chunk(model: str, delta: dict[str, Any], finish: str | None) -> dict[str, Any]:
    return {
        "id": "chatcmpl-bench",
        "object": "chat.completion.chunk",
        "created": CREATED,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }


def has_tool_result(request: dict[str, Any]) -> bool:
    messages = request.get("messages")
    return isinstance(messages, list) and any(
        isinstance(m, dict) and m.get("role") == "tool" for m in messages
    )


def first_tool(request: dict[str, Any]) -> str | None:
    """The name of the first function tool the request offers, if any."""
    for offered in request.get("tools") or []:
        function = offered.get("function") if isinstance(offered, dict) else None
        if isinstance(function, dict) and isinstance(function.get("name"), str):
            return str(function["name"])
    return None


def response(status: int, body: bytes, content_type: bytes, extra: bytes = b"") -> bytes:
    head = b"HTTP/1.1 %d %s\r\ncontent-type: %s\r\ncontent-length: %d\r\n%s\r\n" % (
        status,
        REASONS[status].encode(),
        content_type,
        len(body),
        extra,
    )
    return head + body


def error(status: int, message: str, kind: str) -> bytes:
    body = json.dumps({"error": {"message": message, "type": kind, "param": None, "code": None}})
    return response(status, body.encode(), b"application/json")


def http_chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


STREAM_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\n"
    b"cache-control: no-cache\r\ntransfer-encoding: chunked\r\n\r\n"
)


class Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection; requests are answered in order."""

    def __init__(self, upstream: Upstream) -> None:
        self.upstream = upstream
        self.buffer = b""
        self.transport: asyncio.Transport | None = None
        self.busy = False  # a delayed stream is being written
        self.close_after = False
        self.gone: asyncio.Future[None] | None = None  # set when the client hangs up
        self.chatted = False  # carried a chat completion

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.upstream.stats["connections"] += 1

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if not self.busy:
            self.process()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self.gone is not None and not self.gone.done():
            self.gone.set_result(None)

    def process(self) -> None:
        while self.transport is not None and not self.busy:
            request = self.parse()
            if request is None:
                return
            self.handle(*request)
            if self.close_after and not self.busy and self.transport is not None:
                self.transport.close()

    def parse(self) -> tuple[bytes, bytes, bytes] | None:
        """The next complete request as (method, path, body), or None if incomplete."""
        buf = self.buffer
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            if len(buf) > MAX_HEAD:
                self.fail(b"request head too large")
            return None
        lines = buf[:end].split(b"\r\n")
        parts = lines[0].split(b" ")
        if len(parts) != 3:
            self.fail(b"bad request line")
            return None
        method, target, version = parts
        length = 0
        chunked = False
        connection = b""
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding":
                chunked = b"chunked" in value.lower()
            elif name == b"connection":
                connection = value.strip().lower()
        start = end + 4
        if chunked:
            decoded = dechunk(buf, start)
            if decoded is None:
                return None
            body, consumed = decoded
        else:
            if length > MAX_BODY:
                self.fail(b"body too large")
                return None
            if len(buf) < start + length:
                return None
            body, consumed = buf[start : start + length], start + length
        self.buffer = buf[consumed:]
        self.close_after = connection == b"close" or (
            version == b"HTTP/1.0" and connection != b"keep-alive"
        )
        return method, target.split(b"?", 1)[0], body

    def fail(self, message: bytes) -> None:
        assert self.transport is not None
        self.upstream.stats["bad_requests"] += 1
        self.transport.write(response(400, message, b"text/plain", b"connection: close\r\n"))
        self.transport.close()
        self.buffer = b""

    def handle(self, method: bytes, path: bytes, body: bytes) -> None:
        transport = self.transport
        assert transport is not None
        upstream = self.upstream
        if path.endswith(b"/chat/completions"):
            if method != b"POST":
                transport.write(error(405, "use POST", "invalid_request_error"))
                return
            try:
                request = json.loads(body)
                model = str(request.get("model") or "unknown")
                stream = bool(request.get("stream"))
                options = request.get("stream_options") or {}
                include_usage = bool(options.get("include_usage"))
                tool_round = upstream.tool is not None and not has_tool_result(request)
                tool = first_tool(request) or upstream.tool or ""
            except (ValueError, AttributeError) as exc:
                upstream.stats["bad_requests"] += 1
                transport.write(error(400, f"bad JSON body: {exc}", "invalid_request_error"))
                return
            upstream.stats["chat"] += 1
            upstream.stats["chat_connections"] += not self.chatted
            self.chatted = True
            upstream.stats["chat_stream"] += stream
            upstream.stats["tool_rounds" if tool_round else "answer_rounds"] += 1
            if tool_round:
                frames = [upstream.tool_call(model, stream, tool)]
            elif not stream:
                frames = [upstream.completion(model)]
            else:
                frames = upstream.stream_frames(model, include_usage)
                frames = [STREAM_HEAD + frames[0], *frames[1:]]
            if upstream.park > 0 or (stream and not tool_round and upstream.chunk_delay > 0):
                self.busy = True
                delay = 0.0 if tool_round else upstream.chunk_delay
                asyncio.get_running_loop().create_task(self.trickle(frames, delay))
            else:
                transport.write(b"".join(frames))
        elif path.endswith(b"/models") and method == b"GET":
            upstream.stats["models"] += 1
            transport.write(upstream.models_list())
        elif path == b"/health":
            transport.write(response(200, b'{"status":"ok"}', b"application/json"))
        elif path == b"/stats":
            body = json.dumps(upstream.stats).encode()
            transport.write(response(200, body, b"application/json"))
        else:
            upstream.stats["not_found"] += 1
            transport.write(error(404, f"no route {path.decode(errors='replace')}", "not_found"))

    async def park(self) -> None:
        """Hold the request for ``--park-s`` while its client is connected: a client that hangs
        up leaves ``parked_now`` at once, so that the next process a benchmark starts does not
        find the last one's requests still counted."""
        stats = self.upstream.stats
        if self.transport is None:
            return
        stats["parked_now"] += 1
        self.gone = asyncio.get_running_loop().create_future()
        try:
            await asyncio.wait_for(self.gone, self.upstream.park)
        except TimeoutError:
            pass
        finally:
            stats["parked_now"] -= 1
            self.gone = None

    async def trickle(self, frames: list[bytes], delay: float) -> None:
        """Write a response after ``--park-s``, with ``delay`` between its frames (the content
        chunks of a stream: ``--chunk-delay-ms``)."""
        try:
            if self.upstream.park > 0:
                await self.park()
            for i, frame in enumerate(frames):
                if i and delay > 0:
                    await asyncio.sleep(delay)
                transport = self.transport  # None once the client has gone
                if transport is None:
                    return
                transport.write(frame)
        finally:
            self.busy = False
        if self.close_after and self.transport is not None:
            self.transport.close()
        elif self.buffer:
            self.process()


def dechunk(buf: bytes, pos: int) -> tuple[bytes, int] | None:
    """A chunked request body starting at ``pos``: (body, end offset), or None if incomplete."""
    pieces: list[bytes] = []
    while True:
        line_end = buf.find(b"\r\n", pos)
        if line_end < 0:
            return None
        size = int(buf[pos:line_end].split(b";", 1)[0], 16)
        if size == 0:
            trailer_end = buf.find(b"\r\n\r\n", line_end)
            if trailer_end < 0:
                return None
            return b"".join(pieces), trailer_end + 4
        end = line_end + 2 + size
        if len(buf) < end + 2:
            return None
        pieces.append(buf[line_end + 2 : end])
        pos = end + 2


async def serve(args: argparse.Namespace) -> None:
    upstream = Upstream(
        args.chunks,
        args.models.split(","),
        args.chunk_delay_ms / 1000,
        tool=args.tool,
        park=args.park_s,
    )
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: Connection(upstream), args.host, args.port, backlog=1024, reuse_address=True
    )
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    port = server.sockets[0].getsockname()[1]
    print(f"fake OpenAI upstream on http://{args.host}:{port}/v1", flush=True)
    async with server:
        await stop.wait()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9100, help="0 picks a free port")
    parser.add_argument(
        "--chunks", type=int, default=20, help="content chunks per streamed answer (default 20)"
    )
    parser.add_argument(
        "--chunk-delay-ms",
        type=float,
        default=0.0,
        help="sleep between streamed content chunks (default 0: the whole stream at once)",
    )
    parser.add_argument(
        "--tool",
        default=None,
        help="answer a request without a tool result with a call of this tool (no arguments)",
    )
    parser.add_argument(
        "--park-s", type=float, default=0.0, help="hold every completion this long (default 0)"
    )
    parser.add_argument(
        "--models", default="gpt-bench", help="comma-separated names for GET /v1/models"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    asyncio.run(serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
