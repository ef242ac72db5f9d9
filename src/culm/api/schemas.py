"""Request and response bodies of the v1 API (the domain models are the resources)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from culm.domain.models import Message, MultitaskPolicy, Run, RunStatus, Session, Usage
from culm.scheduler.models import Schedule, ScheduleRun


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CreateSession(_Request):
    model: str | None = Field(default=None, max_length=200, examples=["scripted:demo"])
    system_prompt: str | None = None
    tools: list[str] = Field(default_factory=list, max_length=200, examples=[["read"]])
    workspace: str | None = Field(default=None, max_length=4096)
    metadata: dict[str, Any] = Field(default_factory=dict)
    mcp_servers: dict[str, dict[str, Any]] | None = Field(
        default=None,
        max_length=50,
        description="The session's own MCP servers, as in config.toml's [mcp_servers.<name>]: "
        "`command`, `args`, `env` (stdio) or `url`, `headers` (Streamable HTTP), and `timeout`",
        examples=[{"time": {"command": "mcp-server-time", "args": ["--local-timezone", "UTC"]}}],
    )


class CreateRun(_Request):
    message: str = Field(min_length=1, examples=["What is in the workspace?"])
    model: str | None = Field(default=None, max_length=200)
    multitask: MultitaskPolicy = MultitaskPolicy.REJECT


class CreateHeadlessRun(CreateSession):
    message: str = Field(min_length=1, examples=["What is in the workspace?"])


class Health(BaseModel):
    status: str  # ok | degraded (then 503)
    version: str
    store: str = "ok"  # or why the store does not work


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
