"""When a trigger fires: the next time after a moment, and the times that came due in a span.

Every time here is an aware UTC datetime; ``zone`` is the schedule's, used for cron fields and
for the wall-clock ``at`` of a ``once`` trigger (see :mod:`culm.scheduler.cron` for DST).
Interval fires ignore the zone: they are ``anchor + k × every_seconds`` (k ≥ 1) in real time.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from culm.domain.time import as_utc
from culm.scheduler import cron
from culm.scheduler.models import CronTrigger, IntervalTrigger, OnceTrigger

AnyTrigger = CronTrigger | IntervalTrigger | OnceTrigger

# How many fire times one look at a late schedule enumerates before it jumps ahead (a server that
# was down a year with an every-minute cron would otherwise walk half a million of them).
MAX_SCAN = 10_000


def next_after(
    trigger: AnyTrigger, zone: ZoneInfo, anchor: datetime, after: datetime
) -> datetime | None:
    """The first fire strictly after ``after``; None if the trigger never fires again."""
    match trigger:
        case CronTrigger():
            return cron.next_after(trigger.expr, after, zone)
        case IntervalTrigger():
            period = trigger.period
            steps = max(1, (after - anchor) // period + 1)
            return anchor + steps * period
        case OnceTrigger():
            at = once_at(trigger, zone)
            return at if at > after else None


def first_fire(
    trigger: AnyTrigger, zone: ZoneInfo, anchor: datetime, now: datetime, *, is_new: bool
) -> datetime | None:
    """``next_fire_at`` of a trigger at ``now``: its next fire after ``now``. A ``once`` whose
    time has passed fires never again, except a new one (just created or replaced) asked to
    ``run_now_if_past``: that fires ``now``, on time (a resumed one never fires twice).
    OverflowError if a ``once`` time has no UTC date (year 1 east of UTC, 9999 west of it)."""
    if isinstance(trigger, OnceTrigger):
        at = once_at(trigger, zone)
        if at > now:
            return at
        return now if is_new and trigger.run_now_if_past else None
    return next_after(trigger, zone, anchor, now)


def once_at(trigger: OnceTrigger, zone: ZoneInfo) -> datetime:
    """The ``at`` of a once trigger in UTC; a time without offset is wall-clock time in ``zone``
    (one in a spring-forward gap moves to the first real minute after it, as cron's do)."""
    if trigger.at.tzinfo is not None:
        return as_utc(trigger.at)
    return as_utc(real_wall_time(trigger.at, zone))


def real_wall_time(naive: datetime, zone: ZoneInfo) -> datetime:
    """``naive`` in ``zone`` (the first one of a repeated time); a time that does not exist
    there moves forward minute by minute to the first that does."""
    local = naive.replace(tzinfo=zone, fold=0)
    for _ in range(24 * 60):
        if local.astimezone(UTC).astimezone(zone).replace(tzinfo=None) == local.replace(
            tzinfo=None
        ):
            return local
        local += timedelta(minutes=1)
    return local  # pragma: no cover - no zone skips a whole day of minutes


@dataclass(frozen=True, slots=True)
class Due:
    """The fires due at a look: ``times`` are the latest of them (oldest first), ``unlisted``
    how many older ones were left out (a lower bound once the scan jumped ahead), and
    ``next_fire_at`` the first fire after the look."""

    times: list[datetime]
    unlisted: int
    next_fire_at: datetime | None


def due_fires(
    trigger: AnyTrigger,
    zone: ZoneInfo,
    anchor: datetime,
    *,
    start: datetime,
    now: datetime,
    keep: int,
) -> Due:
    """The fires from ``start`` (a fire time, included) up to ``now`` (included), keeping the
    latest ``keep`` of them."""
    recent: deque[datetime] = deque(maxlen=keep)
    seen = 0
    fire: datetime | None = start
    scanned = 0
    while fire is not None and fire <= now:
        recent.append(fire)
        seen += 1
        scanned += 1
        if scanned >= MAX_SCAN:
            fire, scanned = _jump(trigger, zone, anchor, fire, start, now, keep), 0
            continue
        fire = next_after(trigger, zone, anchor, fire)
    return Due(times=list(recent), unlisted=seen - len(recent), next_fire_at=fire)


def _jump(
    trigger: AnyTrigger,
    zone: ZoneInfo,
    anchor: datetime,
    fire: datetime,
    start: datetime,
    now: datetime,
    keep: int,
) -> datetime | None:
    """After MAX_SCAN fires in (start, fire]: go on from a point before ``now`` that leaves about
    ``2 × keep`` fires to walk, at the density seen so far (never backwards)."""
    window = (fire - start) * (2 * keep) / MAX_SCAN
    restart = max(fire, now - window)
    return next_after(trigger, zone, anchor, restart)
