"""Five-field cron expressions, evaluated by ``cronsim`` in a schedule's time zone.

Times are matched on the local wall clock of the zone, as Debian's cron does (cronsim's rules):

- a time that a spring-forward skips (02:30 when clocks jump from 02:00 to 03:00) fires at the
  first real minute after the gap (03:00), once;
- a time that a fall-back repeats (01:30 when clocks go from 02:00 back to 01:00) fires once, at
  its first occurrence;
- expressions whose minute or hour field starts with ``*`` (``*/15 * * * *``, ``30 * * * *``)
  follow real elapsed time instead: they fire in both repeated hours and none in the skipped one.
"""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from cronsim import CronSim, CronSimError

FIELDS = ("minute", "hour", "day-of-month", "month", "day-of-week")
_PROBE = datetime(2000, 1, 1, tzinfo=UTC)


def check(expr: str) -> str:
    """``expr`` with single spaces between its fields; ValueError saying what is wrong."""
    parts = expr.split()
    if len(parts) != len(FIELDS):
        raise ValueError(f"expected 5 fields ({' '.join(FIELDS)}), got {len(parts)} in {expr!r}")
    normal = " ".join(parts)
    try:
        next(CronSim(normal, _PROBE))
    except CronSimError as exc:
        raise ValueError(f"invalid cron expression {expr!r}: {exc}") from None
    except StopIteration:
        raise ValueError(f"cron expression {expr!r} never fires") from None
    return normal


def next_after(expr: str, after: datetime, zone: ZoneInfo) -> datetime | None:
    """The first time strictly after ``after`` that ``expr`` fires in ``zone``, in UTC; None if
    it never fires again.

    cronsim can hand back the first occurrence of a repeated wall-clock time when started inside
    the repeat (at 01:10 the second time round, it answers 01:30 the first time round): such
    answers are in the past and passed over.
    """
    try:
        for candidate in CronSim(expr, after.astimezone(zone)):
            fire = candidate.astimezone(UTC)
            if fire > after:
                return fire
    except CronSimError:  # pragma: no cover - expressions are checked before they are stored
        return None
    return None
