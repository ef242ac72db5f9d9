"""Rows of the ``sessions`` and ``runs`` tables to domain models and back."""

from __future__ import annotations

import json
from typing import Any

import sqlalchemy as sa

from culm.domain.models import Run, RunStatus, RunTrigger, Session, SessionKind, ToolPhase, Usage


def session_from_row(row: sa.Row[Any]) -> Session:
    return Session(
        session_id=row.session_id,
        kind=SessionKind(row.kind),
        parent_session_id=row.parent_session_id,
        model=row.model,
        system_prompt=row.system_prompt,
        tools=tuple(row.tools),
        workspace=row.workspace,
        metadata=row.metadata,
        created_at=row.created_at,
        require_approval=tuple(row.require_approval or ()),
        input_timeout=row.input_timeout,
        input_timeout_action=row.input_timeout_action,
        agent=row.agent,
        max_rounds=row.max_rounds,
        tool_timeout=row.tool_timeout,
        max_cost_usd=row.max_cost_usd,
        max_tokens=row.max_tokens,
    )


def session_to_row(session: Session) -> dict[str, object]:
    row = session.model_dump(mode="json")
    row["tools"] = list(session.tools)
    row["require_approval"] = list(session.require_approval)
    row["created_at"] = session.created_at
    return row


def run_to_row(run: Run) -> dict[str, Any]:
    # The owner is the store's to set (a claim, a reservation owned by its caller).
    exclude = {"queued", "usage", "last_tool_phase", "status", "trigger", "owner"}
    exclude |= {"cost_usd", "cost_usd_with_descendants"}  # worked out on reading
    row = run.model_dump(exclude=exclude)
    row.update(
        status=run.status.value,
        trigger=run.trigger.value,
        usage=run.usage.model_dump(),
        last_tool_phase=run.last_tool_phase.value if run.last_tool_phase else None,
    )
    return row


def run_from_row(row: sa.Row[Any]) -> Run:
    usage = row.usage
    if isinstance(usage, str):
        usage = json.loads(usage)
    return Run(
        run_id=row.run_id,
        session_id=row.session_id,
        parent_run_id=row.parent_run_id,
        status=RunStatus(row.status),
        error=row.error,
        created_at=row.created_at,
        started_at=row.started_at,
        completed_at=row.completed_at,
        round_count=row.round_count,
        last_tool_name=row.last_tool_name,
        last_tool_phase=ToolPhase(row.last_tool_phase) if row.last_tool_phase else None,
        last_event_at=row.last_event_at,
        last_seq=row.last_seq,
        usage=Usage(**usage) if usage else Usage(),
        model=row.model,
        trigger=RunTrigger(row.trigger),
        attempt=row.attempt,
        agent=row.agent,
        input=row.input,
        queued=row.queued,
        epoch=row.epoch,
        owner=row.owner,
        max_cost_usd=row.max_cost_usd,
        max_tokens=row.max_tokens,
        traceparent=row.traceparent,
    )
