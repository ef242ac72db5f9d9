"""One MCP server's connection: started on first use, shared by every run, restarted after a
crash, closed on shutdown.

Each connection attempt has an owner task (spawned in the manager's task group) that opens the
SDK client, lists the tools, then holds the client open until the connection is lost or stopped:
the SDK's anyio task groups are entered and left in that one task. Runs call tools from their
own tasks through the shared client; the SDK matches answers to requests, so calls may overlap,
and cancelling a caller abandons its request (the SDK tells the server) without harming the
connection.

Status: ``stopped`` (never started, or shut down) → ``starting`` → ``ready``; ``error`` when a
start failed or the server went away. A lost server is started again on its next use, after a
backoff that doubles with each failure in a row (0.25 s, 0.5 s, 1 s … at most 30 s) and resets
with a successful call; a call that comes while the wait is still long fails at once, saying why.

The SDK is imported (most of a second) when the first server starts, not with culm.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from culm.errors import MCPServerError, ToolFailure
from culm.logs import get_logger
from culm.mcp.config import ServerConfig, StdioServer, Transport
from culm.mcp.tool import CallResult, ProgressCallback, RemoteTool, make_tools
from culm.tools.base import Tool

if TYPE_CHECKING:
    from mcp import Client

log = get_logger(__name__)

Spawn = Callable[[Coroutine[Any, Any, None], str], "asyncio.Task[None]"]
# How long a caller whose call lost the server waits for the owner to record why.
TEARDOWN_WAIT = 2.0
# Extra time a tool call gives the server beyond the tool's timeout, so that the engine's own
# timeout (with its clearer message) fires first.
CALL_TIMEOUT_MARGIN = 1.0


class ServerStatus(StrEnum):
    STOPPED = "stopped"
    STARTING = "starting"
    READY = "ready"
    ERROR = "error"


class ServerInfo(BaseModel):
    """What ``GET /v1/mcp/servers`` says about one server."""

    model_config = ConfigDict(frozen=True)

    name: str
    session_id: str | None = Field(
        default=None, description="The session that configured it; none for config.toml's."
    )
    transport: Transport
    status: ServerStatus
    tool_count: int = 0
    tools: list[str] = Field(default_factory=list, description="The tools as culm offers them.")
    restarts: int = Field(default=0, description="Connections made after the first one.")
    last_error: str | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class ConnectionOptions:
    log_dir: Path
    request_timeout: float = 30.0  # the handshake, and each tool listing
    restart_delay: float = 0.25
    max_restart_delay: float = 30.0
    # A call waits for a restart that is due this soon; otherwise it fails at once.
    wait_for_restart: float = 1.0


def restart_backoff(failures: int, options: ConnectionOptions) -> float:
    """How long to wait before starting a server again after ``failures`` failures in a row:
    ``restart_delay`` doubled with each one, at most ``max_restart_delay``."""
    return min(options.restart_delay * 2.0 ** (failures - 1), options.max_restart_delay)


@dataclass(eq=False)
class _Attempt:
    """One connection, from its start to its end; ``ready`` gives callers the client."""

    ready: asyncio.Future[Client]
    lost: asyncio.Event = field(default_factory=asyncio.Event)
    stopping: bool = False
    overdue: bool = False  # failed by the handshake's deadline (its owner is cancelled)
    error: str | None = None  # why it ended, when it failed
    task: asyncio.Task[None] | None = None

    @property
    def over(self) -> bool:
        failed = self.ready.done() and (self.ready.cancelled() or bool(self.ready.exception()))
        return failed or self.lost.is_set()


class ServerConnection:
    """The connection to one configured server (of the engine, or of one session)."""

    def __init__(
        self,
        name: str,
        config: ServerConfig,
        *,
        spawn: Spawn,
        options: ConnectionOptions,
        session_id: str | None = None,
    ) -> None:
        self.name = name
        self.config = config
        self.session_id = session_id
        self._spawn = spawn
        self._options = options
        self._status = ServerStatus.STOPPED
        self._last_error: str | None = None
        self._tools: tuple[Tool, ...] = ()
        self._restarts = 0
        self._connected_once = False
        self._failures = 0
        self._retry_at = 0.0
        self._attempt: _Attempt | None = None
        self._closed = False

    @property
    def label(self) -> str:
        return f"MCP server {self.name!r}"

    @property
    def log_path(self) -> Path:
        """Where a stdio server's stderr goes."""
        stem = f"{self.session_id}-{self.name}" if self.session_id else self.name
        return self._options.log_dir / f"{stem}.log"

    def info(self) -> ServerInfo:
        return ServerInfo(
            name=self.name,
            session_id=self.session_id,
            transport=self.config.transport,
            status=self._status,
            tool_count=len(self._tools),
            tools=[tool.name for tool in self._tools],
            restarts=self._restarts,
            last_error=self._last_error,
        )

    # Use

    async def tools(self) -> tuple[Tool, ...]:
        """The server's tools, connecting first if needed (raises MCPServerError)."""
        await self._connected()
        return self._tools

    async def call(
        self,
        tool: str,
        arguments: dict[str, Any],
        *,
        timeout: float,
        on_progress: ProgressCallback | None = None,
    ) -> CallResult:
        """Call ``tool`` of this server. Raises MCPServerError when the server cannot be reached
        or goes away during the call, ToolFailure when it refuses the call."""
        from culm.mcp import transport

        attempt, client = await self._connected()
        try:
            result = await transport.call_tool(
                client,
                tool,
                arguments,
                timeout=timeout + CALL_TIMEOUT_MARGIN,
                on_progress=on_progress,
            )
        except transport.ConnectionLost:
            raise await self._dropped(attempt) from None
        except ToolFailure as exc:
            raise ToolFailure(f"{self.label} {exc}") from None
        self._failures = 0
        return result

    async def refresh(self) -> None:
        """List the tools again if the server is ready; (re)connect it otherwise, at once."""
        from culm.mcp import transport

        attempt = self._attempt
        if attempt is not None and not attempt.over and attempt.ready.done():
            try:
                listing = await transport.list_tools(attempt.ready.result())
            except transport.ConnectionLost:
                await self._dropped(attempt)
            except Exception as exc:  # the server answered, but not with its tools
                self._last_error = f"listing the tools failed: {transport.describe(exc)}"
                return
            else:
                self._tools = make_tools(self, listing)
                self._failures = 0
                return
        self._failures, self._retry_at = 0, 0.0
        with contextlib.suppress(MCPServerError):  # the status says what went wrong
            await self._connected()

    async def aclose(self) -> None:
        """Close the connection (a stdio server is stopped) and refuse further use."""
        self._closed = True
        attempt = self._attempt
        if attempt is None or attempt.task is None:
            return
        attempt.stopping = True
        attempt.lost.set()
        if not attempt.ready.done():
            attempt.task.cancel()
        await asyncio.wait([attempt.task])
        self._status = ServerStatus.STOPPED

    # Connecting

    async def _connected(self) -> tuple[_Attempt, Client]:
        if self._closed:
            raise MCPServerError(f"{self.label} is stopped: the engine is shutting down")
        attempt = self._attempt
        if attempt is None or attempt.over:
            attempt = self._start(previous=attempt)
        return attempt, await asyncio.shield(attempt.ready)

    def _start(self, previous: _Attempt | None) -> _Attempt:
        loop = asyncio.get_running_loop()
        wait = self._retry_at - loop.time()
        if wait > self._options.wait_for_restart:
            raise MCPServerError(
                f"{self.label} is unavailable ({self._last_error}); "
                f"it is started again in {wait:.0f} s or on refresh"
            )
        attempt = _Attempt(ready=loop.create_future())
        attempt.ready.add_done_callback(_mark_retrieved)
        before = previous.task if previous is not None else None
        attempt.task = self._spawn(self._own(attempt, max(wait, 0.0), before), f"mcp-{self.name}")
        self._attempt = attempt
        self._status = ServerStatus.STARTING
        return attempt

    async def _own(
        self, attempt: _Attempt, delay: float, before: asyncio.Task[None] | None
    ) -> None:
        """The owner task of one connection: open, list, hold until lost or stopped, close."""
        from culm.mcp import transport

        overdue: asyncio.TimerHandle | None = None
        try:
            if before is not None:
                await asyncio.wait([before])  # the previous connection is closed first
            await asyncio.sleep(delay)
            if self._connected_once:
                self._restarts += 1
            timeout = self._options.request_timeout
            overdue = asyncio.get_running_loop().call_later(timeout, self._overdue, attempt)
            async with transport.open_client(
                self.config, lost=attempt.lost, log=self.log_path, request_timeout=timeout
            ) as client:
                listing = await transport.list_tools(client)
                overdue.cancel()
                self._ready(attempt, client, listing)
                await attempt.lost.wait()
        except asyncio.CancelledError:
            if not attempt.overdue or _owner().uncancel() > 0:
                raise  # not (only) the handshake's deadline: the engine is stopping
        except Exception as exc:
            if not attempt.overdue:
                self._ended(attempt, transport.describe(exc))
        else:
            self._ended(attempt, None if attempt.stopping else transport.CLOSED)
        finally:
            if overdue is not None:
                overdue.cancel()
            if not attempt.ready.done():
                attempt.ready.set_exception(MCPServerError(f"{self.label} was stopped"))

    def _overdue(self, attempt: _Attempt) -> None:
        """The handshake and tool listing took longer than ``CULM_MCP_REQUEST_TIMEOUT``: fail
        the attempt now, and cancel its owner, which stops the server meanwhile (that may take a
        few seconds more: the SDK lets a stdio server exit before it kills it)."""
        if attempt.ready.done() or attempt.stopping or attempt.task is None:
            return
        attempt.overdue = True
        timeout = self._options.request_timeout
        self._ended(
            attempt,
            f"no answer to the handshake within {timeout:g} s (CULM_MCP_REQUEST_TIMEOUT)",
        )
        attempt.task.cancel()

    def _ready(self, attempt: _Attempt, client: Client, listing: list[RemoteTool]) -> None:
        self._tools = make_tools(self, listing)
        self._status = ServerStatus.READY
        self._connected_once = True
        attempt.ready.set_result(client)
        log.info("MCP server ready", server=self.name, tools=len(self._tools))

    def _ended(self, attempt: _Attempt, error: str | None) -> None:
        """Record how a connection ended: stopped on purpose, or failed (then back off)."""
        if attempt.stopping or error is None:
            self._status = ServerStatus.STOPPED
            return
        from culm.mcp import transport

        tail = transport.stderr_tail(self.log_path) if isinstance(self.config, StdioServer) else ""
        detail = f"{error} (stderr: {tail})" if tail else error
        started = attempt.ready.done()
        attempt.error = self._last_error = detail if started else f"could not start: {detail}"
        self._status = ServerStatus.ERROR
        self._failures += 1
        self._retry_at = asyncio.get_running_loop().time() + restart_backoff(
            self._failures, self._options
        )
        if not started:
            attempt.ready.set_exception(MCPServerError(f"{self.label} {self._last_error}"))
        log.warning("MCP server failed", server=self.name, error=self._last_error)

    async def _dropped(self, attempt: _Attempt) -> MCPServerError:
        """The error for a call whose connection ended under it, once the owner said why."""
        attempt.lost.set()
        if attempt.task is not None:
            await asyncio.wait([attempt.task], timeout=TEARDOWN_WAIT)
        if attempt.stopping:
            return MCPServerError(f"{self.label} was stopped during the call")
        reason = attempt.error or "the connection was lost"
        return MCPServerError(
            f"{self.label} failed during the call: {reason}; it is started again on the next call"
        )


def _owner() -> asyncio.Task[Any]:
    task = asyncio.current_task()
    assert task is not None
    return task


def _mark_retrieved(future: asyncio.Future[Any]) -> None:
    """An attempt's failure is reported to whoever waits; none may be waiting."""
    if not future.cancelled():
        future.exception()
