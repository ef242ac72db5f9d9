"""Run events: one discriminated union, the same JSON on every wire and in the store.

Every event carries ``seq`` (1, 2, 3 … per run, no gaps), ``run_id``, ``session_id`` and ``ts``.
Event type names are public API: never rename one. Events are built by the agent loop without an
envelope (``seq=0``) and stamped by the run's runner with :meth:`RunEventBase.stamped`.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from culm.domain.models import Usage
from culm.domain.text import model_json

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_E = TypeVar("_E", bound=BaseModel)


class RunEventBase(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    seq: int = 0
    run_id: str = ""
    session_id: str = ""
    ts: datetime = _EPOCH

    def stamped(self, *, seq: int, run_id: str, session_id: str, ts: datetime) -> RunEvent:
        """This event with its envelope filled in (a copy; the original is untouched).

        What ``model_copy(update=...)`` does, at a third of its cost (it runs for every event a
        run emits): the fields are already validated, and the envelope's types are fixed.
        """
        fields = self.__dict__.copy()
        fields["seq"] = seq
        fields["run_id"] = run_id
        fields["session_id"] = session_id
        fields["ts"] = ts
        fields_set = {*self.__pydantic_fields_set__, *_ENVELOPE}
        return _built(type(self), fields, fields_set)  # type: ignore[return-value]


_ENVELOPE = frozenset({"seq", "run_id", "session_id", "ts"})
_set = object.__setattr__


def _built(cls: type[_E], fields: dict[str, Any], fields_set: set[str]) -> _E:
    """A ``cls`` holding ``fields``, already valid, as pydantic would have built it (with a
    fields set of its own, as pydantic keeps one per object)."""
    event = object.__new__(cls)
    _set(event, "__dict__", fields)
    _set(event, "__pydantic_fields_set__", fields_set)
    _set(event, "__pydantic_extra__", None)
    _set(event, "__pydantic_private__", None)
    return event


class ExecutionStarted(RunEventBase):
    type: Literal["execution_started"] = "execution_started"
    started_at: datetime
    attempt: int


class RunnerProgress(RunEventBase):
    type: Literal["runner_progress"] = "runner_progress"
    round_count: int


class Token(RunEventBase):
    type: Literal["token"] = "token"
    content: str


class ReasoningToken(RunEventBase):
    type: Literal["reasoning_token"] = "reasoning_token"
    content: str


def text_event(kind: type[Token] | type[ReasoningToken], content: str) -> Token | ReasoningToken:
    """``kind(content=content)`` for a model's text, already a ``str``, without validating it
    again: the agent loop builds one per token."""
    type_ = "token" if kind is Token else "reasoning_token"
    fields = {"seq": 0, "run_id": "", "session_id": "", "ts": _EPOCH, "type": type_}
    fields["content"] = content
    return _built(kind, fields, {"content"})


class ToolStart(RunEventBase):
    type: Literal["tool_start"] = "tool_start"
    tool_call_id: str
    tool_name: str
    arguments: Any


class ToolToken(RunEventBase):
    type: Literal["tool_token"] = "tool_token"
    tool_call_id: str
    content: str


class ToolComplete(RunEventBase):
    type: Literal["tool_complete"] = "tool_complete"
    tool_call_id: str
    tool_name: str
    result: str
    elapsed_ms: int


class ToolError(RunEventBase):
    type: Literal["tool_error"] = "tool_error"
    tool_call_id: str
    tool_name: str
    error: str
    elapsed_ms: int


def _is_none(value: object) -> bool:
    return value is None


class TokenBudget(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    prompt_tokens: int
    completion_tokens: int = 0
    total_tokens: int = 0
    max_context_tokens: int | None = None
    budget_limit: int | None = None
    # Share of the context window the prompt fills (0-100+), and whether ``prompt_tokens`` is
    # partly a local estimate (before a model call) rather than what the provider reported.
    percent: float | None = None
    estimated: bool = False
    # The run's spend budget (sub-agents' spend included) and what it has spent so far: only
    # for a run with a budget (absent otherwise).
    max_tokens: int | None = Field(default=None, exclude_if=_is_none)
    max_cost_usd: float | None = Field(default=None, exclude_if=_is_none)
    spent_tokens: int | None = Field(default=None, exclude_if=_is_none)
    spent_cost_usd: float | None = Field(default=None, exclude_if=_is_none)


class TokenBudgetUpdated(RunEventBase):
    type: Literal["token_budget_updated"] = "token_budget_updated"
    usage: TokenBudget


# The ``error`` of a partial ``round_completed`` whose model call the run's cancel cut short.
CANCELLED_ROUND_ERROR = "cancelled"


class RoundCompleted(RunEventBase):
    """A round's model call ended. ``partial``: it did not finish (the stream was cut, failed or
    was cancelled); ``usage`` is then what the provider reported before that, and ``error``
    says what ended it."""

    type: Literal["round_completed"] = "round_completed"
    round: int
    usage: Usage
    latency_ms: int
    model: str
    partial: bool = False
    error: str | None = None
    # The call summarized the conversation for a compaction (not one of the agent's rounds).
    compaction: bool = False
    # What ``usage`` cost in USD (culm.cost); None when the model has no known price.
    cost_usd: float | None = None
    # Milliseconds from the model call's start to its first streamed chunk (None: none came),
    # and the model that answered as the provider named it (None: it did not say).
    first_chunk_ms: int | None = None
    response_model: str | None = None


class ContextPressure(RunEventBase):
    """The prompt passed a share of the context window (once per level per run)."""

    type: Literal["context_pressure"] = "context_pressure"
    percent: float
    level: Literal["warning", "critical"]


class ContextCompacted(RunEventBase):
    """The model's view of the conversation was compacted (the stored transcript is intact)."""

    type: Literal["context_compacted"] = "context_compacted"
    trigger: Literal["auto", "overflow", "manual"]
    strategy: str
    messages_compacted: int
    tokens_before: int
    tokens_after: int
    summary_usage: Usage


class SubAgentStarted(RunEventBase):
    type: Literal["sub_agent_started"] = "sub_agent_started"
    child_session_id: str
    child_run_id: str
    title: str | None = None


class SubAgentEvent(RunEventBase):
    type: Literal["sub_agent_event"] = "sub_agent_event"
    child_session_id: str
    child_run_id: str
    event: dict[str, Any]


class SubAgentHeartbeat(RunEventBase):
    type: Literal["sub_agent_heartbeat"] = "sub_agent_heartbeat"
    child_session_id: str
    child_run_id: str


class SubAgentCompleted(RunEventBase):
    type: Literal["sub_agent_completed"] = "sub_agent_completed"
    child_session_id: str
    child_run_id: str
    status: str
    error: str | None = None


class RunRecovered(RunEventBase):
    type: Literal["run_recovered"] = "run_recovered"
    previous_attempt: int
    action: Literal["requeued", "errored"]


class Complete(RunEventBase):
    type: Literal["complete"] = "complete"
    usage: Usage
    final_message: str


class Cancelled(RunEventBase):
    type: Literal["cancelled"] = "cancelled"
    reason: str


class Error(RunEventBase):
    type: Literal["error"] = "error"
    message: str
    code: str


class InputRequested(RunEventBase):
    """The run waits for a person: an approval of a tool call (``kind`` ``approval``: the
    call's ``tool_call_id``, ``tool_name`` and ``arguments``) or an answer to the model's
    ``ask_user`` question (``kind`` ``question``: ``question`` and ``choices``)."""

    type: Literal["input_requested"] = "input_requested"
    request_id: str
    kind: Literal["approval", "question"]
    tool_call_id: str
    tool_name: str
    arguments: Any = None
    question: str | None = None
    choices: list[str] | None = None


class InputReceived(RunEventBase):
    """A request was answered: ``approve`` (with ``reason`` and edited ``arguments``, if any)
    or ``answer``; ``timed_out`` when its ``input_timeout`` answered it (a denial)."""

    type: Literal["input_received"] = "input_received"
    request_id: str
    kind: Literal["approval", "question"]
    tool_call_id: str
    tool_name: str
    approve: bool | None = None
    reason: str | None = None
    arguments: Any = None
    answer: str | None = None
    timed_out: bool = False


class Gap(RunEventBase):
    type: Literal["gap"] = "gap"
    from_seq: int
    to_seq: int


RunEvent = Annotated[
    ExecutionStarted
    | RunnerProgress
    | Token
    | ReasoningToken
    | ToolStart
    | ToolToken
    | ToolComplete
    | ToolError
    | TokenBudgetUpdated
    | RoundCompleted
    | SubAgentStarted
    | SubAgentEvent
    | SubAgentHeartbeat
    | SubAgentCompleted
    | RunRecovered
    | Complete
    | Cancelled
    | Error
    | Gap
    | ContextPressure
    | ContextCompacted
    | InputRequested
    | InputReceived,
    Field(discriminator="type"),
]

TERMINAL_EVENT_TYPES = frozenset({"complete", "cancelled", "error"})
# Kept by a runner for late subscribers of a session stream (the seed's "critical events").
CRITICAL_EVENT_TYPES = frozenset(
    {
        "execution_started",
        "run_recovered",
        "sub_agent_started",
        "sub_agent_completed",
        "context_pressure",
        "context_compacted",
        "input_requested",
        "input_received",
        *TERMINAL_EVENT_TYPES,
    }
)

_adapter: TypeAdapter[RunEvent] = TypeAdapter(RunEvent)


def event_to_json(event: RunEvent) -> str:
    """The event's JSON; never fails on text with a lone surrogate (see ``model_json``)."""
    return model_json(event)


def event_to_dict(event: RunEvent) -> dict[str, Any]:
    return event.model_dump(mode="json")


def event_from_json(data: str | bytes) -> RunEvent:
    return _adapter.validate_json(data)


def event_from_dict(data: dict[str, Any]) -> RunEvent:
    return _adapter.validate_python(data)


def is_terminal(event: RunEvent) -> bool:
    return event.type in TERMINAL_EVENT_TYPES


def innermost(event: SubAgentEvent) -> tuple[str, dict[str, Any]]:
    """The run id and the event a ``sub_agent_event`` carries, unwrapped through every level of
    sub-agents (a grandchild's event reaches its root wrapped twice)."""
    run_id, inner = event.child_run_id, event.event
    while inner.get("type") == "sub_agent_event" and isinstance(inner.get("event"), dict):
        run_id, inner = str(inner.get("child_run_id", run_id)), inner["event"]
    return run_id, inner
