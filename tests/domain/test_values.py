"""The small pure parts of culm.domain: field paths, liveness, time, trace ids, usage sums."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Annotated, Any, Literal

import pytest
from pydantic import AfterValidator, BaseModel, Field, TypeAdapter, ValidationError

from culm.domain import liveness
from culm.domain.events import RunnerProgress, Token, ToolComplete, ToolError, ToolStart
from culm.domain.fields import field_path, invalid_field
from culm.domain.models import RunStatus, ToolPhase, Usage
from culm.domain.time import as_utc, new_id, utc_now
from culm.domain.trace import run_id_for, traceparent_for

# Field paths


class Cron(BaseModel):
    type: Literal["cron"]
    expr: str


class Every(BaseModel):
    type: Literal["every"]
    seconds: int


class Schedule(BaseModel):
    name: str
    trigger: Annotated[Cron | Every, Field(discriminator="type")]
    steps: list[Cron] = []


def error_of(data: Any) -> ValidationError:
    with pytest.raises(ValidationError) as raised:
        Schedule.model_validate(data)
    return raised.value


def test_field_path_leaves_out_the_union_tag_the_client_never_wrote() -> None:
    data = {"name": "n", "trigger": {"type": "cron", "expr": 5}}
    (error,) = error_of(data).errors()
    assert error["loc"] == ("trigger", "cron", "expr")
    assert field_path(error["loc"], data) == "trigger.expr"


def test_field_path_keeps_a_key_that_is_in_the_data() -> None:
    data = {"trigger": {"type": "every", "every": {"seconds": "x"}}}
    assert field_path(("trigger", "every", "seconds"), data) == "trigger.every.seconds"
    with_key = {"trigger": {"type": "cron", "cron": {"expr": 1}}}
    assert field_path(("trigger", "cron", "expr"), with_key) == "trigger.cron.expr"


def test_field_path_walks_lists_and_stops_at_missing_parts() -> None:
    data = {"steps": [{"type": "cron", "expr": "ok"}, {"type": "cron", "expr": 3}]}
    assert field_path(("steps", 1, "cron", "expr"), data) == "steps.1.expr"
    assert field_path(("steps", 5, "cron", "expr"), data) == "steps.5.cron.expr"
    assert field_path(("steps", 2, "cron"), data) == "steps.2.cron"  # one past the end
    assert field_path(("steps", -1, "cron"), data) == "steps.-1.cron"
    assert field_path(("steps", "0", "cron"), data) == "steps.0.cron"  # a str is no index
    assert field_path(("steps", 0, "cron"), {"steps": ({"type": "cron"},)}) == "steps.0"
    assert field_path((), data) == ""


def test_invalid_field_names_the_first_error_and_counts_the_rest() -> None:
    data = {"name": 1, "trigger": {"type": "cron", "expr": 5}}
    error = invalid_field(error_of(data), data)
    assert error.field == "name"
    assert str(error) == "name: Input should be a valid string (and 1 more)"
    one = {"name": "n", "trigger": {"type": "cron", "expr": 5}}
    assert str(invalid_field(error_of(one), one)) == "trigger.expr: Input should be a valid string"


def test_invalid_field_drops_the_value_error_prefix_and_names_the_body() -> None:
    def positive(value: int) -> int:
        if value < 1:
            raise ValueError("must be positive")
        return value

    adapter: TypeAdapter[int] = TypeAdapter(Annotated[int, AfterValidator(positive)])
    with pytest.raises(ValidationError) as raised:
        adapter.validate_python(0)
    error = invalid_field(raised.value, 0)
    assert (error.field, str(error)) == ("body", "body: must be positive")


# Liveness

T = datetime(2026, 12, 1, tzinfo=UTC)


def test_liveness_follows_tools_and_rounds() -> None:
    state = liveness.Liveness()
    start = ToolStart(tool_call_id="c", tool_name="bash", arguments={}, seq=3, ts=T)
    state = liveness.apply(state, start)
    assert state == liveness.Liveness(3, T, "bash", ToolPhase.BEGIN, 0)
    later = T + timedelta(seconds=1)
    state = liveness.apply(state, Token(content="x", seq=4, ts=later))
    assert state == liveness.Liveness(4, later, "bash", ToolPhase.BEGIN, 0)
    done = ToolComplete(tool_call_id="c", tool_name="", result="", elapsed_ms=1, seq=5, ts=later)
    state = liveness.apply(state, done)  # an empty name keeps the last one
    assert state == liveness.Liveness(5, later, "bash", ToolPhase.FINISHED, 0)
    state = liveness.apply(state, RunnerProgress(round_count=2, seq=6, ts=later))
    assert state == liveness.Liveness(6, later, "bash", ToolPhase.FINISHED, 2)
    failed = ToolError(tool_call_id="d", tool_name="read", error="e", elapsed_ms=1, seq=7, ts=later)
    assert liveness.apply(state, failed) == liveness.Liveness(7, later, "read", ToolPhase.ERROR, 2)


def test_liveness_of_a_tool_without_any_name_is_empty() -> None:
    done = ToolComplete(tool_call_id="c", tool_name="", result="", elapsed_ms=1, seq=1, ts=T)
    assert liveness.apply(liveness.Liveness(), done).last_tool_name == ""


# Time and ids


def test_as_utc() -> None:
    naive = datetime(2026, 12, 1, 9, 0)  # noqa: DTZ001 - taken to be UTC
    assert as_utc(naive) == datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
    assert as_utc(naive).tzinfo is UTC
    plus_two = datetime(2026, 12, 1, 9, 0, tzinfo=timezone(timedelta(hours=2)))
    assert as_utc(plus_two) == datetime(2026, 12, 1, 7, 0, tzinfo=UTC)
    assert as_utc(plus_two).tzinfo is UTC
    assert as_utc(plus_two).hour == 7


def test_utc_now_is_aware_utc() -> None:
    now = utc_now()
    assert now.tzinfo is UTC
    assert abs(now - datetime.now(UTC)) < timedelta(hours=1)


def test_new_id_is_a_fresh_uuid4() -> None:
    first, second = new_id(), new_id()
    assert first != second
    assert len(first) == 36 and first[14] == "4"


# Trace context

RUN_ID = "0af76519-16cd-43dd-8448-eb211c80319c"
HEX = "0af7651916cd43dd8448eb211c80319c"


def test_traceparent_for_a_run_and_back() -> None:
    assert traceparent_for(RUN_ID) == f"00-{HEX}-8448eb211c80319c-01"
    assert traceparent_for(RUN_ID.upper()) == f"00-{HEX}-8448eb211c80319c-01"
    assert run_id_for(HEX) == RUN_ID
    assert run_id_for(HEX.upper()) == RUN_ID


@pytest.mark.parametrize("run_id", ["run-42", "", "0" * 8 + "-0000-0000-0000-" + "0" * 12])
def test_no_traceparent_for_a_run_id_that_is_no_uuid(run_id: str) -> None:
    assert traceparent_for(run_id) is None


@pytest.mark.parametrize("trace_hex", ["0" * 32, HEX[:-1], HEX + "0", "g" * 32])
def test_no_run_id_for_an_invalid_trace_id(trace_hex: str) -> None:
    assert run_id_for(trace_hex) is None


# Usage and statuses


def test_usage_adds_every_kind() -> None:
    a = Usage(
        prompt_tokens=1,
        completion_tokens=2,
        total_tokens=3,
        cache_read_tokens=4,
        cache_write_tokens=5,
        reasoning_tokens=6,
    )
    b = Usage(
        prompt_tokens=10,
        completion_tokens=20,
        total_tokens=30,
        cache_read_tokens=40,
        cache_write_tokens=50,
        reasoning_tokens=60,
    )
    assert a + b == Usage(
        prompt_tokens=11,
        completion_tokens=22,
        total_tokens=33,
        cache_read_tokens=44,
        cache_write_tokens=55,
        reasoning_tokens=66,
    )


def test_terminal_statuses() -> None:
    assert {s for s in RunStatus if s.is_terminal} == {"completed", "cancelled", "error"}
