"""The tool seam: what a tool is, what it gets when it runs, and how names resolve to tools."""

from __future__ import annotations

import asyncio
import fnmatch
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from culm.domain.events import RunEventBase
from culm.errors import UnknownToolError
from culm.providers.base import ToolSpec

if TYPE_CHECKING:
    from culm.domain.models import Session


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
    # Tell the caller of time not to count in this call's ``elapsed_ms`` (seconds): a
    # ``spawn_agent`` call's wait on a sub-agent that waits for a person.
    not_counted: Callable[[float], None] = lambda seconds: None


class Tool(ABC):
    """A tool the model can call. Raise :class:`culm.errors.ToolFailure` for an error result."""

    name: ClassVar[str]
    description: ClassVar[str]
    parameters: ClassVar[dict[str, Any]]
    # Read-only tools of one round run concurrently; the others run one after another, in order.
    read_only: ClassVar[bool] = False
    # Every call needs a person's approval first, whatever the session says (``culm.input``).
    require_approval: ClassVar[bool] = False
    # Seconds this tool may take, instead of the engine's ``tool_timeout`` (None: the default).
    timeout: float | None = None

    @abstractmethod
    async def run(self, arguments: dict[str, Any], ctx: ToolContext) -> str: ...

    def spec(self) -> ToolSpec:
        return ToolSpec(name=self.name, description=self.description, parameters=self.parameters)


class ToolSource(ABC):
    """Tools that are found at run time, not registered up front (an MCP server's tools).

    The registry hands a source every requested name that starts with its ``prefix``, exact or
    a pattern (``mcp__files__*``): :meth:`check` vets it when a session is created, without
    connecting anywhere; :meth:`resolve` turns it into tools when a run starts, connecting as
    needed. ``session`` is the session the name is for (None: no session yet).
    """

    prefix: ClassVar[str]

    @abstractmethod
    def check(self, name: str, session: Session | None) -> None:
        """Raise UnknownToolError if ``name`` can never resolve (e.g. an unknown server)."""

    @abstractmethod
    async def resolve(self, name: str, session: Session) -> list[Tool]:
        """The tools ``name`` stands for now."""


class ToolRegistry:
    """The tools that sessions may enable, by name.

    A session names tools exactly (``read_file``), by a group (``read``: every read-only
    built-in), or by a pattern (``read_*``). Unknown names are a user error. Names under a
    :class:`ToolSource`'s prefix are kept as requested and resolved per run
    (:meth:`resolve_for`), since what they stand for can change between runs.
    """

    def __init__(
        self,
        tools: Iterable[Tool],
        groups: Mapping[str, Sequence[str]] = {},
        sources: Iterable[ToolSource] = (),
    ) -> None:
        self._tools = {tool.name: tool for tool in tools}
        self._groups = dict(groups)
        self._sources = list(sources)

    def add_source(self, source: ToolSource) -> None:
        self._sources.append(source)

    def _source_for(self, name: str) -> ToolSource | None:
        return next((s for s in self._sources if name.startswith(s.prefix)), None)

    def names(self) -> list[str]:
        return sorted(self._tools)

    def get(self, name: str) -> Tool | None:
        return self._tools.get(name)

    def expand(self, requested: Iterable[str], session: Session | None = None) -> tuple[str, ...]:
        """Normalize requested names to concrete tool names (order kept, duplicates dropped);
        a source's names are checked (for ``session``) and kept as they are."""
        out: dict[str, None] = {}
        for raw in requested:
            name = raw.strip()
            if not name:
                continue
            for resolved in self._expand_one(name, session):
                out[resolved] = None
        return tuple(out)

    def _expand_one(self, name: str, session: Session | None = None) -> list[str]:
        source = self._source_for(name)
        if source is not None:
            source.check(name, session)
            return [name]
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
        """The registered tools ``names`` stand for (see :meth:`resolve_for` for sources')."""
        return [self._tools[name] for name in self.expand(names) if not self._source_for(name)]

    async def resolve_for(self, session: Session) -> list[Tool]:
        """The tools a run of ``session`` gets: its registered tools and what its sources'
        names stand for now (sources resolve concurrently, and may connect to find out).
        Later duplicates are dropped; the first failure is raised."""
        names = self.expand(session.tools, session)
        try:
            async with asyncio.TaskGroup() as group:
                found = [group.create_task(self._resolve_one(name, session)) for name in names]
        except ExceptionGroup as failed:
            raise failed.exceptions[0] from None
        tools: dict[str, Tool] = {}
        for task in found:
            for tool in task.result():
                tools.setdefault(tool.name, tool)
        return list(tools.values())

    async def _resolve_one(self, name: str, session: Session) -> list[Tool]:
        source = self._source_for(name)
        return await source.resolve(name, session) if source else [self._tools[name]]
