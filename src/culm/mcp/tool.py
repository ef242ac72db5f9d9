"""A tool of an MCP server as a culm :class:`~culm.tools.base.Tool`.

It goes through the same path as a built-in tool (``tool_start``/``tool_complete``/``tool_error``
events, the timeout, cancel): its ``run`` calls the server through the shared connection. The
server's progress notifications become live output (``tool_token``); an error result, a refused
call or a lost server is a :class:`~culm.errors.ToolFailure` for the model.

:class:`~culm.tools.base.Tool` keeps a tool's name, description and schema on its class, so each
remote tool gets a small subclass of :class:`MCPTool`, made when the server lists its tools.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from culm.errors import MCPServerError, ToolFailure
from culm.mcp.names import tool_name
from culm.tools.base import Tool, ToolContext

if TYPE_CHECKING:
    from culm.mcp.connection import ServerConnection


class ProgressCallback(Protocol):
    """Called with each progress notification the server sends during a call."""

    async def __call__(self, progress: float, total: float | None, message: str | None) -> None: ...


EMPTY_SCHEMA: dict[str, Any] = {"type": "object", "properties": {}}


@dataclass(frozen=True, kw_only=True, slots=True)
class RemoteTool:
    """A tool as the server listed it."""

    name: str
    description: str = ""
    input_schema: Mapping[str, Any] = field(default_factory=dict)
    read_only: bool = False


@dataclass(frozen=True, kw_only=True, slots=True)
class CallResult:
    """A tool call's result as text for the model; ``is_error`` when the tool reported failure."""

    text: str
    is_error: bool = False


class MCPTool(Tool):
    """A tool of one MCP server. Subclasses (one per remote tool) set the class attributes."""

    server: ClassVar[str]
    remote_name: ClassVar[str]

    def __init__(self, connection: ServerConnection) -> None:
        self._connection = connection
        self.timeout = connection.config.timeout

    async def run(self, arguments: dict[str, Any], ctx: ToolContext) -> str:
        try:
            result = await self._connection.call(
                self.remote_name,
                arguments,
                timeout=ctx.timeout,
                on_progress=_progress_output(ctx),
            )
        except MCPServerError as exc:
            raise ToolFailure(str(exc)) from None
        if result.is_error:
            raise ToolFailure(result.text or f"{self.name} failed (the server gave no reason)")
        return result.text


def make_tools(connection: ServerConnection, listing: Iterable[RemoteTool]) -> tuple[Tool, ...]:
    """One :class:`MCPTool` per listed tool (the first of two that end up with one name wins)."""
    tools: dict[str, Tool] = {}
    for remote in listing:
        name = tool_name(connection.name, remote.name)
        if name not in tools:
            tools[name] = _tool_class(connection.name, name, remote)(connection)
    return tuple(tools.values())


def _tool_class(server: str, name: str, remote: RemoteTool) -> type[MCPTool]:
    attributes = {
        "__doc__": f"{remote.name!r} of the MCP server {server!r}.",
        "name": name,
        "description": remote.description or f"{remote.name} (a tool of the MCP server {server})",
        "parameters": {**EMPTY_SCHEMA, **remote.input_schema},  # model APIs want an object
        "read_only": remote.read_only,
        "server": server,
        "remote_name": remote.name,
    }
    return type(f"MCPTool[{name}]", (MCPTool,), attributes)


def _progress_output(ctx: ToolContext) -> ProgressCallback:
    """Progress notifications as ``tool_token`` lines: ``progress 2/5: copying``."""

    async def report(progress: float, total: float | None, message: str | None) -> None:
        amount = f"{progress:g}/{total:g}" if total is not None else f"{progress:g}"
        ctx.emit_output(f"progress {amount}: {message}\n" if message else f"progress {amount}\n")

    return report
