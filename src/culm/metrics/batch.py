"""Metrics events as table changes, and a batch of changes folded into rows (pure).

:func:`change` turns one event into a :data:`Change`: what it sets on which record, as a tuple
holding a dict of plain values. The bus queues changes rather than events: they are small, and
their values are a dict of plain values that the garbage collector does not track, so a full
queue costs it one small tuple per event instead of a tree of model objects. :func:`fold` merges a batch of changes; changes of one record in the same
batch become one row (a round's start and its completion, say). Which record an event belongs to:

- a session event: its run, ``meta.trace_id`` (the session id when an emitter sends none);
- a round event: ``round_id``; a tool call: its ``event_id``; a forward event: ``request_id``.

Each record counts for the UTC ``day`` of its completion (sessions: of their start).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from culm.domain.models import Usage
from culm.metrics.events import (
    MessageCountUpdated,
    MetricsDropped,
    MetricsEvent,
    RequestCompleted,
    RequestStarted,
    RoundCompleted,
    RoundStarted,
    SessionCompleted,
    SessionStarted,
    StorageError,
    ToolCalled,
)
from culm.metrics.tables import USAGE_KINDS

Row = dict[str, Any]
# (kind of write, the record's key, the values it sets)
Change = tuple[str, str, Row]


@dataclass(slots=True)
class Batch:
    """The rows a batch of changes writes, by table and kind of write."""

    sessions: dict[str, Row] = field(default_factory=dict)
    round_starts: dict[str, Row] = field(default_factory=dict)
    round_ends: dict[str, Row] = field(default_factory=dict)
    tool_calls: dict[str, Row] = field(default_factory=dict)
    forward_starts: dict[str, Row] = field(default_factory=dict)
    forward_ends: dict[str, Row] = field(default_factory=dict)
    system: list[Row] = field(default_factory=list)


def change(event: MetricsEvent) -> Change:
    return _CHANGES[event.type](event)


def fold(changes: Iterable[Change]) -> Batch:
    batch = Batch()
    for kind, key, values in changes:
        # A merge may fill in a change's values in place; a batch folded again (a retried
        # write) fills in the same, so its changes need no copying.
        _MERGES[kind](batch, key, values)
    return batch


def usage_columns(usage: Usage | None) -> Row:
    """The six kinds (a pydantic model's ``__dict__`` holds exactly its field values)."""
    return dict(vars(usage)) if usage is not None else dict.fromkeys(USAGE_KINDS, 0)


def _at(event: MetricsEvent) -> datetime:
    return event.meta.occurred_at


def _run_key(event: SessionStarted | SessionCompleted | MessageCountUpdated) -> str:
    return event.meta.trace_id or event.session_id


# One event → one change


def _session_started(event: Any) -> Change:
    assert isinstance(event, SessionStarted)
    values = {"session_id": event.session_id, "model": event.model, "started_at": _at(event)}
    return "session_started", _run_key(event), values


def _message_count(event: Any) -> Change:
    assert isinstance(event, MessageCountUpdated)
    values = {"session_id": event.session_id, "count": event.message_count, "at": _at(event)}
    return "message_count_updated", _run_key(event), values


def _session_completed(event: Any) -> Change:
    assert isinstance(event, SessionCompleted)
    values = {"session_id": event.session_id, "status": event.status.value, "at": _at(event)}
    return "session_completed", _run_key(event), values


def _round_started(event: Any) -> Change:
    assert isinstance(event, RoundStarted)
    values = {
        "round_id": event.round_id,
        "run_id": event.meta.trace_id,
        "session_id": event.session_id,
        "model": event.model,
        "started_at": _at(event),
    }
    return "round_started", event.round_id, values


def _round_completed(event: Any) -> Change:
    assert isinstance(event, RoundCompleted)
    values = {
        "round_id": event.round_id,
        "run_id": event.meta.trace_id,
        "session_id": event.session_id,
        "model": event.model,
        "status": event.status.value,
        "partial": event.partial,
        "error": event.error,
        "started_at": None,
        "completed_at": _at(event),
        "day": _at(event).date(),
        "latency_ms": event.latency_ms,
        **usage_columns(event.usage),
    }
    return "round_completed", event.round_id, values


def _tool_called(event: Any) -> Change:
    assert isinstance(event, ToolCalled)
    values = {
        "event_id": event.meta.event_id,
        "tool_call_id": event.tool_call_id,
        "round_id": event.round_id,
        "run_id": event.meta.trace_id,
        "session_id": event.session_id,
        "tool_name": event.tool_name,
        "success": event.success,
        "cancelled": event.cancelled,
        "latency_ms": event.latency_ms,
        "occurred_at": _at(event),
        "day": _at(event).date(),
    }
    return "tool_called", event.meta.event_id, values


def _request_started(event: Any) -> Change:
    assert isinstance(event, RequestStarted)
    values = {
        "request_id": event.request_id,
        "trace_id": event.meta.trace_id,
        "endpoint": event.endpoint,
        "model": event.model,
        "is_stream": event.is_stream,
        "status": "pending",
        "started_at": _at(event),
        "day": _at(event).date(),
    }
    return "request_started", event.request_id, values


def _request_completed(event: Any) -> Change:
    assert isinstance(event, RequestCompleted)
    values = {
        "request_id": event.request_id,
        "trace_id": event.meta.trace_id,
        "endpoint": None,
        "model": None,
        "is_stream": None,
        "status": event.status.value,
        "status_code": event.status_code,
        "has_usage": event.usage is not None,
        **usage_columns(event.usage),
        "latency_ms": event.latency_ms,
        "error": event.error,
        "partial": event.partial,
        "started_at": None,
        "completed_at": _at(event),
        "day": _at(event).date(),
    }
    return "request_completed", event.request_id, values


def _system(event: Any) -> Change:
    values = {
        "event_id": event.meta.event_id,
        "type": event.type,
        "occurred_at": _at(event),
        "day": _at(event).date(),
        "count": event.count if isinstance(event, MetricsDropped) else None,
        "reason": event.reason if isinstance(event, MetricsDropped) else None,
        "error": event.error if isinstance(event, StorageError) else None,
        "event_type": event.event_type if isinstance(event, StorageError) else None,
    }
    return "system", event.meta.event_id, values


_CHANGES: dict[str, Callable[[Any], Change]] = {
    "session_started": _session_started,
    "message_count_updated": _message_count,
    "session_completed": _session_completed,
    "round_started": _round_started,
    "round_completed": _round_completed,
    "tool_called": _tool_called,
    "request_started": _request_started,
    "request_completed": _request_completed,
    "metrics_dropped": _system,
    "storage_error": _system,
    "worker_started": _system,
    "worker_stopped": _system,
}


# Changes of one record → one row


def _session(batch: Batch, key: str, values: Row) -> Row:
    """The run's one row in this batch: every column, None where this batch does not know it
    (``message_count`` 0: counts only grow, the store keeps the larger)."""
    at = values.get("started_at") or values["at"]
    row = batch.sessions.get(key)
    if row is not None:
        row["last_at"] = max(row["last_at"], at)
    else:
        row = batch.sessions[key] = {
            "run_id": key,
            "session_id": values["session_id"],
            "model": None,
            "status": "running",
            "started_at": None,
            "completed_at": None,
            "day": at.date(),
            "message_count": 0,
            "last_at": at,
        }
    return row


def merge_run(stored: Mapping[str, Any], new: Row) -> Row:
    """A run's stored row updated by its row from a later batch: the first start counts (and
    dates the run), a completion sets the status, counts only grow."""
    started_first = stored["started_at"] is None and new["started_at"] is not None
    return {
        "run_id": stored["run_id"],
        "session_id": stored["session_id"],
        "model": new["model"] or stored["model"],
        "status": new["status"] if new["completed_at"] else stored["status"],
        "started_at": stored["started_at"] or new["started_at"],
        "completed_at": new["completed_at"] or stored["completed_at"],
        "day": new["day"] if started_first else stored["day"],
        "message_count": max(stored["message_count"], new["message_count"]),
        "last_at": max(stored["last_at"], new["last_at"]),
    }


def _merge_session_started(batch: Batch, key: str, values: Row) -> None:
    row = _session(batch, key, values)
    if row["started_at"] is None:
        started = values["started_at"]
        row.update(model=values["model"], started_at=started, day=started.date())


def _merge_message_count(batch: Batch, key: str, values: Row) -> None:
    row = _session(batch, key, values)
    row["message_count"] = max(row["message_count"], values["count"])


def _merge_session_completed(batch: Batch, key: str, values: Row) -> None:
    _session(batch, key, values).update(status=values["status"], completed_at=values["at"])


def _merge_round_started(batch: Batch, key: str, values: Row) -> None:
    completed = batch.round_ends.get(key)
    if completed is None:
        batch.round_starts[key] = values
        return
    for name in ("started_at", "model", "run_id"):  # out of order: fill in what it lacks
        completed[name] = completed[name] or values[name]


def _merge_round_completed(batch: Batch, key: str, values: Row) -> None:
    if key in batch.round_ends:
        return  # the first completion of a round counts
    start = batch.round_starts.pop(key, None)
    if start is not None:
        values["started_at"] = start["started_at"]
        values["model"] = values["model"] or start["model"]
        values["run_id"] = values["run_id"] or start["run_id"]
    batch.round_ends[key] = values


def _merge_tool_called(batch: Batch, key: str, values: Row) -> None:
    batch.tool_calls[key] = values


def _merge_request_started(batch: Batch, key: str, values: Row) -> None:
    completed = batch.forward_ends.get(key)
    if completed is None:
        batch.forward_starts[key] = values
        return
    for name in ("endpoint", "model", "is_stream", "started_at", "trace_id"):
        completed[name] = completed[name] if completed[name] is not None else values[name]


def _merge_request_completed(batch: Batch, key: str, values: Row) -> None:
    start = batch.forward_starts.pop(key, None)
    if start is not None:
        for name in ("endpoint", "model", "is_stream", "started_at"):
            values[name] = start[name]
        values["trace_id"] = values["trace_id"] or start["trace_id"]
    batch.forward_ends[key] = values


def _merge_system(batch: Batch, key: str, values: Row) -> None:
    batch.system.append(values)


_MERGES: dict[str, Callable[[Batch, str, Row], None]] = {
    "session_started": _merge_session_started,
    "message_count_updated": _merge_message_count,
    "session_completed": _merge_session_completed,
    "round_started": _merge_round_started,
    "round_completed": _merge_round_completed,
    "tool_called": _merge_tool_called,
    "request_started": _merge_request_started,
    "request_completed": _merge_request_completed,
    "system": _merge_system,
}
