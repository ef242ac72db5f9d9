"""Which tool calls wait for a person: the session's ``require_approval`` patterns (fnmatch
over tool names, ``mcp__github__*``), any tool whose class sets ``require_approval``, and every
``ask_user`` question."""

from __future__ import annotations

from collections.abc import Iterable
from fnmatch import fnmatchcase

from culm.tools.base import Tool

ASK_USER = "ask_user"


def needs_approval(patterns: Iterable[str], name: str, tool: Tool | None) -> bool:
    """Whether a call of tool ``name`` (``tool``: the resolved tool, None when unknown: such a
    call fails on its own, nobody is asked) must be approved first."""
    if tool is None:
        return False
    if tool.require_approval:
        return True
    return any(fnmatchcase(name, pattern) for pattern in patterns)


def asks_user(name: str, tool: Tool | None) -> bool:
    return tool is not None and name == ASK_USER
