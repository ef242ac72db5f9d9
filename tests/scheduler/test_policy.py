"""The misfire and overlap policies, as pure decisions."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from culm.scheduler.models import FireStatus, MisfirePolicy, OverlapPolicy
from culm.scheduler.policy import decide, may_start

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
GRACE = timedelta(seconds=60)
MISSED, QUEUED, SKIPPED = FireStatus.MISSED, FireStatus.QUEUED, FireStatus.SKIPPED


def hours_ago(*hours: float) -> list[datetime]:
    return [NOW - timedelta(hours=h) for h in hours]


def statuses(
    due: list[datetime],
    misfire: MisfirePolicy = MisfirePolicy.RUN_ONCE,
    overlap: OverlapPolicy = OverlapPolicy.ALLOW,
    *,
    busy: int = 0,
    limit: int = 10,
) -> list[FireStatus]:
    fires = decide(
        due,
        now=NOW,
        grace=GRACE,
        misfire=misfire,
        overlap=overlap,
        catch_up_limit=limit,
        busy=busy,
    )
    assert [fire.scheduled_for for fire in fires] == due
    return [fire.status for fire in fires]


@pytest.mark.parametrize("misfire", list(MisfirePolicy))
def test_one_time_on_time_fires_whatever_the_misfire_policy(misfire: MisfirePolicy) -> None:
    assert statuses([NOW - timedelta(seconds=59)], misfire) == [QUEUED]


def test_skip_misses_everything_late() -> None:
    assert statuses(hours_ago(3, 2, 1), MisfirePolicy.SKIP) == [MISSED, MISSED, MISSED]
    assert statuses([NOW - timedelta(seconds=61)], MisfirePolicy.SKIP) == [MISSED]


def test_skip_still_fires_the_latest_when_it_is_on_time() -> None:
    due = [*hours_ago(2, 1), NOW - timedelta(seconds=1)]
    assert statuses(due, MisfirePolicy.SKIP) == [MISSED, MISSED, QUEUED]


def test_run_once_fires_the_latest_only() -> None:
    assert statuses(hours_ago(3, 2, 1), MisfirePolicy.RUN_ONCE) == [MISSED, MISSED, QUEUED]
    assert statuses(hours_ago(5), MisfirePolicy.RUN_ONCE) == [QUEUED]


def test_catch_up_fires_each_up_to_its_cap() -> None:
    assert statuses(hours_ago(3, 2, 1), MisfirePolicy.CATCH_UP) == [QUEUED] * 3
    assert statuses(hours_ago(4, 3, 2, 1), MisfirePolicy.CATCH_UP, limit=2) == [
        MISSED,
        MISSED,
        QUEUED,
        QUEUED,
    ]


def test_overlap_allow_queues_everything() -> None:
    assert statuses(hours_ago(2, 1), MisfirePolicy.CATCH_UP, OverlapPolicy.ALLOW, busy=3) == [
        QUEUED,
        QUEUED,
    ]


def test_overlap_skip_skips_while_anything_runs_or_waits() -> None:
    assert statuses(hours_ago(0), overlap=OverlapPolicy.SKIP, busy=1) == [SKIPPED]
    assert statuses(hours_ago(0), overlap=OverlapPolicy.SKIP, busy=0) == [QUEUED]
    # A catch-up's fires overlap each other: only the first runs.
    assert statuses(hours_ago(3, 2, 1), MisfirePolicy.CATCH_UP, OverlapPolicy.SKIP) == [
        QUEUED,
        SKIPPED,
        SKIPPED,
    ]


def test_overlap_queue_one_keeps_one_waiting() -> None:
    assert statuses(hours_ago(0), overlap=OverlapPolicy.QUEUE_ONE, busy=1) == [QUEUED]
    assert statuses(hours_ago(0), overlap=OverlapPolicy.QUEUE_ONE, busy=2) == [SKIPPED]
    assert statuses(hours_ago(3, 2, 1), MisfirePolicy.CATCH_UP, OverlapPolicy.QUEUE_ONE) == [
        QUEUED,
        QUEUED,
        SKIPPED,
    ]


def test_missed_fires_are_not_counted_against_overlap() -> None:
    assert statuses(hours_ago(3, 2, 1), MisfirePolicy.RUN_ONCE, OverlapPolicy.SKIP) == [
        MISSED,
        MISSED,
        QUEUED,
    ]


def test_how_many_waiting_fires_may_start() -> None:
    assert may_start(OverlapPolicy.SKIP, 0) == 1
    assert may_start(OverlapPolicy.QUEUE_ONE, 1) == 0
    assert may_start(OverlapPolicy.QUEUE_ONE, 0) == 1
    assert may_start(OverlapPolicy.ALLOW, 5) > 1000
