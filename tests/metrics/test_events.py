"""The seed's metrics events: every variant, its fields, and a JSON round trip."""

from __future__ import annotations

import typing
import uuid
from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from culm.domain.models import Usage
from culm.metrics import events as m

USAGE = Usage(
    prompt_tokens=120,
    completion_tokens=30,
    total_tokens=150,
    cache_read_tokens=100,
    cache_write_tokens=5,
    reasoning_tokens=12,
)
META = m.EventMeta.with_trace_id("run-1")

EVERY_VARIANT: list[m.MetricsEvent] = [
    m.SessionStarted(meta=META, session_id="s1", model="openai:gpt-4o"),
    m.SessionCompleted(meta=META, session_id="s1", status=m.SessionStatus.CANCELLED),
    m.RoundStarted(meta=META, round_id="r1", session_id="s1", model="openai:gpt-4o"),
    m.RoundCompleted(
        meta=META,
        round_id="r1",
        session_id="s1",
        status=m.RoundStatus.FAILED,
        usage=USAGE,
        latency_ms=250,
        error="stream cut",
        partial=True,
        model="openai:gpt-4o",
    ),
    m.ToolCalled(
        meta=META,
        tool_call_id="call_1",
        round_id="r1",
        session_id="s1",
        tool_name="read_file",
        latency_ms=3,
        success=False,
    ),
    m.MessageCountUpdated(meta=META, session_id="s1", message_count=4),
    m.RequestStarted(
        meta=META,
        request_id="req-456",
        endpoint="openai.chat_completions",
        model="gpt-5-mini",
        is_stream=True,
    ),
    m.RequestCompleted(
        meta=META,
        request_id="req-456",
        status_code=504,
        status=m.ForwardStatus.TIMEOUT,
        usage=None,
        latency_ms=30_000,
        error="upstream timed out",
    ),
    m.MetricsDropped(count=17, reason="queue_full"),
    m.StorageError(error="database is locked", event_type="round_completed"),
    m.WorkerStarted(),
    m.WorkerStopped(),
]


def test_event_meta_new() -> None:
    meta = m.EventMeta.new()
    assert uuid.UUID(meta.event_id).version == 4
    assert meta.trace_id is None
    assert meta.occurred_at.tzinfo is not None
    assert meta.occurred_at.utcoffset() == UTC.utcoffset(None)
    assert m.EventMeta.new().event_id != meta.event_id


def test_event_meta_with_trace_id() -> None:
    meta = m.EventMeta.with_trace_id("trace-123")
    assert meta.trace_id == "trace-123"
    assert uuid.UUID(meta.event_id).version == 4


def test_every_variant_of_the_seed_is_here() -> None:
    names = {
        category: {cls.model_fields["type"].default for cls in typing.get_args(union.__origin__)}
        for category, union in (
            ("chat", m.ChatEvent),
            ("forward", m.ForwardEvent),
            ("system", m.SystemEvent),
        )
    }
    assert names == {
        "chat": {
            "session_started", "session_completed", "round_started", "round_completed",
            "tool_called", "message_count_updated",
        },
        "forward": {"request_started", "request_completed"},
        "system": {"metrics_dropped", "storage_error", "worker_started", "worker_stopped"},
    }  # fmt: skip
    assert {event.type for event in EVERY_VARIANT} == set().union(*names.values())


@pytest.mark.parametrize("event", EVERY_VARIANT, ids=lambda event: event.type)
def test_json_round_trip(event: m.MetricsEvent) -> None:
    text = m.metrics_event_to_json(event)
    back = m.metrics_event_from_json(text)
    assert type(back) is type(event)
    assert back == event
    assert m.metrics_event_to_json(back) == text


def test_the_wire_form_is_tagged_by_category_and_type() -> None:
    event = m.metrics_event_from_json(
        '{"category": "chat", "type": "session_started", "session_id": "session-123",'
        ' "model": "gpt-4", "meta": {"event_id": "e", "occurred_at": "2026-11-21T08:00:00Z",'
        ' "trace_id": null}}'
    )
    assert isinstance(event, m.SessionStarted)
    assert (event.session_id, event.model) == ("session-123", "gpt-4")
    assert event.meta.occurred_at == datetime(2026, 11, 21, 8, tzinfo=UTC)
    with pytest.raises(ValidationError):
        m.metrics_event_from_json('{"category": "forward", "type": "session_started"}')


def test_usage_keys_are_culms_and_absent_ones_are_zero() -> None:
    event = m.metrics_event_from_json(
        '{"category": "forward", "type": "request_completed", "request_id": "r",'
        ' "status_code": 200, "status": "success", "latency_ms": 5,'
        ' "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}}'
    )
    assert isinstance(event, m.RequestCompleted)
    assert event.usage == Usage(prompt_tokens=3, completion_tokens=2, total_tokens=5)
    assert set(event.usage.model_dump()) == {
        "prompt_tokens", "completion_tokens", "total_tokens",
        "cache_read_tokens", "cache_write_tokens", "reasoning_tokens",
    }  # fmt: skip


def test_events_are_immutable_and_strict() -> None:
    event = m.WorkerStarted()
    with pytest.raises(ValidationError):
        event.meta = m.EventMeta.new()  # type: ignore[misc]
    with pytest.raises(ValidationError):
        m.SessionStarted(session_id="s", model="m", colour="red")  # type: ignore[call-arg]
    with pytest.raises(ValidationError):
        m.ToolCalled(
            tool_call_id="c",
            round_id="r",
            session_id="s",
            tool_name="t",
            latency_ms=-1,
            success=True,
        )


def test_event_ids_are_v4_and_leave_the_global_random_state_alone() -> None:
    import random

    state = random.getstate()
    ids = {m.new_event_id() for _ in range(1000)}
    assert random.getstate() == state
    assert len(ids) == 1000
    assert all(uuid.UUID(i).version == 4 and str(uuid.UUID(i)) == i for i in ids)
