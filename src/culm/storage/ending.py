"""Ending a run from its stored terminal event.

A run's terminal event is stored before its terminal status (the order the runtime keeps). If
the process stops, or the store fails, between the two, the run row still says ``running``
although its stream has ended. Recovery must then not append ``run_recovered`` and another
terminal event after it (a run stream ends with its terminal event), nor run it again: the run
did end, so its row is set to what its terminal event says.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from culm.domain.events import Complete, Error, RoundCompleted, event_from_json, is_terminal
from culm.domain.models import RunStatus, Usage
from culm.storage.schema import run_events

_LAST_EVENT = (
    sa.select(run_events.c.body)
    .where(run_events.c.run_id == sa.bindparam("run_id"))
    .order_by(run_events.c.seq.desc())
    .limit(1)
)
_ATTEMPT_START = sa.select(sa.func.max(run_events.c.seq)).where(
    run_events.c.run_id == sa.bindparam("run_id"), run_events.c.type == "execution_started"
)
_ROUNDS_SINCE = sa.select(run_events.c.body).where(
    run_events.c.run_id == sa.bindparam("run_id"),
    run_events.c.type == "round_completed",
    run_events.c.seq > sa.bindparam("after"),
)


def ending_values(conn: sa.Connection, run_id: str) -> dict[str, Any] | None:
    """The run row's final values as its last stored event says (status, error, usage,
    completed_at; no owner), or None when that event is not terminal (or there is none)."""
    body = conn.scalar(_LAST_EVENT, {"run_id": run_id})
    if body is None:
        return None
    event = event_from_json(body)
    if not is_terminal(event):
        return None
    error: str | None = None
    if isinstance(event, Complete):
        status, usage = RunStatus.COMPLETED, event.usage
    else:
        # The run's usage is its last attempt's rounds', as the runtime counts it.
        usage = _attempt_usage(conn, run_id)
        if isinstance(event, Error):
            status, error = RunStatus.ERROR, event.message
        else:
            status = RunStatus.CANCELLED
    return {
        "status": status.value,
        "error": error,
        "usage": usage.model_dump(),
        "completed_at": event.ts,
        "owner": None,
        "lease_expires_at": None,
    }


def _attempt_usage(conn: sa.Connection, run_id: str) -> Usage:
    after = conn.scalar(_ATTEMPT_START, {"run_id": run_id}) or 0
    usage = Usage()
    for body in conn.scalars(_ROUNDS_SINCE, {"run_id": run_id, "after": after}):
        event = event_from_json(body)
        if isinstance(event, RoundCompleted):
            usage += event.usage
    return usage
