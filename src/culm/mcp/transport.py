"""Opening one connection to an MCP server with the ``mcp`` SDK (2.x): :func:`open_client`.

The SDK's ``Client`` negotiates the protocol era itself (``server/discover``, or the
``initialize`` handshake with older servers). Its transports run anyio task groups, so the
context manager must be entered and left by one task (the connection's owner task); other tasks
may send requests through the client meanwhile.

A stdio server runs under :mod:`culm.tools.reaper` (it and whatever it starts end when it is
stopped, and when culm dies, ``kill -9`` included) with
:func:`~culm.tools.process.minimal_environment` plus its configured ``env``, never culm's own
environment. Its stderr goes to a log file (the server's chatter stays out of culm's output, and
its last lines explain a crash). The connection reports its end through ``lost``: set when the
server closes its side (a stdio server exited).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self, TextIO

import anyio
import httpx2
from mcp import Client, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from mcp.types import CONNECTION_CLOSED, REQUEST_TIMEOUT, Implementation

from culm._version import __version__
from culm.errors import ToolFailure
from culm.mcp.config import HttpServer, ServerConfig, StdioServer
from culm.mcp.tool import CallResult, ProgressCallback, RemoteTool
from culm.tools.process import minimal_environment, reaped

if TYPE_CHECKING:
    from mcp.client import Transport
    from mcp.client._transport import ReadStream, TransportStreams
    from mcp.shared.message import SessionMessage
    from mcp.types import CallToolResult, ContentBlock, Tool

CLIENT_INFO = Implementation(name="culm", version=__version__)
MAX_LIST_PAGES = 100
CLOSED = "the server closed the connection"
HTTP_CONNECT_TIMEOUT = 10.0
# A Streamable HTTP server may hold a response stream open while a tool runs.
HTTP_READ_TIMEOUT = 300.0
STDERR_TAIL_BYTES = 4096
STDERR_TAIL_LINES = 5
KILL_GRACE = 1.0
"""Seconds a stopped server's leftover processes get between SIGTERM and SIGKILL (the SDK sends
SIGKILL to the server's group 2 s after SIGTERM)."""


@contextlib.asynccontextmanager
async def open_client(
    config: ServerConfig, *, lost: asyncio.Event, log: Path, request_timeout: float
) -> AsyncIterator[Client]:
    """A connected client for ``config`` (the handshake done); closed (a stdio server stopped)
    on exit. ``request_timeout`` bounds the handshake and listings; tool calls pass their own."""
    async with contextlib.AsyncExitStack() as stack:
        if isinstance(config, StdioServer):
            transport = stdio_client(
                _stdio_parameters(config), errlog=stack.enter_context(_log(log))
            )
        else:
            transport = streamable_http_client(
                config.url, http_client=await stack.enter_async_context(_http_client(config))
            )
        client = Client(
            _watch(transport, lost),
            cache=None,
            read_timeout_seconds=request_timeout,
            client_info=CLIENT_INFO,
        )
        yield await stack.enter_async_context(client)


class ConnectionLost(Exception):
    """The connection ended under a request (the server exited, or the client was closed)."""


async def list_tools(client: Client) -> list[RemoteTool]:
    """Every tool the server offers (all pages)."""
    listed: list[Tool] = []
    cursor: str | None = None
    with _lost_on_close():
        for _ in range(MAX_LIST_PAGES):
            page = await client.list_tools(cursor=cursor)
            listed.extend(page.tools)
            cursor = page.next_cursor
            if cursor is None:
                break
    return [_remote_tool(tool) for tool in listed]


async def call_tool(
    client: Client,
    name: str,
    arguments: dict[str, Any],
    *,
    timeout: float,
    on_progress: ProgressCallback | None = None,
) -> CallResult:
    """Call ``name``; :class:`ConnectionLost` when the connection ends meanwhile, and
    :class:`~culm.errors.ToolFailure` (a predicate: "refused the call: …") when the server
    refuses the call or answers nonsense."""
    try:
        result = await client.call_tool(
            name, arguments, read_timeout_seconds=timeout, progress_callback=on_progress
        )
    except MCPError as exc:
        if exc.code == CONNECTION_CLOSED:
            raise ConnectionLost(exc.message) from None
        if exc.code == REQUEST_TIMEOUT:
            raise ToolFailure(f"gave no answer within {timeout:g} s") from None
        raise ToolFailure(f"refused the call: {exc.message}") from None
    except (RuntimeError, ValueError) as exc:  # e.g. a result its output schema refuses
        raise ToolFailure(f"answered with an invalid result: {describe(exc)}") from None
    return CallResult(text=render(result), is_error=result.is_error)


def render(result: CallToolResult) -> str:
    """A tool result as text: its content blocks, else its structured content as JSON."""
    if not result.content and result.structured_content is not None:
        return json.dumps(result.structured_content, ensure_ascii=False)
    return "\n".join(_render_block(block) for block in result.content)


def stderr_tail(log: Path) -> str:
    """The last lines the server wrote to stderr, on one line ("" for none)."""
    try:
        with log.open("rb") as file:
            file.seek(max(0, log.stat().st_size - STDERR_TAIL_BYTES))
            text = file.read().decode("utf-8", "replace")
    except OSError:
        return ""
    lines = [" ".join(line.split()) for line in text.splitlines()]
    return " | ".join([line for line in lines if line][-STDERR_TAIL_LINES:])


def describe(exc: BaseException) -> str:
    """One line for an error out of the SDK (the first leaf of an exception group)."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    if isinstance(exc, MCPError):
        return CLOSED if exc.code == CONNECTION_CLOSED else exc.message
    text = " ".join(str(exc).split())
    if isinstance(exc, OSError | TimeoutError) and text:
        return text
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _render_block(block: ContentBlock) -> str:
    match block.type:
        case "text":
            return block.text
        case "image" | "audio":
            return f"[{block.type} {block.mime_type}, {len(block.data) * 3 // 4} bytes]"
        case "resource_link":
            return f"[resource {block.uri}]"
        case "resource":
            contents = block.resource
            text = getattr(contents, "text", None)
            return text if isinstance(text, str) else f"[resource {contents.uri}]"


def _remote_tool(tool: Tool) -> RemoteTool:
    annotations = tool.annotations
    return RemoteTool(
        name=tool.name,
        description=tool.description or tool.title or "",
        input_schema=tool.input_schema,
        read_only=bool(annotations and annotations.read_only_hint),
    )


@contextlib.contextmanager
def _lost_on_close() -> Iterator[None]:
    try:
        yield
    except MCPError as exc:
        if exc.code == CONNECTION_CLOSED:
            raise ConnectionLost(exc.message) from None
        raise


def _stdio_parameters(config: StdioServer) -> StdioServerParameters:
    reaper, *args = reaped([config.executable, *config.args], grace=KILL_GRACE)
    env = minimal_environment(extra=config.env)
    return StdioServerParameters(command=reaper, args=args, env=env)


def _log(path: Path) -> TextIO:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.open("w", encoding="utf-8")


def _http_client(config: HttpServer) -> httpx2.AsyncClient:
    timeout = httpx2.Timeout(HTTP_CONNECT_TIMEOUT, read=HTTP_READ_TIMEOUT)
    return httpx2.AsyncClient(headers=config.headers, timeout=timeout)


@contextlib.asynccontextmanager
async def _watch(transport: Transport, lost: asyncio.Event) -> AsyncIterator[TransportStreams]:
    """``transport``, with its read stream reporting the server's end of the connection."""
    async with transport as (read, write):
        yield _WatchedRead(read, lost), write


class _WatchedRead:
    """A transport's read stream that sets ``lost`` when the stream ends or breaks."""

    def __init__(self, inner: ReadStream[SessionMessage | Exception], lost: asyncio.Event) -> None:
        self._inner = inner
        self._lost = lost

    async def receive(self) -> SessionMessage | Exception:
        try:
            return await self._inner.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError, anyio.BrokenResourceError):
            self._lost.set()
            raise

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> SessionMessage | Exception:
        try:
            return await self.receive()
        except anyio.EndOfStream:
            raise StopAsyncIteration from None

    async def aclose(self) -> None:
        await self._inner.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
