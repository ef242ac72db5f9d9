"""Chat metrics derived from stored run events (the agent loop knows nothing of metrics).

The engine hands every batch of stored run events to :meth:`RunMetricsDeriver.observe`, in
order. Every chat event it makes carries ``trace_id = run_id`` and the run event's time:

====================================  ==============================================================
run event                             chat event
====================================  ==============================================================
``execution_started``                 ``session_started`` (session_id = the culm session, model =
                                      the run's model)
``runner_progress``                   ``round_started`` (round_id ``<run_id>:<attempt>:<round>``)
``round_completed``                   ``round_completed`` (usage exactly as reported, latency_ms,
                                      model; ``partial`` → status ``cancelled`` when the run's
                                      cancel cut it, else ``failed``, with its error; else
                                      ``success``)
``tool_complete`` / ``tool_error``    ``tool_called`` (success true / false, latency_ms =
                                      elapsed_ms, in the current round)
``cancelled``, a ``tool_start``       ``tool_called`` (success false, ``cancelled``, latency_ms
without its end                       from the start to the cancel)
``complete`` / ``cancelled`` /        ``message_count_updated``, then ``session_completed``
``error``                             (status ``completed`` / ``cancelled`` / ``failed``)
====================================  ==============================================================

``message_count_updated`` is derived from the rounds, and is run-scoped: ``trace_id`` names the
run and ``message_count`` is how many messages that run added to the session's transcript — its
user message (first attempt), one assistant message per round whose model call finished, and one
result per tool call of a round that the run went past. A session's count is the sum over its
runs (a culm session spans runs; run events are the only source here).

Child runs (sub-agents) are runs of their own sessions and are derived the same way;
``sub_agent_event`` copies in the parent's stream are ignored, so nothing counts twice.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from culm.domain.events import (
    CANCELLED_ROUND_ERROR,
    Cancelled,
    Complete,
    Error,
    ExecutionStarted,
    RoundCompleted,
    RunEvent,
    RunnerProgress,
    ToolComplete,
    ToolError,
    ToolStart,
)
from culm.metrics import events as m

UNKNOWN_MODEL = "unknown"
MAX_TRACKED_RUNS = 10_000

Emit = Callable[[m.MetricsEvent], object]
ModelOf = Callable[[str], str | None]


@dataclass(slots=True)
class _Run:
    session_id: str
    model: str
    attempt: int = 1
    round: int = 0
    messages: int = 0
    pending_results: int = 0
    # Tool calls started and not finished: call id → (tool name, start).
    running_tools: dict[str, tuple[str, datetime]] = field(default_factory=dict)

    def round_id(self, run_id: str) -> str:
        return f"{run_id}:{self.attempt}:{self.round}"


class RunMetricsDeriver:
    """Turns stored run events into chat metrics events. ``model_of(run_id)`` gives an active
    run's model (run events do not carry it before the first round ends)."""

    def __init__(self, emit: Emit, model_of: ModelOf) -> None:
        self._emit = emit
        self._model_of = model_of
        self._runs: OrderedDict[str, _Run] = OrderedDict()
        self._handlers = self._by_type()

    def observe(self, events: Sequence[RunEvent]) -> None:
        # Most events (tokens) make no metric: one dict lookup each, not a match of classes.
        handlers = self._handlers
        for event in events:
            handler = handlers.get(event.type)
            if handler is not None:
                handler(event)

    def _by_type(self) -> dict[str, Callable[[Any], None]]:
        return {
            "execution_started": self._started,
            "runner_progress": self._round_started,
            "round_completed": self._round_completed,
            "tool_start": self._tool_started,
            "tool_complete": self._tool_called,
            "tool_error": self._tool_called,
            "complete": self._ended,
            "cancelled": self._ended,
            "error": self._ended,
        }

    def _meta(self, event: RunEvent) -> m.EventMeta:
        return m.EventMeta(occurred_at=event.ts, trace_id=event.run_id)

    def _track(self, event: RunEvent) -> _Run:
        run = self._runs.get(event.run_id)
        if run is None:
            model = self._model_of(event.run_id) or UNKNOWN_MODEL
            run = self._runs[event.run_id] = _Run(session_id=event.session_id, model=model)
            while len(self._runs) > MAX_TRACKED_RUNS:
                self._runs.popitem(last=False)
        return run

    def _started(self, event: ExecutionStarted) -> None:
        run = self._track(event)
        run.attempt, run.round, run.pending_results = event.attempt, 0, 0
        run.running_tools.clear()  # a requeued attempt: the crash ended them, not a cancel
        run.messages += event.attempt == 1
        self._emit(
            m.SessionStarted(meta=self._meta(event), session_id=run.session_id, model=run.model)
        )

    def _round_started(self, event: RunnerProgress) -> None:
        run = self._track(event)
        run.round = event.round_count
        run.messages += run.pending_results
        run.pending_results = 0
        self._emit(
            m.RoundStarted(
                meta=self._meta(event),
                round_id=run.round_id(event.run_id),
                session_id=run.session_id,
                model=run.model,
            )
        )

    def _round_completed(self, event: RoundCompleted) -> None:
        run = self._track(event)
        round_id = f"{event.run_id}:{run.attempt}:{event.round}"
        if event.compaction:  # a summarizer call: a round of its own, marked (seq: unique)
            round_id += f":compaction:{event.seq}"
        else:
            run.messages += not event.partial
        if run.model == UNKNOWN_MODEL:
            run.model = event.model
        self._emit(_round(event, self._meta(event), round_id, run.session_id))

    def _tool_started(self, event: ToolStart) -> None:
        run = self._track(event)
        run.running_tools[event.tool_call_id] = (event.tool_name, event.ts)

    def _tool_called(self, event: ToolComplete | ToolError) -> None:
        run = self._track(event)
        run.pending_results += 1
        run.running_tools.pop(event.tool_call_id, None)
        self._emit(
            m.ToolCalled(
                meta=self._meta(event),
                tool_call_id=event.tool_call_id,
                round_id=run.round_id(event.run_id),
                session_id=run.session_id,
                tool_name=event.tool_name,
                latency_ms=max(0, event.elapsed_ms),
                success=isinstance(event, ToolComplete),
            )
        )

    def _ended(self, event: Complete | Cancelled | Error) -> None:
        run = self._track(event)
        self._runs.pop(event.run_id, None)
        if isinstance(event, Cancelled):
            self._tools_cancelled(run, event)
        meta = self._meta(event)
        self._emit(
            m.MessageCountUpdated(meta=meta, session_id=run.session_id, message_count=run.messages)
        )
        self._emit(
            m.SessionCompleted(
                meta=m.EventMeta(occurred_at=event.ts, trace_id=event.run_id),
                session_id=run.session_id,
                status=_SESSION_STATUS[event.type],
            )
        )

    def _tools_cancelled(self, run: _Run, event: Cancelled) -> None:
        """The tool calls the cancel interrupted: counted, as cancelled (their results were
        not stored, so they add no message)."""
        for tool_call_id, (tool_name, started) in run.running_tools.items():
            elapsed = int((event.ts - started).total_seconds() * 1000)
            self._emit(
                m.ToolCalled(
                    meta=self._meta(event),
                    tool_call_id=tool_call_id,
                    round_id=run.round_id(event.run_id),
                    session_id=run.session_id,
                    tool_name=tool_name,
                    latency_ms=max(0, elapsed),
                    success=False,
                    cancelled=True,
                )
            )


_SESSION_STATUS = {
    "complete": m.SessionStatus.COMPLETED,
    "cancelled": m.SessionStatus.CANCELLED,
    "error": m.SessionStatus.FAILED,
}


def session_compaction_round(session_id: str, event: RoundCompleted) -> m.RoundCompleted:
    """The chat event of a summarizer call made outside any run (``engine.compact``): a round
    of the session with no run (no trace id), marked ``compaction``, under a round id of its
    own (``<session_id>:compaction:<event id>``)."""
    meta = m.EventMeta()
    return _round(event, meta, f"{session_id}:compaction:{meta.event_id}", session_id)


def _round(
    event: RoundCompleted, meta: m.EventMeta, round_id: str, session_id: str
) -> m.RoundCompleted:
    status = m.RoundStatus.SUCCESS
    if event.partial:
        cancelled = event.error == CANCELLED_ROUND_ERROR
        status = m.RoundStatus.CANCELLED if cancelled else m.RoundStatus.FAILED
    return m.RoundCompleted(
        meta=meta,
        round_id=round_id,
        session_id=session_id,
        status=status,
        usage=event.usage,
        latency_ms=max(0, event.latency_ms),
        error=event.error,
        partial=event.partial,
        model=event.model,
        compaction=event.compaction,
        first_chunk_ms=event.first_chunk_ms,
        response_model=event.response_model,
    )
