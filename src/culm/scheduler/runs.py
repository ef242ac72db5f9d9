"""How the scheduler starts runs and learns of their end: through the engine's own Python API
(a new session and a run for each fire, by the same path as ``POST /v1/runs``).

The scheduler sees the engine only as :class:`EngineRuns`, so it depends on nothing above it.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, Protocol

from culm.domain.models import Run, RunTrigger
from culm.errors import InvalidFieldError, UserError
from culm.scheduler.models import RunConfig
from culm.tracing import Tracing, current_traceparent


class EngineRuns(Protocol):
    """What the scheduler uses of :class:`culm.Engine`."""

    tracing: Tracing

    async def run(self, message: str, **session: Any) -> Run: ...

    async def wait(self, run_id: str, *, timeout: float | None = None) -> Run: ...

    async def check_agent(self, name: str | None) -> None: ...

    def check_session(
        self,
        *,
        model: str | None = None,
        tools: Sequence[str] = (),
        workspace: str | None = None,
        mcp_servers: dict[str, Any] | None = None,
    ) -> None: ...


async def launch(
    engine: EngineRuns, config: RunConfig, *, schedule_id: str, scheduled_for: datetime
) -> Run:
    """Start the run of one fire: a new session (its metadata names the schedule and the time)
    and a run on it with trigger ``schedule``, in the fire's span (the run's spans go below)."""
    with engine.tracing.tracer.start_as_current_span(
        f"schedule_fire {schedule_id}",
        attributes={
            "culm.schedule.id": schedule_id,
            "culm.schedule.scheduled_for": scheduled_for.isoformat(),
        },
    ):
        return await engine.run(
            config.message,
            agent=config.agent,
            model=config.model,
            system_prompt=config.system_prompt,
            tools=list(config.tools) or None,  # none given: the agent's
            workspace=config.workspace,
            metadata={"schedule_id": schedule_id, "scheduled_for": scheduled_for.isoformat()},
            trigger=RunTrigger.SCHEDULE,
            traceparent=current_traceparent(),
        )


async def check(engine: EngineRuns, config: RunConfig) -> None:
    """Raise :class:`InvalidFieldError` naming the field of ``config`` that the engine would
    refuse (an unknown agent, model or tool, a workspace that is not a directory)."""
    try:
        await engine.check_agent(config.agent)
    except UserError as exc:
        raise InvalidFieldError("run_config.agent", _without_field(exc)) from None
    check_names(
        engine,
        prefix="run_config.",
        model=config.model,
        tools=config.tools,
        workspace=config.workspace,
    )


def check_names(
    engine: EngineRuns,
    *,
    prefix: str = "",
    model: str | None = None,
    tools: Sequence[str] = (),
    workspace: str | None = None,
    mcp_servers: dict[str, Any] | None = None,
) -> None:
    """Raise :class:`InvalidFieldError` naming (after ``prefix``) the first of ``model``,
    ``tools`` and ``workspace`` that the engine would refuse (``tools`` may name the session's
    own ``mcp_servers``, already validated)."""
    fields: dict[str, dict[str, Any]] = {
        "model": {"model": model},
        "tools": {"tools": tools, "mcp_servers": mcp_servers},
        "workspace": {"workspace": workspace},
    }
    for field, settings in fields.items():
        try:
            engine.check_session(**settings)
        except InvalidFieldError:
            raise
        except UserError as exc:
            raise InvalidFieldError(f"{prefix}{field}", str(exc)) from None


def _without_field(exc: UserError) -> str:
    """The message of ``exc`` without the ``field: `` an InvalidFieldError puts first."""
    if isinstance(exc, InvalidFieldError):
        return str(exc).removeprefix(f"{exc.field}: ")
    return str(exc)
