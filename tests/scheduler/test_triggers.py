"""Interval and once triggers, and the span of fires that came due."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest

from culm.scheduler import triggers
from culm.scheduler.models import CronTrigger, IntervalTrigger, OnceTrigger

UTC_ZONE = ZoneInfo("UTC")
PARIS = ZoneInfo("Europe/Paris")
NEW_YORK = ZoneInfo("America/New_York")
T0 = datetime(2026, 11, 23, 8, 0, 0, 500_000, tzinfo=UTC)


def test_interval_fires_on_the_grid_from_its_anchor() -> None:
    every = IntervalTrigger(every_seconds=60)
    assert triggers.next_after(every, UTC_ZONE, T0, T0) == T0 + timedelta(seconds=60)
    assert triggers.next_after(every, UTC_ZONE, T0, T0 - timedelta(hours=1)) == T0 + timedelta(
        seconds=60
    )  # never at or before the anchor
    late = T0 + timedelta(seconds=150)
    assert triggers.next_after(every, UTC_ZONE, T0, late) == T0 + timedelta(seconds=180)
    on_grid = T0 + timedelta(seconds=180)
    assert triggers.next_after(every, UTC_ZONE, T0, on_grid) == T0 + timedelta(seconds=240)


def test_interval_ignores_dst() -> None:
    anchor = datetime(2026, 11, 1, 4, 0, tzinfo=UTC)  # 00:00 EDT, the fall-back day
    every = IntervalTrigger(every_seconds=3600)
    times = [anchor]
    for _ in range(3):
        nxt = triggers.next_after(every, NEW_YORK, anchor, times[-1])
        assert nxt is not None
        times.append(nxt)
    assert [b - a for a, b in zip(times, times[1:], strict=False)] == [timedelta(hours=1)] * 3


def test_once_fires_at_its_time_only() -> None:
    at = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
    once = OnceTrigger(at=at)
    assert triggers.next_after(once, UTC_ZONE, T0, T0) == at
    assert triggers.next_after(once, UTC_ZONE, T0, at) is None
    later = at + timedelta(days=1)
    assert triggers.first_fire(once, UTC_ZONE, T0, T0, is_new=True) == at
    assert triggers.first_fire(once, UTC_ZONE, T0, later, is_new=True) is None  # passed
    assert triggers.first_fire(once, UTC_ZONE, T0, at, is_new=False) is None  # fired: not again
    run_now = OnceTrigger(at=at, run_now_if_past=True)
    assert triggers.first_fire(run_now, UTC_ZONE, T0, later, is_new=True) == later  # now
    assert triggers.first_fire(run_now, UTC_ZONE, T0, later, is_new=False) is None


def test_once_without_offset_is_wall_clock_time_in_the_zone() -> None:
    once = OnceTrigger(at=datetime(2026, 12, 1, 9, 0))  # noqa: DTZ001 - that is the point
    assert triggers.once_at(once, PARIS) == datetime(2026, 12, 1, 8, 0, tzinfo=UTC)
    with_offset = OnceTrigger(at=datetime(2026, 12, 1, 9, 0, tzinfo=UTC))
    assert triggers.once_at(with_offset, PARIS) == datetime(2026, 12, 1, 9, 0, tzinfo=UTC)


def test_once_in_a_spring_forward_gap_moves_to_the_gap_end_and_repeated_takes_the_first() -> None:
    gap = OnceTrigger(at=datetime(2026, 3, 8, 2, 30))  # noqa: DTZ001
    assert triggers.once_at(gap, NEW_YORK) == datetime(2026, 3, 8, 7, 0, tzinfo=UTC)  # 03:00 EDT
    repeated = OnceTrigger(at=datetime(2026, 11, 1, 1, 30))  # noqa: DTZ001
    assert triggers.once_at(repeated, NEW_YORK) == datetime(2026, 11, 1, 5, 30, tzinfo=UTC)


def test_due_fires_lists_the_span_and_the_next_fire() -> None:
    every = IntervalTrigger(every_seconds=60)
    start = T0 + timedelta(seconds=60)
    due = triggers.due_fires(
        every, UTC_ZONE, T0, start=start, now=start + timedelta(seconds=150), keep=10
    )
    assert due.times == [start, start + timedelta(seconds=60), start + timedelta(seconds=120)]
    assert due.unlisted == 0
    assert due.next_fire_at == start + timedelta(seconds=180)


def test_due_fires_keeps_the_latest_and_counts_the_rest() -> None:
    every = IntervalTrigger(every_seconds=60)
    start = T0 + timedelta(seconds=60)
    due = triggers.due_fires(
        every, UTC_ZONE, T0, start=start, now=start + timedelta(minutes=99), keep=3
    )
    assert due.times == [start + timedelta(minutes=m) for m in (97, 98, 99)]
    assert due.unlisted == 97


def test_a_year_behind_every_minute_is_settled_quickly_and_ends_at_now() -> None:
    start = datetime(2025, 1, 1, tzinfo=UTC)
    now = datetime(2026, 1, 1, 0, 0, 30, tzinfo=UTC)
    due = triggers.due_fires(
        CronTrigger(expr="* * * * *"), UTC_ZONE, start, start=start, now=now, keep=5
    )
    assert due.times[-1] == datetime(2026, 1, 1, 0, 0, tzinfo=UTC)
    assert len(due.times) == 5
    assert due.times == sorted(due.times)
    assert due.unlisted >= triggers.MAX_SCAN - 5
    # not walked fire by fire: about MAX_SCAN of the 525,600 fires were enumerated
    assert due.unlisted < 2 * triggers.MAX_SCAN
    assert due.next_fire_at == datetime(2026, 1, 1, 0, 1, tzinfo=UTC)


def test_nothing_due_before_the_start() -> None:
    every = IntervalTrigger(every_seconds=60)
    start = T0 + timedelta(seconds=60)
    due = triggers.due_fires(every, UTC_ZONE, T0, start=start, now=T0, keep=3)
    assert due.times == []
    assert due.next_fire_at == start


# Edges found by mutation testing (docs/testing.md, "Mutation testing")


def test_cron_fires_in_the_schedules_zone() -> None:
    nine = CronTrigger(expr="0 9 * * *")
    after = datetime(2026, 12, 1, 0, 0, tzinfo=UTC)
    paris_nine = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)  # 09:00 CET
    assert triggers.next_after(nine, PARIS, T0, after) == paris_nine
    assert triggers.first_fire(nine, PARIS, T0, after, is_new=True) == paris_nine
    due = triggers.due_fires(nine, PARIS, T0, start=paris_nine, now=paris_nine, keep=3)
    assert due.next_fire_at == paris_nine + timedelta(days=1)


def test_an_interval_first_fires_on_its_grid_after_now() -> None:
    every = IntervalTrigger(every_seconds=60)
    now = T0 + timedelta(seconds=150)
    assert triggers.first_fire(every, UTC_ZONE, T0, now, is_new=True) == T0 + timedelta(seconds=180)
    assert triggers.first_fire(every, UTC_ZONE, T0, now, is_new=False) == T0 + timedelta(
        seconds=180
    )


def test_a_once_without_offset_is_wall_clock_time_when_it_fires() -> None:
    once = OnceTrigger(at=datetime(2026, 12, 1, 9, 0))  # noqa: DTZ001 - that is the point
    paris_nine = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)
    assert triggers.next_after(once, PARIS, T0, T0) == paris_nine
    assert triggers.first_fire(once, PARIS, T0, T0, is_new=True) == paris_nine
    late = paris_nine + timedelta(minutes=30)  # 09:30 UTC would still be ahead
    assert triggers.next_after(once, PARIS, T0, late) is None


def test_a_gap_time_moves_to_the_first_real_minute_and_a_second_fold_to_the_first() -> None:
    odd = OnceTrigger(at=datetime(2026, 3, 8, 2, 31))  # noqa: DTZ001
    assert triggers.once_at(odd, NEW_YORK) == datetime(2026, 3, 8, 7, 0, tzinfo=UTC)  # 03:00 EDT
    # 01:30 on the fall-back day happens twice; the first (EDT) is meant, whatever the fold
    second = OnceTrigger(at=datetime(2026, 11, 1, 1, 30, fold=1))  # noqa: DTZ001
    assert triggers.once_at(second, NEW_YORK) == datetime(2026, 11, 1, 5, 30, tzinfo=UTC)


def test_a_late_interval_and_a_late_zoned_cron_jump_ahead_and_end_at_now() -> None:
    start = T0 + timedelta(seconds=60)
    now = start + timedelta(minutes=3 * triggers.MAX_SCAN)
    every = IntervalTrigger(every_seconds=60)
    due = triggers.due_fires(every, UTC_ZONE, T0, start=start, now=now, keep=2)
    assert due.times == [now - timedelta(minutes=1), now]
    assert due.unlisted >= triggers.MAX_SCAN - 2
    assert due.next_fire_at == now + timedelta(minutes=1)
    nine = CronTrigger(expr="0 9 * * *")  # Paris time: 08:00 UTC in winter
    cron_start = datetime(2025, 1, 1, 8, 0, tzinfo=UTC)
    cron_now = datetime(2080, 1, 15, 8, 0, tzinfo=UTC)  # 20,000 days later
    due = triggers.due_fires(nine, PARIS, T0, start=cron_start, now=cron_now, keep=2)
    assert due.times == [cron_now - timedelta(days=1), cron_now]
    assert due.next_fire_at == cron_now + timedelta(days=1)


@pytest.mark.parametrize("count", [triggers.MAX_SCAN - 1, triggers.MAX_SCAN, triggers.MAX_SCAN + 1])
def test_a_zoned_cron_with_about_max_scan_fires_due_lists_and_counts_them_all(count: int) -> None:
    """At the scan's limit, with the jump ahead or just before it: every fire is in the
    schedule's zone and none is lost from the count."""

    def paris_nine(day: date) -> datetime:
        return datetime.combine(day, time(9), tzinfo=PARIS).astimezone(UTC)

    first = date(2025, 1, 1)
    last = first + timedelta(days=count - 1)
    nine = CronTrigger(expr="0 9 * * *")
    due = triggers.due_fires(nine, PARIS, T0, start=paris_nine(first), now=paris_nine(last), keep=2)
    assert due.times == [paris_nine(last - timedelta(days=1)), paris_nine(last)]
    assert due.unlisted == count - 2
    assert due.next_fire_at == paris_nine(last + timedelta(days=1))
