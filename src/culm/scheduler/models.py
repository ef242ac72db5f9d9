"""Schedules as data: the API's JSON shape, a schedule's state, and the record of each fire.

    {"name": "weekday digest", "enabled": true, "timezone": "Europe/Paris",
     "trigger": {"type": "cron", "expr": "0 9 * * 1-5"},
     "run_config": {"message": "Summarize the inbox", "model": "openai:gpt-4o-mini",
                    "system_prompt": null, "tools": ["read"], "workspace": null},
     "misfire_policy": "run_once", "overlap_policy": "skip"}

A trigger is ``{"type": "cron", "expr"}`` (five fields), ``{"type": "interval",
"every_seconds"}`` or ``{"type": "once", "at", "run_now_if_past"}`` (ISO-8601; without an offset
it is a wall-clock time in the schedule's zone; a time that has passed is refused unless
``run_now_if_past`` is true, which fires it at once).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    computed_field,
    field_validator,
    model_validator,
)

from culm.domain.models import RunStatus
from culm.domain.text import refuse_unstorable
from culm.scheduler import cron
from culm.scheduler.zones import load_zone

MAX_INTERVAL = 366 * 24 * 3600


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _storable(cls, data: Any) -> Any:
        """NUL, lone surrogates and deep nesting are refused, naming the field (see
        :mod:`culm.domain.text`)."""
        return refuse_unstorable(data)


class MisfirePolicy(StrEnum):
    """What becomes of fires that came due while nothing could fire them (the server was down,
    or they are later than the misfire grace): all but those it names are recorded ``missed``."""

    SKIP = "skip"  # none of them runs
    RUN_ONCE = "run_once"  # one run, for the latest of them
    CATCH_UP = "catch_up"  # one run each, for the latest ``catch_up_limit`` of them


class OverlapPolicy(StrEnum):
    """What a fire does while an earlier fire of the same schedule is still running."""

    ALLOW = "allow"  # run alongside it
    SKIP = "skip"  # record the fire ``skipped``
    QUEUE_ONE = "queue_one"  # wait for it to end; a fire while one already waits is skipped


class FireStatus(StrEnum):
    """Where a fire stands. ``queued`` waits to be started; ``running`` has a run that has not
    ended; the rest are final."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCESS = "success"
    FAILED = "failed"
    SKIPPED = "skipped"
    MISSED = "missed"
    CANCELLED = "cancelled"

    @classmethod
    def of_run(cls, status: RunStatus) -> FireStatus:
        """The final status of a fire whose run ended with ``status``."""
        return _RUN_OUTCOMES[status]


_RUN_OUTCOMES = {
    RunStatus.COMPLETED: FireStatus.SUCCESS,
    RunStatus.ERROR: FireStatus.FAILED,
    RunStatus.CANCELLED: FireStatus.CANCELLED,
}


def _type_required(schema: dict[str, Any]) -> None:
    """In the JSON schema, a trigger's ``type`` is required: it is the tag that tells the
    kinds apart in a request (only Python callers may leave it out)."""
    schema["required"] = ["type", *[name for name in schema.get("required", []) if name != "type"]]


_TRIGGER_CONFIG = ConfigDict(json_schema_extra=_type_required)


class CronTrigger(_Model):
    model_config = _TRIGGER_CONFIG

    type: Literal["cron"] = "cron"
    expr: str = Field(max_length=200, examples=["0 9 * * 1-5"])

    @field_validator("expr")
    @classmethod
    def _check(cls, value: str) -> str:
        return cron.check(value)


class IntervalTrigger(_Model):
    model_config = _TRIGGER_CONFIG

    type: Literal["interval"] = "interval"
    every_seconds: int = Field(ge=1, le=MAX_INTERVAL, examples=[3600])

    @property
    def period(self) -> timedelta:
        return timedelta(seconds=self.every_seconds)


def _no_number(value: object) -> object:
    """A time is ISO-8601 text (or a datetime), never a count of seconds."""
    if isinstance(value, int | float):
        raise ValueError("expected an ISO-8601 time like '2026-12-01T09:00:00'")
    return value


class OnceTrigger(_Model):
    model_config = _TRIGGER_CONFIG

    type: Literal["once"] = "once"
    at: Annotated[datetime, BeforeValidator(_no_number)] = Field(examples=["2026-12-01T09:00:00"])
    run_now_if_past: bool = Field(
        default=False,
        description="When the trigger is set (created, or replaced by a PATCH) with an `at` "
        "that has passed: fire once right away instead of refusing it (422 on `trigger.at`)",
    )


Trigger = Annotated[CronTrigger | IntervalTrigger | OnceTrigger, Field(discriminator="type")]


class RunConfig(_Model):
    """The session and first message that each fire starts a run with (a new session each)."""

    message: str = Field(min_length=1, examples=["Summarize what changed since yesterday"])
    agent: str | None = Field(
        default=None,
        max_length=100,
        description="A named agent: its settings, replaced by those given here",
    )
    model: str | None = Field(default=None, max_length=200, examples=["scripted:demo"])
    system_prompt: str | None = None
    tools: tuple[str, ...] = Field(default=(), max_length=200, examples=[["read"]])
    workspace: str | None = Field(default=None, max_length=4096)


def _not_null(schema: dict[str, Any], *names: str) -> None:
    """Take null out of the JSON schema of the fields ``names`` (all, if none is named) of a
    patch: in Python None means "not given", and a request's null is refused (422)."""
    for name, field in schema.get("properties", {}).items():
        branches = field.get("anyOf")
        if (names and name not in names) or not branches:
            continue
        kept = [branch for branch in branches if branch != {"type": "null"}]
        del field["anyOf"]
        field.pop("default", None)  # null: not one of its values any more
        field.update(kept[0] if len(kept) == 1 else {"anyOf": kept})


class RunConfigPatch(_Model):
    """A change to a run config: the fields given replace those of the schedule."""

    model_config = ConfigDict(json_schema_extra=lambda schema: _not_null(schema, "message"))

    message: str | None = Field(default=None, min_length=1)
    agent: str | None = Field(default=None, max_length=100)
    model: str | None = Field(default=None, max_length=200)
    system_prompt: str | None = None
    tools: tuple[str, ...] | None = Field(default=None, max_length=200)
    workspace: str | None = Field(default=None, max_length=4096)


def _check_zone(value: str) -> str:
    load_zone(value)
    return value


class ScheduleSpec(_Model):
    """What a schedule is: the body of ``POST /v1/schedules``."""

    name: str = Field(min_length=1, max_length=200, examples=["weekday digest"])
    enabled: bool = True
    timezone: str = Field(default="UTC", min_length=1, max_length=64, examples=["Europe/Paris"])
    trigger: Trigger
    run_config: RunConfig
    misfire_policy: MisfirePolicy = MisfirePolicy.RUN_ONCE
    overlap_policy: OverlapPolicy = OverlapPolicy.SKIP
    # The cap of ``catch_up``: at most this many missed fires are run.
    catch_up_limit: int = Field(default=10, ge=1, le=1000)

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        return _check_zone(value)


class SchedulePatch(_Model):
    """A change to a schedule (``PATCH``): the fields given replace the schedule's; a trigger is
    replaced whole, a run config field by field."""

    # Left out means unchanged; null is refused (422), so the JSON schema does not offer it.
    model_config = ConfigDict(json_schema_extra=lambda schema: _not_null(schema))

    name: str | None = Field(default=None, min_length=1, max_length=200)
    enabled: bool | None = None
    timezone: str | None = Field(default=None, min_length=1, max_length=64)
    trigger: Trigger | None = None
    run_config: RunConfigPatch | None = None
    misfire_policy: MisfirePolicy | None = None
    overlap_policy: OverlapPolicy | None = None
    catch_up_limit: int | None = Field(default=None, ge=1, le=1000)

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str | None) -> str | None:
        return None if value is None else _check_zone(value)


class Schedule(ScheduleSpec):
    """A schedule with its identity and state."""

    schedule_id: str
    created_at: datetime
    updated_at: datetime
    # Interval triggers fire at anchor_at + k × every_seconds (k ≥ 1); set when the trigger is.
    anchor_at: datetime
    # None while paused, and once a `once` trigger has fired.
    next_fire_at: datetime | None = None
    last_success_at: datetime | None = None
    last_failure_at: datetime | None = None
    last_error: str | None = None
    consecutive_failures: int = 0


class ScheduleRun(_Model):
    """One fire of a schedule: the time it was for, and what became of it."""

    schedule_id: str
    scheduled_for: datetime
    status: FireStatus
    run_id: str | None = None
    manual: bool = False  # fired by `trigger` (run now), not by the clock
    started_at: datetime | None = None
    completed_at: datetime | None = None
    error: str | None = None

    @computed_field  # type: ignore[prop-decorator]  # pydantic's documented form
    @property
    def dispatch_lag_ms(self) -> int | None:
        """How late the run was started, in milliseconds after ``scheduled_for``."""
        if self.started_at is None:
            return None
        return round((self.started_at - self.scheduled_for) / timedelta(milliseconds=1))
