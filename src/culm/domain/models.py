"""Sessions, messages and runs."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from culm.domain.time import utc_now


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Usage(_Frozen):
    """Token usage exactly as the provider reported it (absent kinds are 0).

    ``prompt_tokens`` is every input token, cached or not; ``cache_read_tokens`` and
    ``cache_write_tokens`` say how many of them were read from or written to a prompt cache.
    ``reasoning_tokens`` are the part of ``completion_tokens`` spent on reasoning.
    """

    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            prompt_tokens=self.prompt_tokens + other.prompt_tokens,
            completion_tokens=self.completion_tokens + other.completion_tokens,
            total_tokens=self.total_tokens + other.total_tokens,
            cache_read_tokens=self.cache_read_tokens + other.cache_read_tokens,
            cache_write_tokens=self.cache_write_tokens + other.cache_write_tokens,
            reasoning_tokens=self.reasoning_tokens + other.reasoning_tokens,
        )


InputTimeoutAction = Literal["deny", "error"]


class SessionKind(StrEnum):
    ROOT = "root"
    CHILD = "child"


class Session(_Frozen):
    session_id: str
    kind: SessionKind = SessionKind.ROOT
    parent_session_id: str | None = None
    model: str
    system_prompt: str | None = None
    tools: tuple[str, ...] = ()
    workspace: str
    metadata: dict[str, Any] = Field(default_factory=dict)
    created_at: datetime = Field(default_factory=utc_now)
    # People in the loop (``culm.input``): tool names or fnmatch patterns whose calls wait for a
    # person's approval, and how long a request may wait (None: for good) and what its expiry does.
    require_approval: tuple[str, ...] = ()
    input_timeout: float | None = None
    input_timeout_action: InputTimeoutAction = "deny"
    # The named agent the session was made from (its settings were copied in, then overridden).
    agent: str | None = None
    # The loop's limits for this session's runs (None: the engine's settings).
    max_rounds: int | None = None
    tool_timeout: float | None = None
    # Spend limits of each run of the session (sub-agents' spend included); None: no limit.
    max_cost_usd: float | None = None
    max_tokens: int | None = None


class ToolCall(_Frozen):
    """A tool call as the model asked for it. ``arguments`` is the raw JSON text."""

    id: str
    name: str
    arguments: str = "{}"


class UserMessage(_Frozen):
    role: Literal["user"] = "user"
    content: str


class AssistantMessage(_Frozen):
    role: Literal["assistant"] = "assistant"
    content: str = ""
    reasoning: str = ""
    # Opaque provider data that must go back with the reasoning (Anthropic's thinking signature).
    reasoning_signature: str | None = None
    tool_calls: tuple[ToolCall, ...] = ()


class ToolResultMessage(_Frozen):
    role: Literal["tool"] = "tool"
    tool_call_id: str
    tool_name: str
    content: str
    is_error: bool = False


Message = Annotated[UserMessage | AssistantMessage | ToolResultMessage, Field(discriminator="role")]


class RunStatus(StrEnum):
    """The seed's ``AgentStatus`` in snake_case; the error text lives in ``Run.error``."""

    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    CANCELLED = "cancelled"
    ERROR = "error"
    # Waiting for a person's answer (``culm.input``): active (it holds its session's slot) but
    # held by no process: no task, no lease, no owner. An answer makes it pending (ready) again.
    WAITING = "waiting"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_RUN_STATUSES


ACTIVE_RUN_STATUSES = frozenset({RunStatus.PENDING, RunStatus.RUNNING, RunStatus.WAITING})
TERMINAL_RUN_STATUSES = frozenset({RunStatus.COMPLETED, RunStatus.CANCELLED, RunStatus.ERROR})


class RunTrigger(StrEnum):
    API = "api"
    CLI = "cli"
    SPAWN = "spawn"
    SCHEDULE = "schedule"


class MultitaskPolicy(StrEnum):
    """What a run request on a busy session does."""

    REJECT = "reject"
    ENQUEUE = "enqueue"
    INTERRUPT = "interrupt"


class ToolPhase(StrEnum):
    BEGIN = "begin"
    FINISHED = "finished"
    ERROR = "error"
    WAITING = "waiting"  # a ``spawn_agent`` call whose sub-agent waits for a person


class Run(_Frozen):
    run_id: str
    session_id: str
    parent_run_id: str | None = None
    status: RunStatus = RunStatus.PENDING
    error: str | None = None
    created_at: datetime = Field(default_factory=utc_now)
    started_at: datetime | None = None
    completed_at: datetime | None = None
    round_count: int = 0
    last_tool_name: str | None = None
    last_tool_phase: ToolPhase | None = None
    last_event_at: datetime | None = None
    last_seq: int = 0
    usage: Usage = Field(default_factory=Usage)
    model: str
    trigger: RunTrigger = RunTrigger.API
    attempt: int = 1
    # The named agent of the run's session, if it was made from one (metrics group by it).
    agent: str | None = None
    # Not in the contract's list but needed to run it: the user message that starts the run,
    # and whether it waits behind another run of its session (multitask "enqueue").
    input: str = ""
    queued: bool = False
    # Fencing: bumped on every claim, takeover and release of the run; a worker's writes for
    # the run are conditional on the epoch it claimed it at (see ``storage/base.py``).
    epoch: int = 0
    # The worker executing it (its ``worker_id``), None while nobody has claimed it: a cancel
    # from another process is sent to this worker's control channel.
    owner: str | None = None
    # Spend limits of this run (None: the session's), see culm.loop.spend.
    max_cost_usd: float | None = None
    max_tokens: int | None = None
    # The W3C trace context the run's spans continue (the API caller's, the spawning tool
    # call's, the schedule fire's); None: a trace of its own.
    traceparent: str | None = None
    # What the run's usage cost in USD (None: unpriced), and with its sub-agents' runs: worked
    # out when the run is read (culm.cost), not stored.
    cost_usd: float | None = None
    cost_usd_with_descendants: float | None = None
