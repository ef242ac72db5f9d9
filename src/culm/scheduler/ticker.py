"""The ticker: every ``interval`` seconds (and at once when woken) it looks at the schedules.

A look (:meth:`Ticker.tick`) records the ends of runs nobody waited on, claims the fires that
came due, and starts the waiting fires that the overlap policies let start. Every process with
a ticker may look at the same database: a due time is claimed by one of them only (see
:mod:`culm.scheduler.store`). The first look happens as soon as the engine has started, so fires
missed while the server was down are settled by their misfire policy right away.

Time comes from ``clock`` (UTC now), which tests replace; the interval is real time.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import datetime, timedelta

from culm.logs import get_logger
from culm.scheduler.dispatch import Clock, Dispatcher
from culm.scheduler.models import FireStatus, Schedule, ScheduleRun
from culm.scheduler.policy import Fire, decide
from culm.scheduler.runs import EngineRuns
from culm.scheduler.store import ScheduleStore
from culm.scheduler.triggers import due_fires
from culm.scheduler.zones import load_zone

log = get_logger(__name__)

# Missed fires recorded per look beyond those a catch-up runs; older ones are only counted.
MISSED_RECORDS = 50


class Ticker:
    def __init__(
        self,
        store: ScheduleStore,
        engine: EngineRuns,
        clock: Clock,
        *,
        interval: float,
        grace: float,
        enabled: bool = True,
    ) -> None:
        self._store = store
        self._clock = clock
        self._interval = interval
        self._grace = timedelta(seconds=grace)
        self._enabled = enabled
        self._lock = asyncio.Lock()
        self._wakeup = asyncio.Event()
        self._loop: asyncio.Task[None] | None = None
        self._closed = False
        self.dispatcher = Dispatcher(store, engine, clock, on_end=self.wake)

    async def start(self, stack: contextlib.AsyncExitStack) -> None:
        """Keep looking, from right after the engine's start, in a task owned by ``stack``
        (unless disabled: then only run-now fires start, and their ends are still followed)."""
        group = await stack.enter_async_context(asyncio.TaskGroup())
        stack.push_async_callback(self.aclose)
        self.dispatcher.open(group)
        if self._enabled:
            self._loop = group.create_task(self._run(), name="culm-schedule-ticker")

    async def aclose(self) -> None:
        """Stop looking and stop following runs. Idempotent. A look in progress is let finish:
        cancelling it inside a write transaction could leave the database locked."""
        self._closed = True
        self.dispatcher.close()
        self._wakeup.set()
        if self._loop is not None:
            await self._loop

    def wake(self) -> None:
        """Look again now (a run ended, a schedule changed)."""
        self._wakeup.set()

    async def _run(self) -> None:
        while not self._closed:
            self._wakeup.clear()
            try:
                await self.tick()
            except Exception:
                log.exception("looking at the schedules failed; trying again")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._interval):
                    await self._wakeup.wait()

    async def tick(self) -> None:
        """One look at every schedule."""
        async with self._lock:
            if self._closed:
                return
            now = self._clock()
            if not await self._store.has_work(now):
                return  # nothing running, waiting or due: the common look costs one read
            await self.dispatcher.reconcile(now)
            for schedule in await self._store.due(now):
                try:
                    await self._claim(schedule, now)
                except Exception:
                    log.exception("claiming a fire failed", schedule_id=schedule.schedule_id)
            await self.dispatcher.start_waiting(now)

    async def fire_now(self, schedule: Schedule) -> ScheduleRun:
        """Record a fire of ``schedule`` for now (its overlap policy applies) and start it if it
        may start. Returns the fire as it then is."""
        async with self._lock:
            now = self._clock()
            fire = await self._store.add_manual_fire(
                schedule.schedule_id, now, schedule.overlap_policy
            )
            if fire.status is FireStatus.QUEUED and not self._closed:
                await self.dispatcher.start_waiting(now, schedule.schedule_id)
            current = await self._store.get_fire(schedule.schedule_id, fire.scheduled_for)
            return current or fire

    async def _claim(self, schedule: Schedule, now: datetime) -> None:
        assert schedule.next_fire_at is not None  # due() returns only schedules with one
        due = due_fires(
            schedule.trigger,
            load_zone(schedule.timezone),
            schedule.anchor_at,
            start=schedule.next_fire_at,
            now=now,
            keep=schedule.catch_up_limit + MISSED_RECORDS,
        )

        def decide_with(busy: int) -> list[Fire]:
            return decide(
                due.times,
                now=now,
                grace=self._grace,
                misfire=schedule.misfire_policy,
                overlap=schedule.overlap_policy,
                catch_up_limit=schedule.catch_up_limit,
                busy=busy,
            )

        fires = await self._store.claim(
            schedule, next_fire_at=due.next_fire_at, now=now, decide=decide_with
        )
        if fires is None:
            return  # another look (here or in another process) claimed these times
        missed = sum(fire.status is FireStatus.MISSED for fire in fires)
        if missed or due.unlisted:
            log.warning(
                "schedule misfired",
                schedule_id=schedule.schedule_id,
                missed=missed + due.unlisted,
                unrecorded=due.unlisted,
                policy=schedule.misfire_policy.value,
            )
