"""The tool seam: what a tool is, what it gets when it runs, and how names resolve to tools."""

from __future__ import annotations

import fnmatch
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from culm.domain.events import RunEventBase
from culm.errors import UnknownToolError
from culm.providers.base import ToolSpec


@dataclass(frozen=True, kw_only=True, slots=True)
class ToolContext:
    """What a running tool may use.

    ``emit_output`` sends live output (a ``tool_token`` event); it never blocks.
    ``timeout`` is the time the tool is allowed, already enforced by the caller; tools that start
    processes use it to pick their own, tighter limits.
    """

    workspace: Path
    tool_call_id: str
    emit_output: Callable[[str], None]
    timeout: float
    # The run the call belongs to, and a way to emit other run events into it (the
    # ``spawn_agent`` tool reports its sub-agent this way). Empty outside a run.
    run_id: str = ""
    session_id: str = ""
    emit_event: Callable[[RunEventBase], object] | None = None


class Tool(ABC):
    """A tool the model can call. Raise :class:`culm.errors.ToolFailure` for an error result."""

    name: ClassVar[str]
    description: ClassVar[str]
    parameters: ClassVar[dict[str, Any]]
    # Read-only tools of one round run concurrently; the others run one after another, in order.
    read_only: ClassVar[bool] = False
    # Seconds this tool may take, instead of the engine's ``tool_timeout`` (None: the default).
    timeout: float | None = None

    @abstractmethod
    async def run(self, arguments: dict[str, Any], ctx: ToolContext) -> str: ...

    def spec(self) -> ToolSpec:
        return ToolSpec(name=self.name, description=self.description, parameters=self.parameters)


class ToolRegistry:
    """The tools that sessions may enable, by name.

    A session names tools exactly (``read_file``), by a group (``read``: every read-only
    built-in), or by a pattern (``mcp__files__*``). Unknown names are a user error.
    """

    def __init__(self, tools: Iterable[Tool], groups: Mapping[str, Sequence[str]] = {}) -> None:
        self._tools = {tool.name: tool for tool in tools}
        self._groups = dict(groups)

    def names(self) -> list[str]:
        return sorted(self._tools)

    def get(self, name: str) -> Tool | None:
        return self._tools.get(name)

    def expand(self, requested: Iterable[str]) -> tuple[str, ...]:
        """Normalize requested names to concrete tool names (order kept, duplicates dropped)."""
        out: dict[str, None] = {}
        for raw in requested:
            name = raw.strip()
            if not name:
                continue
            for resolved in self._expand_one(name):
                out[resolved] = None
        return tuple(out)

    def _expand_one(self, name: str) -> list[str]:
        if name in self._tools:
            return [name]
        if name in self._groups:
            return list(self._groups[name])
        if any(ch in name for ch in "*?["):
            matches = [n for n in sorted(self._tools) if fnmatch.fnmatchcase(n, name)]
            if matches:
                return matches
        known = ", ".join([*sorted(self._groups), *self.names()])
        raise UnknownToolError(f"unknown tool {name!r} (available: {known})")

    def resolve(self, names: Iterable[str]) -> list[Tool]:
        return [self._tools[name] for name in self.expand(names)]
