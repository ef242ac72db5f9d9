"""The metrics events: the seed's ``MetricsEvent`` (``chat`` | ``forward`` | ``system``) in Python.

Every variant of the seed is here with its fields and meaning, in snake_case. An event is a
frozen pydantic model tagged twice: ``category`` picks the family, ``type`` the variant, so one
JSON object round-trips to the same class::

    {"category": "chat", "type": "session_started",
     "meta": {"event_id": "…", "occurred_at": "2026-11-21T08:00:00Z", "trace_id": "<run_id>"},
     "session_id": "…", "model": "openai:gpt-4o-mini"}

Differences from the seed, all additive:

- usage uses culm's keys (``prompt_tokens``, ``completion_tokens``, ``total_tokens``,
  ``cache_read_tokens``, ``cache_write_tokens``, ``reasoning_tokens``): :class:`~culm.Usage`;
- ``round_completed`` also has ``partial`` (the model stream was cut: ``usage`` is what the
  provider reported up to the cut) and ``model`` (so a completion whose start was never seen
  still counts for its model);
- the system events carry ``meta`` too, so they are stored with the time they happened.
"""

from __future__ import annotations

import os
import random
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from culm.domain.models import Usage
from culm.domain.time import utc_now


def new_event_id() -> str:
    """A UUID v4 from a private pseudo-random generator: unique is all an event id needs, and
    this is several times cheaper than ``uuid.uuid4()`` (which also releases the GIL to read
    ``os.urandom``: a thread switch per event while the SQLite thread is busy). The generator is
    seeded from the OS at import and again in a forked child, and leaves the global ``random``
    state alone."""
    bits = _ids.getrandbits(128) & _CLEAR_VERSION_AND_VARIANT | _VERSION_4_VARIANT_RFC
    text = f"{bits:032x}"
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


_ids = random.Random()
os.register_at_fork(after_in_child=_ids.seed)
_CLEAR_VERSION_AND_VARIANT = ~((0xF000 << 64) | (0xC000 << 48))
_VERSION_4_VARIANT_RFC = (0x4000 << 64) | (0x8000 << 48)


class EventMeta(BaseModel):
    """Identity and time of one event; ``trace_id`` links events of one request chain (the
    run's ``run_id`` for chat events)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    event_id: str = Field(default_factory=new_event_id)
    occurred_at: datetime = Field(default_factory=utc_now)
    trace_id: str | None = None

    @classmethod
    def new(cls) -> Self:
        """Fresh metadata: a new UUID v4, now, no trace id."""
        return cls()

    @classmethod
    def with_trace_id(cls, trace_id: str) -> Self:
        """Fresh metadata linked to ``trace_id``."""
        return cls(trace_id=trace_id)


class SessionStatus(StrEnum):
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


class RoundStatus(StrEnum):
    SUCCESS = "success"
    FAILED = "failed"
    CANCELLED = "cancelled"  # its run was cancelled during the model call: not a failure


class ForwardStatus(StrEnum):
    SUCCESS = "success"
    ERROR = "error"
    TIMEOUT = "timeout"


class _Event(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    meta: EventMeta = Field(default_factory=EventMeta)


# Chat events: the agent loop's sessions, rounds and tool calls (derived from run events).


class SessionStarted(_Event):
    """A chat session began (in culm: a run of the session started)."""

    category: Literal["chat"] = "chat"
    type: Literal["session_started"] = "session_started"
    session_id: str
    model: str


class SessionCompleted(_Event):
    """A chat session ended (in culm: the run ended), whatever the outcome."""

    category: Literal["chat"] = "chat"
    type: Literal["session_completed"] = "session_completed"
    session_id: str
    status: SessionStatus


class RoundStarted(_Event):
    """A round (one model call plus its tool calls) began."""

    category: Literal["chat"] = "chat"
    type: Literal["round_started"] = "round_started"
    round_id: str
    session_id: str
    model: str


class RoundCompleted(_Event):
    """A round's model call ended: its usage as the provider reported it, its latency, and the
    error when it failed. ``partial``: the stream was cut (usage up to the cut)."""

    category: Literal["chat"] = "chat"
    type: Literal["round_completed"] = "round_completed"
    round_id: str
    session_id: str
    status: RoundStatus
    usage: Usage = Field(default_factory=Usage)
    latency_ms: int = Field(ge=0)
    error: str | None = None
    partial: bool = False
    model: str | None = None
    # A compaction's summarizer call (its round_id ends ``:compaction:<seq>``), not an agent round.
    compaction: bool = False
    # Milliseconds from the call's start to its first streamed chunk (None: none came), and the
    # model that answered as the provider named it.
    first_chunk_ms: int | None = None
    response_model: str | None = None


class ToolCalled(_Event):
    """A tool call of a round finished (``success`` false: it failed, or, with ``cancelled``,
    its run was cancelled while it ran)."""

    category: Literal["chat"] = "chat"
    type: Literal["tool_called"] = "tool_called"
    tool_call_id: str
    round_id: str
    session_id: str
    tool_name: str
    latency_ms: int = Field(ge=0)
    success: bool
    cancelled: bool = False


class MessageCountUpdated(_Event):
    """A session's message count changed (see ``culm.metrics.derive`` for culm's counting)."""

    category: Literal["chat"] = "chat"
    type: Literal["message_count_updated"] = "message_count_updated"
    session_id: str
    message_count: int = Field(ge=0)


# Forward events: requests the proxy forwards to an upstream provider.


class RequestStarted(_Event):
    """A request was sent upstream. ``endpoint`` is e.g. ``openai.chat_completions``."""

    category: Literal["forward"] = "forward"
    type: Literal["request_started"] = "request_started"
    request_id: str
    endpoint: str
    model: str
    is_stream: bool


class RequestCompleted(_Event):
    """A forwarded request ended: the upstream status, usage when reported, latency, error.
    ``partial``: the answer broke off (the client left, the upstream cut it or timed out), so
    ``usage`` is what had been seen by then."""

    category: Literal["forward"] = "forward"
    type: Literal["request_completed"] = "request_completed"
    request_id: str
    status_code: int
    status: ForwardStatus
    usage: Usage | None = None
    latency_ms: int = Field(ge=0)
    error: str | None = None
    partial: bool = False


# System events: the metrics pipeline watching itself.


class MetricsDropped(_Event):
    """``count`` events were dropped (the bus was full, or storing them kept failing)."""

    category: Literal["system"] = "system"
    type: Literal["metrics_dropped"] = "metrics_dropped"
    count: int = Field(ge=0)
    reason: str


class StorageError(_Event):
    """Storing a batch failed (it is retried); ``event_type`` names what it held."""

    category: Literal["system"] = "system"
    type: Literal["storage_error"] = "storage_error"
    error: str
    event_type: str


class WorkerStarted(_Event):
    category: Literal["system"] = "system"
    type: Literal["worker_started"] = "worker_started"


class WorkerStopped(_Event):
    category: Literal["system"] = "system"
    type: Literal["worker_stopped"] = "worker_stopped"


ChatEvent = Annotated[
    SessionStarted
    | SessionCompleted
    | RoundStarted
    | RoundCompleted
    | ToolCalled
    | MessageCountUpdated,
    Field(discriminator="type"),
]
ForwardEvent = Annotated[RequestStarted | RequestCompleted, Field(discriminator="type")]
SystemEvent = Annotated[
    MetricsDropped | StorageError | WorkerStarted | WorkerStopped, Field(discriminator="type")
]
MetricsEvent = Annotated[ChatEvent | ForwardEvent | SystemEvent, Field(discriminator="category")]

_adapter: TypeAdapter[MetricsEvent] = TypeAdapter(MetricsEvent)


def metrics_event_to_json(event: MetricsEvent) -> str:
    return event.model_dump_json()


def metrics_event_from_json(data: str | bytes) -> MetricsEvent:
    return _adapter.validate_json(data)
