"""``engine.schedules``: culm's Python API for schedules (the HTTP routes call it too).

    schedule = await engine.schedules.create(
        name="weekday digest",
        timezone="Europe/Paris",
        trigger={"type": "cron", "expr": "0 9 * * 1-5"},
        run_config={"message": "Summarize the inbox", "tools": ["read"]},
    )
    await engine.schedules.trigger(schedule.schedule_id)      # run now
    fires = await engine.schedules.runs(schedule.schedule_id)  # what each fire became

Mistakes raise :class:`~culm.errors.InvalidFieldError` naming the field (``trigger.expr``,
``timezone``, ``run_config.model`` …); unknown ids raise :class:`~culm.errors.NotFoundError`.
"""

from __future__ import annotations

import builtins
from collections.abc import Mapping
from datetime import datetime
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from culm.domain.fields import invalid_field
from culm.domain.time import new_id
from culm.errors import InvalidFieldError, NotFoundError
from culm.scheduler import runs
from culm.scheduler.dispatch import Clock
from culm.scheduler.models import (
    OnceTrigger,
    RunConfig,
    Schedule,
    SchedulePatch,
    ScheduleRun,
    ScheduleSpec,
    Trigger,
)
from culm.scheduler.runs import EngineRuns
from culm.scheduler.store import ScheduleStore, schedule_row
from culm.scheduler.ticker import Ticker
from culm.scheduler.triggers import first_fire
from culm.scheduler.zones import load_zone

M = TypeVar("M", bound=BaseModel)
_TIMING = frozenset({"trigger", "timezone", "enabled"})


class Schedules:
    def __init__(
        self, store: ScheduleStore, ticker: Ticker, engine: EngineRuns, clock: Clock
    ) -> None:
        self._store = store
        self._ticker = ticker
        self._engine = engine
        self._clock = clock

    async def create(
        self, spec: ScheduleSpec | Mapping[str, Any] | None = None, /, **fields: Any
    ) -> Schedule:
        """Create a schedule from a :class:`ScheduleSpec`, its JSON shape, or keywords."""
        checked = _parse(ScheduleSpec, spec, fields)
        await runs.check(self._engine, checked.run_config)
        now = self._clock()
        schedule = Schedule(
            **dict(checked),
            schedule_id=new_id(),
            created_at=now,
            updated_at=now,
            anchor_at=now,
        )
        next_fire_at = _next_fire(schedule, now, is_new=True)
        schedule = schedule.model_copy(update={"next_fire_at": next_fire_at})
        await self._store.create(schedule)
        self._ticker.wake()
        return schedule

    async def get(self, schedule_id: str) -> Schedule:
        schedule = await self._store.get(schedule_id)
        if schedule is None:
            raise NotFoundError("schedule", schedule_id)
        return schedule

    async def list(self, *, limit: int = 100) -> list[Schedule]:
        """Newest first."""
        return await self._store.list_schedules(limit=limit)

    async def update(
        self,
        schedule_id: str,
        patch: SchedulePatch | Mapping[str, Any] | None = None,
        /,
        **fields: Any,
    ) -> Schedule:
        """Change a schedule: the fields given replace its own (a run config field by field).
        A new trigger, zone or enabled flag sets ``next_fire_at`` anew from now: fires that
        came due while a schedule was paused are not run."""
        change = _parse(SchedulePatch, patch, fields)
        current = await self.get(schedule_id)
        changes = _changes(current, change)
        if "run_config" in changes:
            await runs.check(self._engine, changes["run_config"])
        now = self._clock()
        updated = current.model_copy(update={**changes, "updated_at": now})
        if "trigger" in changes:
            updated = updated.model_copy(update={"anchor_at": now})
        columns = {"updated_at", "anchor_at", *changes}
        if columns & _TIMING:
            next_fire_at = _next_fire(updated, now, is_new="trigger" in changes)
            updated = updated.model_copy(update={"next_fire_at": next_fire_at})
            columns.add("next_fire_at")
        row = schedule_row(updated)
        saved = await self._store.update(schedule_id, {key: row[key] for key in columns})
        if saved is None:
            raise NotFoundError("schedule", schedule_id)
        self._ticker.wake()
        return saved

    async def pause(self, schedule_id: str) -> Schedule:
        """Stop firing (``next_fire_at`` becomes null); run-now still works."""
        return await self.update(schedule_id, enabled=False)

    async def resume(self, schedule_id: str) -> Schedule:
        """Fire again, from the next time after now."""
        return await self.update(schedule_id, enabled=True)

    async def delete(self, schedule_id: str) -> None:
        """Delete a schedule and its fire records; its runs (and their sessions) stay."""
        if not await self._store.delete(schedule_id):
            raise NotFoundError("schedule", schedule_id)

    async def trigger(self, schedule_id: str) -> ScheduleRun:
        """Fire now, as its overlap policy allows; returns the fire (with its ``run_id`` once
        started)."""
        return await self._ticker.fire_now(await self.get(schedule_id))

    async def runs(self, schedule_id: str, *, limit: int = 100) -> builtins.list[ScheduleRun]:
        """The schedule's fires, latest scheduled first."""
        await self.get(schedule_id)
        return await self._store.fires(schedule_id, limit=limit)

    async def tick(self) -> None:
        """Look at the schedules now (the ticker does this every ``schedule_tick`` seconds)."""
        await self._ticker.tick()


def _parse(model: type[M], given: M | Mapping[str, Any] | None, fields: Mapping[str, Any]) -> M:
    if isinstance(given, model) and not fields:
        return given
    if isinstance(given, BaseModel):
        data = {**given.model_dump(exclude_unset=True), **fields}
    else:
        data = {**(given or {}), **fields}
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise invalid_field(exc, data) from None


def _changes(current: Schedule, patch: SchedulePatch) -> dict[str, Any]:
    """The schedule's fields that ``patch`` sets, as values (null is not a value of any)."""
    changes: dict[str, Any] = {}
    for name in patch.model_fields_set:
        value = getattr(patch, name)
        if value is None:
            raise InvalidFieldError(name, "may not be null")
        changes[name] = value
    if "run_config" in changes:
        changes["run_config"] = _merged_config(current.run_config, patch)
    return changes


def _merged_config(config: RunConfig, patch: SchedulePatch) -> RunConfig:
    assert patch.run_config is not None
    given = patch.run_config.model_dump(exclude_unset=True)
    if "message" in given and given["message"] is None:
        raise InvalidFieldError("run_config.message", "may not be null")
    if "tools" in given and given["tools"] is None:
        given["tools"] = ()
    return config.model_copy(update=given)


def _next_fire(schedule: Schedule, now: datetime, *, is_new: bool) -> datetime | None:
    """When ``schedule`` fires next from ``now``; ``is_new``: its trigger was just set (a
    ``once`` in the past is then refused unless it asks to run now)."""
    trigger = schedule.trigger
    zone = load_zone(schedule.timezone)
    try:
        first = first_fire(trigger, zone, schedule.anchor_at, now, is_new=is_new)
    except OverflowError:
        raise InvalidFieldError(
            "trigger.at", f"{_at(trigger)} in {schedule.timezone} is out of the range of dates"
        ) from None
    if is_new and first is None and isinstance(trigger, OnceTrigger):
        raise InvalidFieldError(
            "trigger.at",
            f"{_at(trigger)} in {schedule.timezone} has passed (it is now "
            f"{now.isoformat(timespec='seconds')}); set trigger.run_now_if_past to true to "
            "fire it now",
        )
    return first if schedule.enabled else None


def _at(trigger: Trigger) -> str:
    """What a trigger's time was given as (a ``once``'s ``at``), for a message."""
    return trigger.at.isoformat() if isinstance(trigger, OnceTrigger) else str(trigger)
