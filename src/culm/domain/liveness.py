"""The liveness fields of a run (the seed's runner diagnostics), folded from its events.

One function serves both the in-memory runner and the store's batched row updates.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime

from culm.domain.events import RunEvent
from culm.domain.models import ToolPhase

_TOOL_PHASES = {
    "tool_start": ToolPhase.BEGIN,
    "tool_complete": ToolPhase.FINISHED,
    "tool_error": ToolPhase.ERROR,
}


@dataclass(frozen=True, slots=True)
class Liveness:
    last_seq: int = 0
    last_event_at: datetime | None = None
    last_tool_name: str | None = None
    last_tool_phase: ToolPhase | None = None
    round_count: int = 0


def apply(state: Liveness, event: RunEvent) -> Liveness:
    phase = _TOOL_PHASES.get(event.type)
    if phase is not None:
        tool_name: str = getattr(event, "tool_name", None) or state.last_tool_name or ""
        return replace(
            state,
            last_seq=event.seq,
            last_event_at=event.ts,
            last_tool_name=tool_name,
            last_tool_phase=phase,
        )
    if event.type == "runner_progress":
        return replace(
            state, last_seq=event.seq, last_event_at=event.ts, round_count=event.round_count
        )
    return replace(state, last_seq=event.seq, last_event_at=event.ts)
