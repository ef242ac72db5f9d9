"""The liveness fields of a run (the seed's runner diagnostics), folded from its events.

One function serves both the in-memory runner and the store's batched row updates.

Seq reservation (pre-commit delivery): each write of a run's events also stores, in the run's
row, ``seq_reserved``: its last stored seq plus ``SEQ_RESERVE``. A runner may hand an event to
live subscribers before it is stored only if its seq is at or under the mark it knows to be
committed; whatever the store next appends for the run (recovery's ``run_recovered``, a cancel)
comes after the mark. So after a crash the events a client saw but the store lost are a range
of seqs never used again, which replay reports as a ``gap``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from culm.domain.events import RunEvent, SubAgentEvent, innermost
from culm.domain.models import ToolPhase

# How far ahead of a run's last stored seq the store reserves seqs: more than a run emits in
# one write of the batcher (its linger), so that in the steady state no event waits for a
# commit to be shown; a run that outruns it only waits for the next commit.
SEQ_RESERVE = 256

_TOOL_PHASES = {
    "tool_start": ToolPhase.BEGIN,
    "tool_complete": ToolPhase.FINISHED,
    "tool_error": ToolPhase.ERROR,
}


# A sub-agent's request for a person, and its answer, as its parent's liveness shows them: the
# parent's ``spawn_agent`` call waits (``last_tool_phase: waiting``), then runs on.
_SPAWN = "spawn_agent"
_CHILD_WAITS = {"input_requested": ToolPhase.WAITING, "input_received": ToolPhase.BEGIN}


@dataclass(frozen=True, slots=True)
class Liveness:
    last_seq: int = 0
    last_event_at: datetime | None = None
    last_tool_name: str | None = None
    last_tool_phase: ToolPhase | None = None
    round_count: int = 0


def apply(state: Liveness, event: RunEvent) -> Liveness:
    # Built directly rather than with dataclasses.replace: this runs for every event, twice.
    phase = _TOOL_PHASES.get(event.type)
    if phase is not None:
        tool_name: str = getattr(event, "tool_name", None) or state.last_tool_name or ""
        return Liveness(event.seq, event.ts, tool_name, phase, state.round_count)
    if isinstance(event, SubAgentEvent):
        waits = _CHILD_WAITS.get(str(innermost(event)[1].get("type")))
        if waits is not None:  # the parent shows that it waits on a child (or on its own)
            return Liveness(event.seq, event.ts, _SPAWN, waits, state.round_count)
    rounds = event.round_count if event.type == "runner_progress" else state.round_count
    return Liveness(event.seq, event.ts, state.last_tool_name, state.last_tool_phase, rounds)
