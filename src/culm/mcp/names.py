"""MCP tool names in culm: ``mcp__<server>__<tool>``.

A server's tool names may hold characters that model APIs refuse in a function name (OpenAI and
Anthropic take ``[A-Za-z0-9_-]{1,64}``): those become ``_``, and a name past 64 characters is cut
and ends with a hash of the whole, so it stays unique.
"""

from __future__ import annotations

import hashlib
import re
from typing import NamedTuple

PREFIX = "mcp__"
SEPARATOR = "__"
MAX_TOOL_NAME = 64
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")
_HASH_LENGTH = 8


class ToolRef(NamedTuple):
    """A requested ``mcp__<server>__<tool>`` name, split; ``tool`` may be a pattern (``*``)."""

    server: str
    tool: str

    @property
    def is_pattern(self) -> bool:
        return any(ch in self.tool for ch in "*?[")


def is_mcp_name(name: str) -> bool:
    return name.startswith(PREFIX)


def split_name(name: str) -> ToolRef | None:
    """``mcp__time__get_time`` → ``ToolRef("time", "get_time")``; None without both parts."""
    server, separator, tool = name.removeprefix(PREFIX).partition(SEPARATOR)
    if not name.startswith(PREFIX) or not separator or not server or not tool:
        return None
    return ToolRef(server, tool)


def tool_name(server: str, tool: str) -> str:
    """The name culm offers the model for ``tool`` of ``server``."""
    name = f"{PREFIX}{server}{SEPARATOR}{_UNSAFE.sub('_', tool)}"
    if len(name) <= MAX_TOOL_NAME:
        return name
    digest = hashlib.sha256(f"{server}/{tool}".encode()).hexdigest()[:_HASH_LENGTH]
    return f"{name[: MAX_TOOL_NAME - _HASH_LENGTH - 1]}_{digest}"
