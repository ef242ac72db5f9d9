"""Every MCP server of the engine (``config.toml``) and of its sessions, and the tool source
through which sessions enable their tools.

A session enables ``mcp__<server>__<tool>`` or ``mcp__<server>__*``. Creating the session only
checks that the server is configured; a run's start lists the server's tools, which starts the
server on first use. The engine's servers are shared by every session; a session's own servers
(``metadata["mcp_servers"]``, which replace an engine server of the same name) by that session's
runs. All are closed when the engine closes (or the session is deleted): no child process stays.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
from collections.abc import Coroutine, Mapping
from typing import Any, ClassVar

from culm.domain.models import Session
from culm.errors import MCPServerError, NotFoundError, UnknownToolError
from culm.mcp.config import SESSION_ORIGIN, ServerConfig, dump_servers, parse_servers
from culm.mcp.connection import ConnectionOptions, ServerConnection, ServerInfo
from culm.mcp.names import PREFIX, split_name, tool_name
from culm.settings import Settings
from culm.tools.base import Tool, ToolSource

SESSION_KEY = "mcp_servers"
"""Where a session keeps its own servers, in its metadata."""
USAGE = "MCP tools are named mcp__<server>__<tool>, or mcp__<server>__* for all of a server's"


class MCPManager(ToolSource):
    """The engine's MCP servers. ``start`` it on the engine's exit stack before anything that
    calls tools, so that it closes after them."""

    prefix: ClassVar[str] = PREFIX

    def __init__(self, settings: Settings) -> None:
        self._options = ConnectionOptions(
            log_dir=settings.home / "logs" / "mcp",
            request_timeout=settings.mcp_request_timeout,
        )
        self._configs = dict(sorted(settings.mcp_servers.items()))
        self._group: asyncio.TaskGroup | None = None
        self._closing = False
        self._reset()

    def _reset(self) -> None:
        self._engine_servers = {
            name: self._connection(name, c) for name, c in self._configs.items()
        }
        self._session_servers: dict[tuple[str, str], ServerConnection] = {}

    # Lifecycle

    async def start(self, stack: contextlib.AsyncExitStack) -> None:
        if self._closing:  # started again after a close
            self._closing = False
            self._reset()
        self._group = await stack.enter_async_context(asyncio.TaskGroup())
        stack.push_async_callback(self.aclose)

    async def aclose(self) -> None:
        """Close every connection; stdio servers are stopped (the SDK closes their stdin, then
        terminates them if they do not exit)."""
        self._closing = True
        connections = [*self._engine_servers.values(), *self._session_servers.values()]
        await asyncio.gather(*(connection.aclose() for connection in connections))

    async def forget_session(self, session_id: str) -> None:
        """Close the servers of a session (it was deleted)."""
        keys = [key for key in self._session_servers if key[0] == session_id]
        await asyncio.gather(*(self._session_servers.pop(key).aclose() for key in keys))

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        if self._group is None or self._closing:
            coro.close()
            raise MCPServerError("MCP servers are not available: the engine is not running")
        return self._group.create_task(coro, name=f"culm-{name}")

    def _connection(
        self, name: str, config: ServerConfig, session_id: str | None = None
    ) -> ServerConnection:
        return ServerConnection(
            name, config, spawn=self._spawn, options=self._options, session_id=session_id
        )

    # Servers

    def servers(self) -> list[ServerInfo]:
        """The engine's servers, then the session servers that were used, by name."""
        engine = [connection.info() for connection in self._engine_servers.values()]
        sessions = sorted(
            (connection.info() for connection in self._session_servers.values()),
            key=lambda info: (info.name, info.session_id or ""),
        )
        return [*engine, *sessions]

    async def refresh(self, name: str, session: Session | None = None) -> ServerInfo:
        """List a ready server's tools again, or (re)connect it; its status says how it went."""
        connection = self.connection(name, session)
        if connection is None:
            raise NotFoundError("MCP server", name)
        await connection.refresh()
        return connection.info()

    def connection(self, name: str, session: Session | None = None) -> ServerConnection | None:
        """The connection to server ``name`` as ``session`` sees it (None: not configured)."""
        own = session_servers(session) if session is not None else {}
        if session is None or name not in own:
            return self._engine_servers.get(name)
        key = (session.session_id, name)
        connection = self._session_servers.get(key)
        if connection is None or connection.config != own[name]:
            connection = self._session_servers[key] = self._connection(
                name, own[name], session.session_id
            )
        return connection

    def _server_names(self, session: Session | None) -> list[str]:
        own = session_servers(session) if session is not None else {}
        return sorted({*self._engine_servers, *own})

    # The tool source

    def check(self, name: str, session: Session | None) -> None:
        ref = split_name(name)
        if ref is None:
            raise UnknownToolError(f"invalid tool name {name!r}: {USAGE}")
        known = self._server_names(session)
        if ref.server not in known:
            configured = f"configured: {', '.join(known)}" if known else "none is configured"
            raise UnknownToolError(
                f"unknown MCP server {ref.server!r} in tool {name!r} ({configured})"
            )

    async def resolve(self, name: str, session: Session) -> list[Tool]:
        """The tools ``name`` stands for; lists the server's tools, starting it if needed."""
        self.check(name, session)
        ref = split_name(name)
        connection = self.connection(ref.server, session) if ref else None
        assert ref is not None and connection is not None  # checked above
        tools = await connection.tools()
        if ref.is_pattern:
            return [tool for tool in tools if fnmatch.fnmatchcase(tool.name, name)]
        wanted = {name, tool_name(ref.server, ref.tool)}
        found = [tool for tool in tools if tool.name in wanted]
        if not found:
            offered = ", ".join(tool.name for tool in tools) or "no tools"
            raise UnknownToolError(
                f"MCP server {ref.server!r} has no tool {ref.tool!r} ({offered})"
            )
        return found


def session_servers(session: Session) -> dict[str, ServerConfig]:
    """The servers a session brought (validated when it was created)."""
    return parse_servers(session.metadata.get(SESSION_KEY), SESSION_ORIGIN)


def session_metadata(
    metadata: Mapping[str, Any] | None, servers: Mapping[str, Any] | None
) -> dict[str, Any]:
    """A new session's metadata with its ``mcp_servers`` (``servers``, else the metadata's own)
    validated: a mistake is a ConfigError naming the server and the field."""
    out = dict(metadata or {})
    raw = servers if servers is not None else out.get(SESSION_KEY)
    if raw is None:
        return out
    out[SESSION_KEY] = dump_servers(parse_servers(raw, SESSION_ORIGIN))
    return out
