"""Schedules: create, list, read, change, delete, run now, and the record of their fires."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Query, Response

from culm.api.confine import check_client_session
from culm.api.deps import EngineDep
from culm.api.openapi import errors
from culm.api.schemas import ScheduleList, ScheduleRunList, ScheduleUpcoming
from culm.scheduler.describe import describe
from culm.scheduler.models import Schedule, SchedulePatch, ScheduleRun, ScheduleSpec
from culm.scheduler.triggers import next_after

router = APIRouter(prefix="/v1/schedules", tags=["schedules"])

Limit = Annotated[int, Query(ge=1, le=1000)]

UNKNOWN = errors({404: "`not_found`: no schedule has this id"})
INVALID = errors(
    {
        422: "`invalid_request`: a field is invalid (`field` names it: `trigger.expr`, "
        "`timezone`, `misfire_policy`, `run_config.model` …)"
    }
)


@router.post("", status_code=201, responses=INVALID)
async def create_schedule(body: ScheduleSpec, engine: EngineDep) -> Schedule:
    """Create a schedule; ``next_fire_at`` says when it fires first."""
    check_client_session(engine.settings, workspace=body.run_config.workspace, prefix="run_config.")
    return await engine.schedules.create(body)


@router.get("")
async def list_schedules(engine: EngineDep, limit: Limit = 100) -> ScheduleList:
    """The schedules, newest first."""
    return ScheduleList(schedules=await engine.schedules.list(limit=limit))


@router.get("/{schedule_id}", responses=UNKNOWN)
async def get_schedule(schedule_id: str, engine: EngineDep) -> Schedule:
    return await engine.schedules.get(schedule_id)


@router.patch("/{schedule_id}", responses={**UNKNOWN, **INVALID})
async def update_schedule(schedule_id: str, body: SchedulePatch, engine: EngineDep) -> Schedule:
    """Change a schedule: the fields given replace its own (``run_config`` field by field).
    ``{"enabled": false}`` pauses it, ``{"enabled": true}`` resumes it from now."""
    if body.run_config is not None:
        check_client_session(
            engine.settings, workspace=body.run_config.workspace, prefix="run_config."
        )
    return await engine.schedules.update(schedule_id, body)


@router.delete("/{schedule_id}", status_code=204, responses=UNKNOWN)
async def delete_schedule(schedule_id: str, engine: EngineDep) -> Response:
    """Delete a schedule and the record of its fires; its runs stay."""
    await engine.schedules.delete(schedule_id)
    return Response(status_code=204)


@router.post("/{schedule_id}/trigger", status_code=202, responses=UNKNOWN)
async def trigger_schedule(schedule_id: str, engine: EngineDep) -> ScheduleRun:
    """Fire now (also while paused). The overlap policy applies: the fire may be ``running``
    (with its ``run_id``), ``queued`` behind a running fire, or ``skipped``."""
    return await engine.schedules.trigger(schedule_id)


@router.get("/{schedule_id}/runs", responses=UNKNOWN)
async def list_schedule_runs(
    schedule_id: str, engine: EngineDep, limit: Limit = 100
) -> ScheduleRunList:
    """The schedule's fires, latest ``scheduled_for`` first: what each became, its ``run_id``,
    and how late its run started (``dispatch_lag_ms``)."""
    return ScheduleRunList(runs=await engine.schedules.runs(schedule_id, limit=limit))


@router.get("/{schedule_id}/upcoming", responses=UNKNOWN)
async def upcoming_fires(
    schedule_id: str, engine: EngineDep, count: Annotated[int, Query(ge=1, le=50)] = 5
) -> ScheduleUpcoming:
    """The trigger in plain words and the next ``count`` fire times from ``next_fire_at``
    (none while the schedule is paused, or once a ``once`` trigger has fired)."""
    schedule = await engine.schedules.get(schedule_id)
    zone = ZoneInfo(schedule.timezone)
    fires: list[datetime] = []
    fire = schedule.next_fire_at
    while fire is not None and len(fires) < count:
        fires.append(fire)
        fire = next_after(schedule.trigger, zone, schedule.anchor_at, fire)
    return ScheduleUpcoming(
        schedule_id=schedule_id,
        description=describe(schedule.trigger, schedule.timezone),
        timezone=schedule.timezone,
        fires=fires,
    )
