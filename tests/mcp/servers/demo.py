"""A real MCP server for culm's tests, written with the ``mcp`` SDK.

Served over stdio (``python demo.py``) or Streamable HTTP (:func:`http_app`, served by uvicorn
in the test's process). Its tools cover what culm must cope with:

- ``add``, ``echo``: ordinary tools (``echo`` is read-only);
- ``progress``: reports progress before answering;
- ``fail``: answers with an error result;
- ``sleep``: hangs for ``seconds`` (records that it was cancelled, for the cancel tests);
- ``crash``: the process exits mid-call;
- ``pid``: the server's process id (to see restarts).
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any

from mcp.server import MCPServer
from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import ToolAnnotations

# A file the server appends lines to ("sleep started", "sleep cancelled"), when the tests ask.
EVENTS = os.environ.get("DEMO_EVENTS_FILE")


def _note(line: str) -> None:
    if EVENTS:
        with Path(EVENTS).open("a", encoding="utf-8") as file:
            file.write(line + "\n")


def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


def echo(text: str) -> str:
    """Return the text as it is."""
    return text


async def progress(steps: int, ctx: Context[Any, Any]) -> str:
    """Report progress ``steps`` times, then answer."""
    for step in range(1, steps + 1):
        await ctx.report_progress(step, steps, f"step {step}")
    return f"{steps} steps done"


def fail(message: str) -> str:
    """Always fails with ``message``."""
    raise ToolError(message)


async def sleep(seconds: float) -> str:
    """Sleep for ``seconds``."""
    _note("sleep started")
    try:
        await asyncio.sleep(seconds)
    except BaseException:
        _note("sleep cancelled")
        raise
    return f"slept {seconds:g} s"


def crash() -> str:
    """The server process exits in the middle of this call."""
    print("demo server: crashing on purpose", file=sys.stderr, flush=True)
    os._exit(3)


def pid() -> int:
    """The server's process id."""
    return os.getpid()


def build_server() -> MCPServer:
    server = MCPServer("culm-test-demo")
    for tool in (add, progress, fail, sleep, crash, pid):
        server.tool()(tool)
    server.tool(annotations=ToolAnnotations(read_only_hint=True))(echo)
    return server


def http_app() -> Any:
    """A fresh server's Streamable HTTP app (at ``/mcp``), for uvicorn."""
    return build_server().streamable_http_app()


if __name__ == "__main__":
    build_server().run()
