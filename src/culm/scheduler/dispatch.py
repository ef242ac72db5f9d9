"""Starting the runs of waiting fires, and recording how they end.

A fire that the overlap policy lets start is taken (``queued`` → ``running``, compare-and-set),
then its run is made through the engine. Its end is recorded by a task that waits on the run;
:meth:`Dispatcher.reconcile` records the ends nobody waited on (a run that ended in another
process, or while this one was down).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime, timedelta

from culm.errors import EngineClosedError, NotFoundError, UserError
from culm.logs import get_logger
from culm.scheduler.models import FireStatus, Schedule, ScheduleRun
from culm.scheduler.runs import EngineRuns, launch
from culm.scheduler.store import ScheduleStore

log = get_logger(__name__)

Clock = Callable[[], datetime]

# A fire taken for starting but still without a run after this long lost its starter.
STALE_DISPATCH = timedelta(minutes=10)


class Dispatcher:
    def __init__(
        self,
        store: ScheduleStore,
        engine: EngineRuns,
        clock: Clock,
        *,
        on_end: Callable[[], None],
    ) -> None:
        self._store = store
        self._engine = engine
        self._clock = clock
        self._on_end = on_end
        self._group: asyncio.TaskGroup | None = None
        # Tasks waiting for a run's end; one that is recording the end is not in here (it is
        # never cancelled inside a write transaction).
        self._waiting: set[asyncio.Task[None]] = set()

    def open(self, group: asyncio.TaskGroup) -> None:
        """Follow runs in tasks of ``group``."""
        self._group = group

    def close(self) -> None:
        """Stop waiting for runs to end (the next start's reconcile records their ends)."""
        for task in list(self._waiting):
            task.cancel()

    async def start_waiting(self, now: datetime, schedule_id: str | None = None) -> None:
        """Start what may start of the waiting fires (of one schedule, or of all)."""
        schedule_ids = (
            [schedule_id] if schedule_id is not None else await self._store.waiting_schedules()
        )
        for waiting_id in schedule_ids:
            schedule = await self._store.get(waiting_id)
            if schedule is None:
                continue
            for fire in await self._store.start_waiting(waiting_id, schedule.overlap_policy, now):
                await self._launch(schedule, fire)

    async def _launch(self, schedule: Schedule, fire: ScheduleRun) -> None:
        key = (fire.schedule_id, fire.scheduled_for)
        try:
            run = await launch(
                self._engine,
                schedule.run_config,
                schedule_id=schedule.schedule_id,
                scheduled_for=fire.scheduled_for,
            )
        except EngineClosedError:
            await self._store.put_back(*key)  # the next start runs it
            return
        except UserError as exc:
            await self._end(fire, FireStatus.FAILED, str(exc))
            return
        except Exception as exc:
            log.exception("starting a scheduled run failed", schedule_id=schedule.schedule_id)
            await self._end(fire, FireStatus.FAILED, f"internal error: {type(exc).__name__}: {exc}")
            return
        await self._store.attach_run(*key, run.run_id)
        self._follow(fire, run.run_id)

    async def _end(self, fire: ScheduleRun, status: FireStatus, error: str | None) -> None:
        await self._store.finish(
            fire.schedule_id, fire.scheduled_for, status, completed_at=self._clock(), error=error
        )
        self._on_end()

    def _follow(self, fire: ScheduleRun, run_id: str) -> None:
        if self._group is None:  # not started: reconcile records the end
            return
        task = self._group.create_task(self._await_end(fire, run_id), name=f"culm-fire-{run_id}")
        self._waiting.add(task)
        task.add_done_callback(self._waiting.discard)

    async def _await_end(self, fire: ScheduleRun, run_id: str) -> None:
        try:
            run = await self._engine.wait(run_id)
            self._stop_waiting()
            await self._store.finish(
                fire.schedule_id,
                fire.scheduled_for,
                FireStatus.of_run(run.status),
                completed_at=run.completed_at or self._clock(),
                error=run.error,
            )
        except NotFoundError:
            return  # its session was deleted: reconcile records it
        except Exception:
            log.exception("recording the end of a scheduled run failed", run_id=run_id)
            return
        self._on_end()

    def _stop_waiting(self) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._waiting.discard(task)

    async def reconcile(self, now: datetime) -> None:
        """Record the ends of running fires that nobody here is waiting on."""
        ended = await self._store.ended(stale_before=now - STALE_DISPATCH)
        for fire in ended:
            await self._store.finish(
                fire.schedule_id,
                fire.scheduled_for,
                fire.status,
                completed_at=fire.completed_at or now,
                error=fire.error,
            )
