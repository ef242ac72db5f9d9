"""Request and response bodies of the v1 API (the domain models are the resources)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from annotated_types import Ge
from fastapi import Header
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema, model_validator

from culm.domain.models import Message, MultitaskPolicy, Run, RunStatus, Session, Usage
from culm.domain.text import refuse_unstorable
from culm.mcp.config import MAX_SERVER_NAME, HttpServer, StdioServer
from culm.scheduler.models import Schedule, ScheduleRun


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _storable(cls, data: Any) -> Any:
        """NUL, lone surrogates and deep nesting are refused, naming the field (see
        :mod:`culm.domain.text`)."""
        return refuse_unstorable(data)


def _mcp_servers_schema() -> dict[str, Any]:
    """What a session's ``mcp_servers`` may be, exactly as the engine checks it (the Python
    type stays a plain mapping: the engine validates it, naming the server and the field)."""
    stdio = StdioServer.model_json_schema()
    http = HttpServer.model_json_schema()
    http["properties"]["url"]["pattern"] = r"^https?://[^\s/]+\S*$"
    return {
        "type": "object",
        "propertyNames": {"pattern": MCP_SERVER_NAME, "maxLength": MAX_SERVER_NAME},
        "additionalProperties": {"oneOf": [stdio, http]},
    }


# Letters, digits, '-', and '_' only before a letter or digit (a bit narrower than the engine's
# rule, which also allows "a_-b"; what the schema allows, the engine takes).
MCP_SERVER_NAME = "^[A-Za-z0-9](?:-|_?[A-Za-z0-9])*$"
MCPServers = Annotated[dict[str, dict[str, Any]], WithJsonSchema(_mcp_servers_schema())]


def _a_number(value: Any) -> Any:
    """JSON numbers only: not ``true`` / ``false``, nor a number written as a string."""
    if isinstance(value, bool | str):
        raise ValueError("must be a number")
    return value


Count = Annotated[int, Ge(1), BeforeValidator(_a_number)]
Amount = Annotated[float, Ge(0), BeforeValidator(_a_number)]

TraceParent = Annotated[
    str | None,
    Header(
        max_length=64,
        description="W3C trace context: the run's spans (OpenTelemetry) continue the caller's "
        "trace",
    ),
]


class CreateSession(_Request):
    model: str | None = Field(default=None, max_length=200, examples=["scripted:demo"])
    system_prompt: str | None = None
    tools: list[str] = Field(default_factory=list, max_length=200, examples=[["read"]])
    workspace: str | None = Field(default=None, max_length=4096)
    metadata: dict[str, Any] = Field(default_factory=dict)
    mcp_servers: MCPServers | None = Field(
        default=None,
        max_length=50,
        description="The session's own MCP servers, as in config.toml's [mcp_servers.<name>]: "
        "`command`, `args`, `env` (stdio) or `url`, `headers` (Streamable HTTP), and `timeout`",
        examples=[{"time": {"command": "mcp-server-time", "args": ["--local-timezone", "UTC"]}}],
    )
    max_cost_usd: Amount | None = Field(
        default=None,
        description="Each run's spend limit in USD (its sub-agents' included); a run past it (or past `max_tokens`) ends `error` with code `budget_exceeded` after that round",
        examples=[0.5],
    )
    max_tokens: Count | None = Field(default=None, examples=[200000])


class CreateRun(_Request):
    message: str = Field(min_length=1, examples=["What is in the workspace?"])
    model: str | None = Field(default=None, max_length=200)
    multitask: MultitaskPolicy = MultitaskPolicy.REJECT
    max_cost_usd: Amount | None = Field(
        default=None,
        description="This run's spend limit in USD (default: the session's)",
        examples=[0.5],
    )
    max_tokens: Count | None = Field(default=None, examples=[200000])


class CreateHeadlessRun(CreateSession):
    message: str = Field(min_length=1, examples=["What is in the workspace?"])


class Health(BaseModel):
    status: str  # ok | degraded (then 503)
    version: str
    store: str = "ok"  # or why the store does not work
    wakeups: str = Field(
        default="ok",
        description="`ok`, or why this process's PostgreSQL wake-up listener (`LISTEN "
        "culm_runs`) does not listen: its workers then find ready runs by the safety poll only "
        "(`CULM_CLAIM_POLL_SECONDS`); not a reason for 503",
    )
    redis: str = Field(
        default="disabled",
        description="The event bus: `ok`, `degraded` (Redis unreachable: live streams and "
        "cancels across processes fall back to the store; not a reason for 503), or `disabled` "
        "(no `CULM_REDIS_URL`)",
    )
    bash_sandbox: str = Field(
        description="How the bash tool's commands are confined: `bwrap` or `none`",
        examples=["bwrap"],
    )


class SessionList(BaseModel):
    sessions: list[Session]


class RunList(BaseModel):
    runs: list[Run]


class MessageList(BaseModel):
    messages: list[Message]


class ErrorDetail(BaseModel):
    code: str
    message: str
    run_id: str | None = None
    field: str | None = None


class ErrorBody(BaseModel):
    error: ErrorDetail


class WaitTimeout(ErrorBody):
    run: Run


class RunChild(BaseModel):
    run_id: str
    session_id: str
    status: RunStatus


class RunDetail(Run):
    """A run with the sub-agent runs it spawned and its usage including theirs."""

    children: list[RunChild]
    usage_with_descendants: Usage


class ScheduleList(BaseModel):
    schedules: list[Schedule]


class ScheduleRunList(BaseModel):
    runs: list[ScheduleRun]


class Worker(BaseModel):
    """A process that executes runs (``culm worker``, an embedded ``culm serve``, a ``culm run``)
    as its row in the database says; the counters are cumulative and written at each heartbeat."""

    model_config = ConfigDict(from_attributes=True)

    worker_id: str = Field(description="`host:pid:token`, the owner of the runs it executes")
    host: str
    pid: int
    boot_id: str | None = Field(description="the kernel's boot id of its machine")
    pid_namespace: str | None = Field(description="the inode of its PID namespace")
    kind: str = Field(description="`embedded` (culm serve), `worker` (culm worker) or `cli`")
    concurrency: int = Field(description="how many runs it executes at once, at most")
    started_at: datetime
    last_heartbeat_at: datetime = Field(description="in the database's time")
    stopped_at: datetime | None = Field(description="set when it stopped cleanly")
    active_runs: int = Field(description="runs it executed at its last heartbeat")
    claims: int = Field(description="ready runs it claimed")
    takeovers: int = Field(description="runs whose lease ran out that its sweeper took over")
    fenced_writes: int = Field(
        description="writes refused because the run had passed to another owner (lease lost)"
    )
    alive: bool = Field(
        description="not stopped, and its last heartbeat is within the lease (CULM_LEASE_SECONDS)"
    )


class QueueStatus(BaseModel):
    """The run queue (the ``runs`` table) now."""

    model_config = ConfigDict(from_attributes=True)

    pending: int = Field(description="runs not started: ready ones and those queued in a session")
    ready: int = Field(description="pending runs waiting for a worker to claim them")
    running: int
    oldest_pending_age: float | None = Field(
        description="seconds since the oldest pending run was created (database time); null "
        "without pending runs"
    )


class WorkerList(BaseModel):
    workers: list[Worker]
    queue: QueueStatus
