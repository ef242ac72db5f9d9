"""Triggers in plain words: ``0 9 * * 1-5`` reads "at 09:00 on Monday through Friday".

The common cron shapes are worded here; anything rarer (steps inside ranges, ``L``, ``W``,
``#``) falls back to cronsim's own explanation, so every valid expression gets a reading.
"""

from __future__ import annotations

from collections.abc import Sequence

from culm.scheduler.models import CronTrigger, IntervalTrigger, OnceTrigger

WEEKDAYS = ("Sunday", "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday")
MONTHS = (
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
)
_DAY_NAMES = ("SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT")
_MONTH_NAMES = tuple(name[:3].upper() for name in MONTHS)
MAX_TIMES = 6  # more listed times than this read better as cronsim's wording


class _Unworded(Exception):
    """A field shape this module does not word: use the fallback."""


def describe(trigger: CronTrigger | IntervalTrigger | OnceTrigger, timezone: str = "UTC") -> str:
    """A trigger in plain words (a ``once`` time is shown as given, with the zone it is in)."""
    match trigger:
        case CronTrigger():
            return describe_cron(trigger.expr)
        case IntervalTrigger():
            return f"every {duration(trigger.every_seconds)}"
        case OnceTrigger():
            zone = "" if trigger.at.tzinfo is not None else f" ({timezone})"
            return f"once at {trigger.at.isoformat(sep=' ')}{zone}"


def describe_cron(expr: str) -> str:
    """A five-field cron expression in plain words."""
    minute, hour, dom, month, dow = expr.upper().split()
    try:
        when = _time(minute, hour)
        daily = when.startswith("at ")
        parts = [when, _days(dom, dow, daily=daily), _months(month)]
    except _Unworded:
        return _fallback(expr)
    return " ".join(part for part in parts if part)


def duration(seconds: int) -> str:
    """``60`` → "minute", ``90`` → "90 seconds", ``7200`` → "2 hours"."""
    for size, unit in ((86400, "day"), (3600, "hour"), (60, "minute")):
        if seconds % size == 0:
            count = seconds // size
            return unit if count == 1 else f"{count} {unit}s"
    return "second" if seconds == 1 else f"{seconds} seconds"


def join(words: Sequence[str]) -> str:
    """``["a", "b", "c"]`` → "a, b and c"."""
    if len(words) == 1:
        return words[0]
    return f"{', '.join(words[:-1])} and {words[-1]}"


# The time of day


def _time(minute: str, hour: str) -> str:
    if hour == "*":
        return _every_hour(minute)
    if hour.startswith("*/"):
        step, at = _step(hour, 24), _number(minute, 59)
        return f"every hour at minute {at}" if step == 1 else f"every {step} hours at minute {at}"
    if minute.isdigit() and "-" in hour and "," not in hour:
        first, last = (_number(part, 23) for part in hour.split("-"))
        m = _number(minute, 59)
        return f"every hour from {_clock(first, m)} through {_clock(last, m)}"
    times = [_clock(h, m) for h in _numbers(hour, 23) for m in _numbers(minute, 59)]
    if len(times) > MAX_TIMES:
        raise _Unworded
    return f"at {join(times)}"


def _every_hour(minute: str) -> str:
    if minute == "*":
        return "every minute"
    if minute.startswith("*/"):
        step = _step(minute, 60)
        return "every minute" if step == 1 else f"every {step} minutes"
    minutes = [str(m) for m in _numbers(minute, 59)]
    label = "minute" if len(minutes) == 1 else "minutes"
    return f"every hour at {label} {join(minutes)}"


def _step(field: str, period: int) -> int:
    """The N of ``*/N``, if the fires it makes are evenly N apart (N divides ``period``): ``*/45``
    minutes fire at :00 and :45, which is not "every 45 minutes"."""
    step = field[2:]
    if not step.isdigit() or int(step) == 0 or period % int(step):
        raise _Unworded
    return int(step)


def _clock(hour: int, minute: int) -> str:
    return f"{hour:02d}:{minute:02d}"


# Days and months


def _days(dom: str, dow: str, *, daily: bool) -> str:
    if dom == "*" and dow == "*":
        return "every day" if daily else ""
    if dom == "*":
        return f"on {_weekdays(dow)}"
    if dow == "*":
        return f"on {_month_days(dom)}"
    if dom.startswith("*") or dow.startswith("*"):
        raise _Unworded  # cron's AND-of-days case: rare, and cronsim words it
    return f"on {_month_days(dom)} or on {_weekdays(dow)}"


def _weekdays(field: str) -> str:
    words = []
    for term in field.split(","):
        if "-" in term:
            first, last = (WEEKDAYS[_day(part)] for part in term.split("-"))
            words.append(f"{first} through {last}")
        else:
            words.append(WEEKDAYS[_day(term)])
    return join(words)


def _day(term: str) -> int:
    if term in _DAY_NAMES:
        return _DAY_NAMES.index(term)
    return _number(term, 7) % 7


def _month_days(field: str) -> str:
    if field == "L":
        return "the last day of the month"
    words = []
    for term in field.split(","):
        if "-" in term:
            first, last = (_number(part, 31) for part in term.split("-"))
            words.append(f"{first} through {last}")
        else:
            words.append(str(_number(term, 31)))
    label = "day" if len(words) == 1 and "-" not in field else "days"
    return f"{label} {join(words)} of the month"


def _months(field: str) -> str:
    if field == "*":
        return ""
    words = []
    for term in field.split(","):
        if "-" in term:
            first, last = (MONTHS[_month(part) - 1] for part in term.split("-"))
            words.append(f"{first} through {last}")
        else:
            words.append(MONTHS[_month(term) - 1])
    return f"in {join(words)}"


def _month(term: str) -> int:
    if term in _MONTH_NAMES:
        return _MONTH_NAMES.index(term) + 1
    return _number(term, 12)


# Numbers


def _number(term: str, highest: int) -> int:
    if not term.isdigit() or int(term) > highest:
        raise _Unworded
    return int(term)


def _numbers(field: str, highest: int) -> list[int]:
    """A list of single numbers and plain ranges, expanded and sorted."""
    values: set[int] = set()
    for term in field.split(","):
        if "-" in term:
            first, last = (_number(part, highest) for part in term.split("-"))
            values.update(range(first, last + 1))
        else:
            values.add(_number(term, highest))
    return sorted(values)


def _fallback(expr: str) -> str:
    from datetime import UTC, datetime

    from cronsim import CronSim

    text = CronSim(expr, datetime(2000, 1, 1, tzinfo=UTC)).explain()
    return text[:1].lower() + text[1:]
