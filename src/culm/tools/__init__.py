"""Tools: the seam (:mod:`culm.tools.base`) and the built-in tools.

The built-ins work inside the session's workspace: file tools (:mod:`culm.tools.files`) confined to
it by :mod:`culm.tools.paths`, and ``bash`` (:mod:`culm.tools.bash`), which runs there, confined by
:mod:`culm.tools.sandbox` when bubblewrap works.
"""

from __future__ import annotations

from culm.settings import Settings
from culm.tools.base import Tool, ToolContext, ToolRegistry
from culm.tools.bash import BashTool
from culm.tools.compact import CompactContextTool
from culm.tools.files import (
    EditFileTool,
    GlobTool,
    GrepTool,
    ListDirTool,
    ReadFileTool,
    WriteFileTool,
)
from culm.tools.sandbox import Sandbox, sandbox_from

__all__ = [
    "READ_GROUP",
    "BashTool",
    "CompactContextTool",
    "EditFileTool",
    "GlobTool",
    "GrepTool",
    "ListDirTool",
    "ReadFileTool",
    "Tool",
    "ToolContext",
    "ToolRegistry",
    "WriteFileTool",
    "builtin_tools",
    "default_registry",
]

READ_GROUP = "read"
"""The group naming every read-only built-in tool."""


def builtin_tools(settings: Settings, sandbox: Sandbox | None = None) -> list[Tool]:
    """A fresh instance of each built-in tool, configured from ``settings`` (``sandbox``: the
    bash sandbox, else the one the settings ask for, checked now)."""
    bash = BashTool(
        output_limit=settings.bash_output_limit,
        sandbox=sandbox_from(settings) if sandbox is None else sandbox,
        env_passthrough=settings.bash_env_passthrough,
    )
    return [
        ReadFileTool(),
        WriteFileTool(),
        EditFileTool(),
        ListDirTool(),
        GlobTool(),
        GrepTool(),
        bash,
        CompactContextTool(),  # opt-in: only in sessions that name it
    ]


def default_registry(settings: Settings) -> ToolRegistry:
    """The built-in tools, plus the group ``read`` of those that are read-only."""
    tools = builtin_tools(settings)
    read_only = [tool.name for tool in tools if tool.read_only]
    return ToolRegistry(tools, groups={READ_GROUP: read_only})
