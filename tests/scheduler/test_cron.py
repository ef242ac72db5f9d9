"""Cron fire times in a zone, across DST, exactly as cronsim (Debian cron) has them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from cronsim import CronSim
from hypothesis import given, settings
from hypothesis import strategies as st

from culm.scheduler import cron

NEW_YORK = ZoneInfo("America/New_York")
LONDON = ZoneInfo("Europe/London")


def fires(expr: str, zone: ZoneInfo, start: datetime, count: int) -> list[datetime]:
    out, after = [], start
    for _ in range(count):
        fire = cron.next_after(expr, after, zone)
        assert fire is not None
        out.append(fire)
        after = fire
    return out


def local(moments: list[datetime], zone: ZoneInfo) -> list[str]:
    return [moment.astimezone(zone).strftime("%m-%d %H:%M %Z") for moment in moments]


def test_a_daily_time_that_the_fall_back_repeats_fires_once_at_its_first_occurrence() -> None:
    start = datetime(2026, 10, 31, 12, tzinfo=NEW_YORK)  # clocks go back on 2026-11-01 02:00
    assert local(fires("30 1 * * *", NEW_YORK, start, 3), NEW_YORK) == [
        "11-01 01:30 EDT",
        "11-02 01:30 EST",
        "11-03 01:30 EST",
    ]


def test_a_daily_time_that_the_spring_forward_skips_fires_at_the_end_of_the_gap() -> None:
    start = datetime(2026, 3, 7, 12, tzinfo=NEW_YORK)  # 02:00 → 03:00 on 2026-03-08
    assert local(fires("30 2 * * *", NEW_YORK, start, 3), NEW_YORK) == [
        "03-08 03:00 EDT",
        "03-09 02:30 EDT",
        "03-10 02:30 EDT",
    ]


def test_a_01_30_job_where_the_gap_covers_01_30_fires_when_the_gap_ends() -> None:
    start = datetime(2026, 3, 28, 12, tzinfo=LONDON)  # 01:00 → 02:00 on 2026-03-29
    assert local(fires("30 1 * * *", LONDON, start, 2), LONDON) == [
        "03-29 02:00 BST",
        "03-30 01:30 BST",
    ]


def test_hourly_expressions_follow_real_time_through_both_transitions() -> None:
    fall = datetime(2026, 11, 1, 0, 10, tzinfo=NEW_YORK)
    assert local(fires("30 * * * *", NEW_YORK, fall, 4), NEW_YORK) == [
        "11-01 00:30 EDT",
        "11-01 01:30 EDT",
        "11-01 01:30 EST",  # the repeated hour fires again: an hour really passed
        "11-01 02:30 EST",
    ]
    spring = datetime(2026, 3, 8, 0, 10, tzinfo=NEW_YORK)
    assert local(fires("30 * * * *", NEW_YORK, spring, 3), NEW_YORK) == [
        "03-08 00:30 EST",
        "03-08 01:30 EST",
        "03-08 03:30 EDT",
    ]


def test_starting_inside_the_repeated_hour_does_not_fire_the_first_occurrence_again() -> None:
    # 01:10 EST is after 01:30 EDT: cronsim would answer 01:30 EDT (in the past).
    inside = datetime(2026, 11, 1, 6, 10, tzinfo=UTC)
    assert inside.astimezone(NEW_YORK).strftime("%H:%M %Z") == "01:10 EST"
    assert local([cron.next_after("30 1 * * *", inside, NEW_YORK)], NEW_YORK) == [  # type: ignore[list-item]
        "11-02 01:30 EST"
    ]


def test_times_are_utc_and_strictly_after_the_start() -> None:
    start = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
    fire = cron.next_after("0 9 * * *", start, ZoneInfo("UTC"))
    assert fire == datetime(2026, 1, 6, 9, 0, tzinfo=UTC)
    assert fire is not None and fire.tzinfo is UTC


@pytest.mark.parametrize(
    ("expr", "message"),
    [
        ("* * * *", "expected 5 fields"),
        ("0 0 * * * *", "expected 5 fields"),
        ("61 * * * *", "Bad minute"),
        ("0 24 * * *", "Bad hour"),
        ("0 0 31 2 *", "Bad day-of-month"),
        ("0 0 * 13 *", "Bad month"),
        ("0 0 * * 8", "Bad day-of-week"),
        ("@daily", "expected 5 fields"),
        ("", "expected 5 fields"),
    ],
)
def test_check_rejects_invalid_expressions(expr: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        cron.check(expr)


def test_check_normalizes_spaces() -> None:
    assert cron.check("  0  9 * *   1-5 ") == "0 9 * * 1-5"


ZONES = ["UTC", "America/New_York", "Europe/London", "Australia/Lord_Howe", "Asia/Kolkata"]
EXPRS = ["30 1 * * *", "30 2 * * *", "0 9 * * 1-5", "*/15 * * * *", "30 * * * *", "0 0 L * *"]


@settings(max_examples=150, deadline=None)
@given(
    zone=st.sampled_from(ZONES),
    expr=st.sampled_from(EXPRS),
    start=st.datetimes(  # hypothesis takes naive bounds and adds the zone
        min_value=datetime(2025, 1, 1),  # noqa: DTZ001
        max_value=datetime(2028, 1, 1),  # noqa: DTZ001
        timezones=st.just(UTC),
    ),
)
def test_fires_increase_and_are_cronsims_own(zone: str, expr: str, start: datetime) -> None:
    tz = ZoneInfo(zone)
    times = fires(expr, tz, start, 6)
    assert times == sorted(set(times))
    assert times[0] > start
    # Each answer is what cronsim gives from the previous one (only past answers are dropped).
    for before, fire in zip([start, *times], times, strict=False):
        expected = next(
            t.astimezone(UTC) for t in CronSim(expr, before.astimezone(tz)) if t > before
        )
        assert fire == expected
        assert fire - before <= timedelta(days=32)
