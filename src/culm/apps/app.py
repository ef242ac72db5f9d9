"""An app: the user's own tools, agents and schedules, in one object culm loads.

    app = culm.App()

    @app.tool(read_only=True)
    def word_count(text: str) -> int:
        '''How many words the text has.'''
        return len(text.split())

    app.agent("writer", model="openai:gpt-4o-mini", tools=["word_count", "read"])
    app.schedule("daily count", cron="0 9 * * *", agent="writer", message="Count today's words")

``culm serve --app mymodule:app`` (or ``CULM_APP``, or the entry point group ``culm.apps``)
loads it; ``culm.Engine(app=app)`` embeds it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, overload

from pydantic import ValidationError

from culm.agents.models import AgentDefinition, check_agent_name
from culm.errors import AppLoadError
from culm.tools.base import Tool
from culm.tools.typed import FunctionTool, function_tool


class App:
    """Tools, agents and schedules to load into an engine. ``name`` says where they come from
    (the loader sets it to ``module:attr``)."""

    def __init__(self, name: str | None = None) -> None:
        self.name = name or "app"
        self.tools: dict[str, Tool] = {}
        self.agents: dict[str, AgentDefinition] = {}
        self.schedules: dict[str, dict[str, Any]] = {}

    def __repr__(self) -> str:
        return f"<culm.App {self.name!r}: {len(self.tools)} tools, {len(self.agents)} agents>"

    @overload
    def tool(self, function: Callable[..., Any], /) -> FunctionTool: ...
    @overload
    def tool(
        self,
        *,
        name: str | None = None,
        description: str | None = None,
        read_only: bool = False,
        timeout: float | None = None,
        require_approval: bool = False,
    ) -> Callable[[Callable[..., Any]], FunctionTool]: ...
    def tool(
        self,
        function: Callable[..., Any] | None = None,
        *,
        name: str | None = None,
        description: str | None = None,
        read_only: bool = False,
        timeout: float | None = None,
        require_approval: bool = False,
    ) -> FunctionTool | Callable[[Callable[..., Any]], FunctionTool]:
        """``@app.tool`` / ``@app.tool(...)``: :func:`culm.tool`, and add it to the app."""

        def make(fn: Callable[..., Any]) -> FunctionTool:
            made = function_tool(
                fn,
                name=name,
                description=description,
                read_only=read_only,
                timeout=timeout,
                require_approval=require_approval,
            )
            self.add_tool(made)
            return made

        return make if function is None else make(function)

    def add_tool(self, tool: Tool) -> Tool:
        """Add a tool object (a :class:`culm.Tool` subclass's instance, or a typed tool)."""
        if not isinstance(tool, Tool):
            raise AppLoadError(f"app {self.name!r}: {tool!r} is not a culm.Tool")
        if tool.name in self.tools:
            raise AppLoadError(f"app {self.name!r}: tool {tool.name!r} is defined twice")
        self.tools[tool.name] = tool
        return tool

    def agent(self, name: str, **settings: Any) -> AgentDefinition:
        """Define agent ``name``: ``description``, ``model``, ``system_prompt``, ``tools``,
        ``mcp_servers``, ``max_rounds``, ``tool_timeout`` … (see
        :class:`culm.AgentDefinition`)."""
        try:
            check_agent_name(name)
            definition = AgentDefinition(**settings)
        except ValueError as exc:  # pydantic's ValidationError too
            raise AppLoadError(f"app {self.name!r}, agent {name!r}: {_problem(exc)}") from None
        if name in self.agents:
            raise AppLoadError(f"app {self.name!r}: agent {name!r} is defined twice")
        self.agents[name] = definition
        return definition

    def schedule(self, name: str, **spec: Any) -> None:
        """A schedule created at start-up unless one of that name exists (then it is left as
        it is, with the changes made to it since). ``spec`` is ``POST /v1/schedules``' body
        without the name; shortcuts: ``cron="…"``, ``every_seconds=…`` for the trigger, and
        ``message``, ``agent``, ``model``, ``tools`` … for the run config."""
        from culm.scheduler.models import ScheduleSpec

        body = _schedule_body(name, spec)
        try:
            ScheduleSpec.model_validate(body)
        except ValueError as exc:
            raise AppLoadError(f"app {self.name!r}, schedule {name!r}: {_problem(exc)}") from None
        if name in self.schedules:
            raise AppLoadError(f"app {self.name!r}: schedule {name!r} is defined twice")
        self.schedules[name] = body


def _problem(exc: ValueError) -> str:
    """A validation error in one line, naming each field."""
    if not isinstance(exc, ValidationError):
        return str(exc)
    return "; ".join(
        f"{'.'.join(str(part) for part in error['loc']) or 'value'}: {error['msg']}"
        for error in exc.errors(include_url=False)
    )


_RUN_CONFIG = ("message", "agent", "model", "system_prompt", "tools", "workspace")


def _schedule_body(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    body = dict(spec)
    if "cron" in body:
        body["trigger"] = {"type": "cron", "expr": body.pop("cron")}
    elif "every_seconds" in body:
        body["trigger"] = {"type": "interval", "every_seconds": body.pop("every_seconds")}
    run_config = dict(body.pop("run_config", {}))
    for key in _RUN_CONFIG:
        if key in body:
            run_config[key] = body.pop(key)
    return {"name": name, **body, "run_config": run_config}
