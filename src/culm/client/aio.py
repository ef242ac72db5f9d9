"""``culm.Client``: culm's HTTP API from Python, typed with the server's own models.

    async with culm.Client() as client:          # CULM_SERVER, CULM_API_KEY (or config.toml)
        run = await client.run("What is in the workspace?", agent="researcher")
        async for event in client.run_events(run.run_id):
            print(event.seq, event.type)
        print((await client.wait(run.run_id)).status)

A response's fields that this version of culm does not know (a newer server) are left out
rather than refused.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import PurePath
from typing import Any, TypeVar

from pydantic import BaseModel, TypeAdapter

from culm.agents.models import Agent, AgentDefinition
from culm.api.schemas import RunDetail
from culm.client.base import WAIT_MARGIN, BaseClient, Param
from culm.client.errors import Json, WaitTimeout
from culm.domain.models import Message, MultitaskPolicy, Run, RunStatus, Session
from culm.metrics.reports import AgentMetricsList, MetricsSummary, ModelMetricsList
from culm.scheduler.models import Schedule, ScheduleRun, ScheduleSpec

M = TypeVar("M", bound=BaseModel)
_MESSAGES: TypeAdapter[list[Message]] = TypeAdapter(list[Message])

# A manual compaction waits for the summarizer model (a long conversation, a slow model).
COMPACT_TIMEOUT = 300.0
# A refresh may start an MCP server: its handshake and listing may take the server's 30 s each.
REFRESH_TIMEOUT = 75.0
# The longest single wait request; longer waits are several of them.
WAIT_STEP = 300.0


def parse(model: type[M], data: Json) -> M:
    """``data`` as ``model``, without the top-level fields the model does not know."""
    return model.model_validate({k: v for k, v in data.items() if k in model.model_fields})


class Client(BaseClient):
    """The v1 API: sessions, runs (create, get, list, wait, cancel, events), agents, schedules,
    metrics and people-in-the-loop answers. See :class:`~culm.client.base.BaseClient` for the
    connection and :meth:`run_events` for streams."""

    # Sessions

    async def create_session(self, *, agent: str | None = None, **settings: Any) -> Session:
        """A new session: ``settings`` as :class:`culm.SessionSettings` (``model``, ``tools``,
        ``system_prompt`` …) over those of ``agent``."""
        body = {"agent": agent, **settings}
        return parse(Session, await self._request("POST", "/v1/sessions", body=_given(body)))

    async def get_session(self, session_id: str) -> Session:
        path = f"/v1/sessions/{session_id}"
        return parse(Session, await self._request("GET", path, missing=("session", session_id)))

    async def list_sessions(self, *, limit: int = 100) -> list[Session]:
        body = await self._request("GET", "/v1/sessions", params={"limit": limit})
        return [parse(Session, item) for item in body["sessions"]]

    async def delete_session(self, session_id: str) -> None:
        path = f"/v1/sessions/{session_id}"
        await self._request("DELETE", path, missing=("session", session_id))

    async def get_messages(self, session_id: str, *, view: str = "stored") -> list[Message]:
        path = f"/v1/sessions/{session_id}/messages"
        body = await self._request(
            "GET", path, params={"view": view}, missing=("session", session_id)
        )
        return _MESSAGES.validate_python(body["messages"])

    async def compact_session(self, session_id: str) -> Json:
        """Compact the session's context now (a summarizer call may take a while)."""
        return await self._request(
            "POST",
            f"/v1/sessions/{session_id}/compact",
            timeout=COMPACT_TIMEOUT,
            missing=("session", session_id),
        )

    # Runs

    async def start_run(
        self,
        session_id: str,
        message: str,
        *,
        model: str | None = None,
        multitask: MultitaskPolicy | str = MultitaskPolicy.REJECT,
    ) -> Run:
        body = _given({"message": message, "model": model, "multitask": str(multitask)})
        path = f"/v1/sessions/{session_id}/runs"
        return parse(
            Run, await self._request("POST", path, body=body, missing=("session", session_id))
        )

    async def run(self, message: str, *, agent: str | None = None, **settings: Any) -> Run:
        """Headless: a new session (``agent``, ``settings``) and a run on it, in one call."""
        body = _given({"message": message, "agent": agent, **settings})
        return parse(Run, await self._request("POST", "/v1/runs", body=body))

    async def get_run(self, run_id: str) -> RunDetail:
        """The run, its sub-agent runs and its usage with theirs."""
        data = await self._request("GET", f"/v1/runs/{run_id}", missing=("run", run_id))
        return parse(RunDetail, data)

    async def list_runs(
        self,
        *,
        status: RunStatus | str | None = None,
        session_id: str | None = None,
        limit: int = 100,
    ) -> list[Run]:
        params: dict[str, Param] = {
            "status": str(status) if status else None,
            "session_id": session_id,
            "limit": limit,
        }
        body = await self._request("GET", "/v1/runs", params=params)
        return [parse(Run, item) for item in body["runs"]]

    async def wait(self, run_id: str, *, timeout: float | None = None) -> Run:
        """The run once terminal; :class:`~culm.client.errors.WaitTimeout` after ``timeout``
        seconds (None: no limit)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = WAIT_STEP if deadline is None else max(0.0, deadline - time.monotonic())
            step = min(left, WAIT_STEP)
            try:
                data = await self._request(
                    "GET",
                    f"/v1/runs/{run_id}/wait",
                    params={"timeout": step},
                    timeout=step + WAIT_MARGIN,
                    missing=("run", run_id),
                )
                return parse(Run, data)
            except WaitTimeout:
                if deadline is not None and time.monotonic() >= deadline:
                    raise

    async def cancel(self, run_id: str, *, wait: bool = False, timeout: float = 30) -> Run:
        """Cancel (idempotent); with ``wait``, the run once terminal or :class:`WaitTimeout`."""
        return parse(Run, await self.cancel_run(run_id, wait=wait, timeout=timeout))

    async def cancel_run(self, run_id: str, *, wait: bool = False, timeout: float = 30) -> Json:
        """:meth:`cancel`, the run as the server's JSON."""
        params: dict[str, Param] = {"wait": "true" if wait else "false", "timeout": timeout}
        return await self._request(
            "POST",
            f"/v1/runs/{run_id}/cancel",
            params=params,
            timeout=timeout + WAIT_MARGIN if wait else None,
            missing=("run", run_id),
        )

    # People in the loop (GET/POST /v1/runs/{run_id}/input)

    async def pending_input(self, run_id: str) -> list[Json]:
        """What a ``waiting`` run asks of a person (approvals, questions)."""
        path = f"/v1/runs/{run_id}/input"
        body = await self._request("GET", path, missing=("run", run_id))
        return list(body["requests"])

    async def answer(self, run_id: str, request_id: str, **answer: Any) -> Json:
        """Answer one: ``approve=True/False`` (``reason``, ``arguments``) or ``answer="…"``."""
        path = f"/v1/runs/{run_id}/input"
        body = {"request_id": request_id, **answer}
        return await self._request("POST", path, body=body, missing=("run", run_id))

    # Agents

    async def list_agents(self) -> list[Agent]:
        body = await self._request("GET", "/v1/agents")
        return [parse(Agent, item) for item in body["agents"]]

    async def get_agent(self, name: str) -> Agent:
        path = f"/v1/agents/{name}"
        return parse(Agent, await self._request("GET", path, missing=("agent", name)))

    async def put_agent(
        self, name: str, definition: AgentDefinition | None = None, **settings: Any
    ) -> Agent:
        """Create or replace an agent stored on the server (``definition`` or keywords)."""
        body = (definition or AgentDefinition(**settings)).model_dump(mode="json")
        return parse(Agent, await self._request("PUT", f"/v1/agents/{name}", body=_given(body)))

    async def delete_agent(self, name: str) -> None:
        await self._request("DELETE", f"/v1/agents/{name}", missing=("agent", name))

    # Schedules

    async def list_schedules(self, *, limit: int = 100) -> list[Schedule]:
        body = await self._request("GET", "/v1/schedules", params={"limit": limit})
        return [parse(Schedule, item) for item in body["schedules"]]

    async def get_schedule(self, schedule_id: str) -> Schedule:
        path = f"/v1/schedules/{schedule_id}"
        data = await self._request("GET", path, missing=("schedule", schedule_id))
        return parse(Schedule, data)

    async def create_schedule(self, spec: ScheduleSpec | Json) -> Schedule:
        body = spec.model_dump(mode="json") if isinstance(spec, ScheduleSpec) else spec
        return parse(Schedule, await self._request("POST", "/v1/schedules", body=body))

    async def update_schedule(self, schedule_id: str, change: Json) -> Schedule:
        path = f"/v1/schedules/{schedule_id}"
        data = await self._request("PATCH", path, body=change, missing=("schedule", schedule_id))
        return parse(Schedule, data)

    async def delete_schedule(self, schedule_id: str) -> None:
        path = f"/v1/schedules/{schedule_id}"
        await self._request("DELETE", path, missing=("schedule", schedule_id))

    async def trigger_schedule(self, schedule_id: str) -> ScheduleRun:
        """Fire now; the fire as it then is (``running`` with its ``run_id``, or not)."""
        path = f"/v1/schedules/{schedule_id}/trigger"
        data = await self._request("POST", path, missing=("schedule", schedule_id))
        return parse(ScheduleRun, data)

    async def schedule_runs(self, schedule_id: str, *, limit: int = 100) -> list[ScheduleRun]:
        path = f"/v1/schedules/{schedule_id}/runs"
        body = await self._request(
            "GET", path, params={"limit": limit}, missing=("schedule", schedule_id)
        )
        return [parse(ScheduleRun, item) for item in body["runs"]]

    # Metrics

    async def metrics(self, report: str, **params: Param) -> Json:
        """``GET /v1/metrics/<report>`` (``summary``, ``models``, ``agents``, ``tools`` …)."""
        return await self._request("GET", f"/v1/metrics/{report}", params=params)

    async def metrics_summary(self, **dates: Param) -> MetricsSummary:
        return parse(MetricsSummary, await self.metrics("summary", **dates))

    async def metrics_models(self, **dates: Param) -> ModelMetricsList:
        return parse(ModelMetricsList, await self.metrics("models", **dates))

    async def metrics_agents(self, **dates: Param) -> AgentMetricsList:
        return parse(AgentMetricsList, await self.metrics("agents", **dates))

    # Operations

    async def list_workers(self, *, include_stopped: bool = False) -> Json:
        """``{"workers": […], "queue": {…}}``: the processes that execute runs, and the queue."""
        params: dict[str, Param] = {"include_stopped": "true" if include_stopped else None}
        return await self._request("GET", "/v1/workers", params=params)

    async def list_mcp_servers(self) -> list[Json]:
        body = await self._request("GET", "/v1/mcp/servers")
        return list(body["servers"])

    async def refresh_mcp_server(self, name: str, *, session_id: str | None = None) -> Json:
        """List the server's tools again, or reconnect it; the server's status once done."""
        return await self._request(
            "POST",
            f"/v1/mcp/servers/{name}/refresh",
            params={"session_id": session_id},
            timeout=REFRESH_TIMEOUT,
        )


def _given(body: Json) -> Json:
    """The fields that are set (None: not given), as JSON: sequences as lists, paths as text."""
    return {key: _json(value) for key, value in body.items() if value is not None}


def _json(value: Any) -> Any:
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, Sequence) and not isinstance(value, str):
        return list(value)
    return value
