"""Chat metrics derived from stored run events."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from culm.domain.events import (
    Cancelled,
    Complete,
    Error,
    ExecutionStarted,
    RoundCompleted,
    RunEvent,
    RunEventBase,
    RunnerProgress,
    SubAgentEvent,
    Token,
    ToolComplete,
    ToolError,
    ToolStart,
)
from culm.domain.models import Usage
from culm.metrics import events as m
from culm.metrics.derive import RunMetricsDeriver

T = datetime(2026, 11, 21, 8, tzinfo=UTC)
USAGE = Usage(prompt_tokens=90, completion_tokens=9, total_tokens=99, cache_read_tokens=60)


class Stamper:
    def __init__(self, run_id: str = "run-1", session_id: str = "sess-1") -> None:
        self.run_id, self.session_id, self.seq = run_id, session_id, 0

    def __call__(self, payload: RunEventBase) -> RunEvent:
        self.seq += 1
        ts = T + timedelta(seconds=self.seq)
        return payload.stamped(seq=self.seq, run_id=self.run_id, session_id=self.session_id, ts=ts)


def derive(events: list[RunEvent], models: dict[str, str] | None = None) -> list[m.MetricsEvent]:
    out: list[m.MetricsEvent] = []
    known = {"run-1": "openai:gpt-4o"} if models is None else models
    deriver = RunMetricsDeriver(out.append, known.get)
    deriver.observe(events)
    return out


def a_run(stamp: Stamper, terminal: RunEventBase) -> list[RunEvent]:
    payloads: list[RunEventBase] = [
        ExecutionStarted(started_at=T, attempt=1),
        RunnerProgress(round_count=1),
        Token(content="Looking"),
        RoundCompleted(round=1, usage=USAGE, latency_ms=420, model="openai:gpt-4o"),
        ToolComplete(tool_call_id="c1", tool_name="grep", result="x", elapsed_ms=7),
        ToolError(tool_call_id="c2", tool_name="bash", error="boom", elapsed_ms=30),
        RunnerProgress(round_count=2),
        RoundCompleted(round=2, usage=USAGE, latency_ms=100, model="openai:gpt-4o"),
        terminal,
    ]
    return [stamp(p) for p in payloads]


def test_a_whole_run_maps_to_the_seeds_chat_events() -> None:
    out = derive(a_run(Stamper(), Complete(usage=USAGE + USAGE, final_message="done")))
    assert [e.type for e in out] == [
        "session_started", "round_started", "round_completed", "tool_called", "tool_called",
        "round_started", "round_completed", "message_count_updated", "session_completed",
    ]  # fmt: skip
    assert all(e.meta.trace_id == "run-1" for e in out)
    started = out[0]
    assert isinstance(started, m.SessionStarted)
    assert (started.session_id, started.model, started.meta.occurred_at) == (
        "sess-1",
        "openai:gpt-4o",
        T + timedelta(seconds=1),
    )
    first = out[2]
    assert isinstance(first, m.RoundCompleted)
    assert (first.round_id, first.status, first.usage, first.latency_ms) == (
        "run-1:1:1",
        m.RoundStatus.SUCCESS,
        USAGE,
        420,
    )
    tools = [e for e in out if isinstance(e, m.ToolCalled)]
    assert [(t.round_id, t.tool_name, t.success, t.latency_ms) for t in tools] == [
        ("run-1:1:1", "grep", True, 7),
        ("run-1:1:1", "bash", False, 30),
    ]
    count = out[7]
    assert isinstance(count, m.MessageCountUpdated)
    assert count.message_count == 5  # user, assistant, two tool results, assistant
    assert out[-1] == m.SessionCompleted(
        meta=out[-1].meta, session_id="sess-1", status=m.SessionStatus.COMPLETED
    )


def test_terminal_statuses() -> None:
    for terminal, status in (
        (Cancelled(reason="by request"), m.SessionStatus.CANCELLED),
        (Error(message="x", code="model_error"), m.SessionStatus.FAILED),
    ):
        out = derive(a_run(Stamper(), terminal))
        assert isinstance(out[-1], m.SessionCompleted)
        assert out[-1].status is status


def test_a_round_cut_by_a_cancel_is_cancelled_with_its_usage_not_failed() -> None:
    stamp = Stamper()
    events = [
        stamp(ExecutionStarted(started_at=T, attempt=1)),
        stamp(RunnerProgress(round_count=1)),
        stamp(
            RoundCompleted(
                round=1, usage=USAGE, latency_ms=5, model="m", partial=True, error="cancelled"
            )
        ),
        stamp(Cancelled(reason="by request")),
    ]
    out = derive(events)
    partial = out[2]
    assert isinstance(partial, m.RoundCompleted)
    assert (partial.status, partial.partial, partial.error, partial.usage) == (
        m.RoundStatus.CANCELLED,
        True,
        "cancelled",
        USAGE,
    )
    count = out[3]
    assert isinstance(count, m.MessageCountUpdated)
    assert count.message_count == 1  # the user message; no assistant message was stored


def test_a_partial_round_that_broke_is_failed() -> None:
    stamp = Stamper()
    events = [
        stamp(ExecutionStarted(started_at=T, attempt=1)),
        stamp(RunnerProgress(round_count=1)),
        stamp(
            RoundCompleted(
                round=1, usage=USAGE, latency_ms=5, model="m", partial=True, error="reset"
            )
        ),
        stamp(Error(message="reset", code="model_error")),
    ]
    partial = derive(events)[2]
    assert isinstance(partial, m.RoundCompleted)
    assert (partial.status, partial.partial) == (m.RoundStatus.FAILED, True)


def test_a_requeued_attempt_numbers_its_rounds_apart() -> None:
    stamp = Stamper()
    events = [
        stamp(ExecutionStarted(started_at=T, attempt=1)),
        stamp(RunnerProgress(round_count=1)),
        stamp(ExecutionStarted(started_at=T, attempt=2)),
        stamp(RunnerProgress(round_count=1)),
    ]
    rounds = [e.round_id for e in derive(events) if isinstance(e, m.RoundStarted)]
    assert rounds == ["run-1:1:1", "run-1:2:1"]


def test_sub_agent_copies_are_ignored_and_the_model_falls_back() -> None:
    stamp = Stamper()
    copy = SubAgentEvent(child_session_id="c", child_run_id="cr", event={"type": "round_completed"})
    events = [
        stamp(ExecutionStarted(started_at=T, attempt=1)),
        stamp(copy),
        stamp(RunnerProgress(round_count=1)),
    ]
    out = derive(events, models={})
    assert [e.type for e in out] == ["session_started", "round_started"]
    assert isinstance(out[0], m.SessionStarted) and out[0].model == "unknown"


def test_tool_calls_a_cancel_ended_are_counted_as_cancelled() -> None:
    stamp = Stamper()
    events = [
        stamp(ExecutionStarted(started_at=T, attempt=1)),
        stamp(RunnerProgress(round_count=1)),
        stamp(RoundCompleted(round=1, usage=USAGE, latency_ms=5, model="m")),
        stamp(ToolStart(tool_call_id="c1", tool_name="read_file", arguments={})),
        stamp(ToolStart(tool_call_id="c2", tool_name="bash", arguments={})),
        stamp(ToolComplete(tool_call_id="c1", tool_name="read_file", result="x", elapsed_ms=3)),
        stamp(Cancelled(reason="by request")),
    ]
    calls = [e for e in derive(events) if isinstance(e, m.ToolCalled)]
    assert [(c.tool_call_id, c.success, c.cancelled, c.latency_ms) for c in calls] == [
        ("c1", True, False, 3),
        ("c2", False, True, 2000),  # from its start (seq 5) to the cancel (seq 7)
    ]
    assert calls[1].round_id == "run-1:1:1"
