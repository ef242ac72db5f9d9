"""What to do with the fires that came due: the misfire and overlap policies, as pure functions.

A look at a schedule finds the fire times due since it last looked. The usual case is one time,
on time (no later than the misfire grace): it fires. Anything else is a misfire, settled by the
schedule's misfire policy; the times it does not run are ``missed``. Each time that is to run
then meets the overlap policy, against the schedule's fires that are running or waiting:
it is ``queued`` (to start as soon as the policy lets it) or ``skipped``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from culm.scheduler.models import FireStatus, MisfirePolicy, OverlapPolicy


@dataclass(frozen=True, slots=True)
class Fire:
    """A decided fire: ``status`` is ``queued``, ``skipped`` or ``missed``."""

    scheduled_for: datetime
    status: FireStatus


def to_run(
    due: Sequence[datetime],
    *,
    now: datetime,
    grace: timedelta,
    misfire: MisfirePolicy,
    catch_up_limit: int,
) -> list[datetime]:
    """The due times (oldest first) that the misfire policy runs."""
    if not due:
        return []
    latest = due[-1]
    on_time = now - latest <= grace
    if len(due) == 1 and on_time:
        return [latest]
    match misfire:
        case MisfirePolicy.SKIP:
            return [latest] if on_time else []
        case MisfirePolicy.RUN_ONCE:
            return [latest]
        case MisfirePolicy.CATCH_UP:
            return list(due[-catch_up_limit:])


def overlap_allows(overlap: OverlapPolicy, busy: int) -> bool:
    """Whether a fire may queue while ``busy`` fires of its schedule run or wait."""
    match overlap:
        case OverlapPolicy.ALLOW:
            return True
        case OverlapPolicy.SKIP:
            return busy == 0
        case OverlapPolicy.QUEUE_ONE:
            return busy <= 1


def may_start(overlap: OverlapPolicy, running: int) -> int:
    """How many waiting fires may start while ``running`` fires of the schedule run
    (``allow``: all of them)."""
    if overlap is OverlapPolicy.ALLOW:
        return 1 << 30
    return 1 if running == 0 else 0


def decide(
    due: Sequence[datetime],
    *,
    now: datetime,
    grace: timedelta,
    misfire: MisfirePolicy,
    overlap: OverlapPolicy,
    catch_up_limit: int,
    busy: int,
) -> list[Fire]:
    """Every due time with what becomes of it, oldest first."""
    chosen = set(to_run(due, now=now, grace=grace, misfire=misfire, catch_up_limit=catch_up_limit))
    fires = []
    for time in due:
        if time not in chosen:
            fires.append(Fire(time, FireStatus.MISSED))
        elif overlap_allows(overlap, busy):
            fires.append(Fire(time, FireStatus.QUEUED))
            busy += 1
        else:
            fires.append(Fire(time, FireStatus.SKIPPED))
    return fires
