"""Request and response bodies of the v1 API (the domain models are the resources)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import Header
from pydantic import BaseModel, ConfigDict, Field, model_validator

from culm.agents.models import Amount, Count, SessionSettings
from culm.domain.models import Message, MultitaskPolicy, Run, RunStatus, Session, Usage
from culm.domain.text import refuse_unstorable
from culm.scheduler.models import Schedule, ScheduleRun


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _storable(cls, data: Any) -> Any:
        """NUL, lone surrogates and deep nesting are refused, naming the field (see
        :mod:`culm.domain.text`)."""
        return refuse_unstorable(data)


TraceParent = Annotated[
    str | None,
    Header(
        max_length=64,
        description="W3C trace context: the run's spans (OpenTelemetry) continue the caller's "
        "trace",
    ),
]


class CreateSession(SessionSettings, _Request):
    """A new session: its settings, over those of the named ``agent``."""

    agent: str | None = Field(
        default=None,
        max_length=100,
        description="A named agent (`GET /v1/agents`): the session starts from its settings; "
        "the fields given here replace the agent's",
        examples=["researcher"],
    )


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


class ScheduleUpcoming(BaseModel):
    """A schedule's trigger in plain words and its next fire times (UTC; ``timezone`` is the
    zone its cron fields and wall-clock times are read in)."""

    schedule_id: str
    description: str
    timezone: str
    fires: list[datetime]


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
