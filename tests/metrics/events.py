"""Builders of metrics events at chosen times, for the store and query tests."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from culm.domain.models import Usage
from culm.metrics import events as m

T0 = datetime(2026, 11, 16, 12, 0, tzinfo=UTC)  # a Monday


def at(when: datetime, run_id: str | None = None) -> m.EventMeta:
    return m.EventMeta(occurred_at=when, trace_id=run_id)


def usage(prompt: int, completion: int, **more: int) -> Usage:
    return Usage(
        prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion, **more
    )


def run_events(
    run_id: str,
    session_id: str,
    *,
    model: str = "openai:gpt-4o",
    when: datetime = T0,
    rounds: list[Usage] | None = None,
    tools: list[tuple[str, bool, int]] | None = None,
    status: m.SessionStatus = m.SessionStatus.COMPLETED,
    partial_last: bool = False,
) -> list[m.MetricsEvent]:
    """A whole run: start, rounds (tools in the first), message count, completion."""
    rounds = rounds if rounds is not None else [usage(100, 10)]
    events: list[m.MetricsEvent] = [
        m.SessionStarted(meta=at(when, run_id), session_id=session_id, model=model)
    ]
    for index, round_usage in enumerate(rounds, start=1):
        round_id = f"{run_id}:1:{index}"
        moment = when + timedelta(seconds=index)
        partial = partial_last and index == len(rounds)
        events.append(
            m.RoundStarted(
                meta=at(moment, run_id), round_id=round_id, session_id=session_id, model=model
            )
        )
        events.append(
            m.RoundCompleted(
                meta=at(moment + timedelta(milliseconds=500), run_id),
                round_id=round_id,
                session_id=session_id,
                status=m.RoundStatus.FAILED if partial else m.RoundStatus.SUCCESS,
                usage=round_usage,
                latency_ms=500,
                error="cut" if partial else None,
                partial=partial,
                model=model,
            )
        )
        if index == 1:
            for n, (name, success, latency) in enumerate(tools or []):
                events.append(
                    m.ToolCalled(
                        meta=at(moment + timedelta(milliseconds=600 + n), run_id),
                        tool_call_id=f"call_{n}",
                        round_id=round_id,
                        session_id=session_id,
                        tool_name=name,
                        latency_ms=latency,
                        success=success,
                    )
                )
    end = when + timedelta(seconds=len(rounds) + 1)
    events.append(
        m.MessageCountUpdated(
            meta=at(end, run_id), session_id=session_id, message_count=2 * len(rounds)
        )
    )
    events.append(m.SessionCompleted(meta=at(end, run_id), session_id=session_id, status=status))
    return events
