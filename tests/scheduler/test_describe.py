"""Triggers in plain words."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from culm.scheduler import cron
from culm.scheduler.describe import describe, describe_cron, duration
from culm.scheduler.models import IntervalTrigger, OnceTrigger


@pytest.mark.parametrize(
    ("expr", "words"),
    [
        ("0 9 * * 1-5", "at 09:00 on Monday through Friday"),
        ("*/15 * * * *", "every 15 minutes"),
        ("* * * * *", "every minute"),
        ("*/1 * * * *", "every minute"),
        ("0 * * * *", "every hour at minute 0"),
        ("5,35 * * * *", "every hour at minutes 5 and 35"),
        ("0 */2 * * *", "every 2 hours at minute 0"),
        ("15 */1 * * *", "every hour at minute 15"),
        ("30 1 * * *", "at 01:30 every day"),
        ("0 9,17 * * *", "at 09:00 and 17:00 every day"),
        ("0,30 9 * * *", "at 09:00 and 09:30 every day"),
        ("0 9-17 * * MON-FRI", "every hour from 09:00 through 17:00 on Monday through Friday"),
        ("0 8 * * sat,sun", "at 08:00 on Saturday and Sunday"),
        ("0 8 * * 0", "at 08:00 on Sunday"),
        ("0 8 * * 7", "at 08:00 on Sunday"),
        ("0 8 * * 1,3,5", "at 08:00 on Monday, Wednesday and Friday"),
        ("0 0 1 * *", "at 00:00 on day 1 of the month"),
        ("0 0 1,15 * *", "at 00:00 on days 1 and 15 of the month"),
        ("0 0 1-7 * *", "at 00:00 on days 1 through 7 of the month"),
        ("0 0 L * *", "at 00:00 on the last day of the month"),
        ("0 0 1 1 *", "at 00:00 on day 1 of the month in January"),
        ("0 12 * JUN-AUG *", "at 12:00 every day in June through August"),
        ("0 0 13 * 5", "at 00:00 on day 13 of the month or on Friday"),
    ],
)
def test_common_shapes_read_plainly(expr: str, words: str) -> None:
    assert describe_cron(expr) == words


@pytest.mark.parametrize(
    ("expr", "words"),
    [
        ("*/45 * * * *", "every 45th minute of every hour"),  # not "every 45 minutes"
        ("0 */5 * * *", "at minute 0 past every fifth hour"),  # not "every 5 hours"
        ("0 0 * * 5L", "at 00:00 on the last Friday of the month"),
        ("*/5 9 * * *", "every fifth minute from 09:00 through 09:59"),
        ("0 0 * * 1#2", "at 00:00 on the second Monday of the month"),
    ],
)
def test_other_shapes_read_as_cronsim_words_them(expr: str, words: str) -> None:
    assert describe_cron(expr) == words


def test_many_listed_times_fall_back() -> None:
    assert describe_cron("0,30 1,2,3,4 * * *").startswith("at minutes 0 and 30")


@given(
    minute=st.sampled_from(["*", "0", "*/5", "5,10", "0-30/10", "59"]),
    hour=st.sampled_from(["*", "9", "*/3", "9-17", "1,13"]),
    dom=st.sampled_from(["*", "1", "L", "1-7", "*/2"]),
    month=st.sampled_from(["*", "1", "JAN-MAR", "6,12"]),
    dow=st.sampled_from(["*", "1-5", "SUN", "5L", "1#1", "*/2"]),
)
def test_every_valid_expression_gets_a_reading(
    minute: str, hour: str, dom: str, month: str, dow: str
) -> None:
    expr = cron.check(f"{minute} {hour} {dom} {month} {dow}")
    words = describe_cron(expr)
    assert words and words == words.strip() and "  " not in words


@pytest.mark.parametrize(
    ("seconds", "words"),
    [(1, "second"), (45, "45 seconds"), (60, "minute"), (90, "90 seconds"), (300, "5 minutes")]
    + [(3600, "hour"), (7200, "2 hours"), (86400, "day"), (172800, "2 days")],
)
def test_durations(seconds: int, words: str) -> None:
    assert duration(seconds) == words


def test_describe_each_trigger_type() -> None:
    assert describe(IntervalTrigger(every_seconds=900)) == "every 15 minutes"
    naive = OnceTrigger(at=datetime(2026, 12, 1, 9, 0))  # noqa: DTZ001
    assert describe(naive, "Europe/Paris") == "once at 2026-12-01 09:00:00 (Europe/Paris)"
    aware = OnceTrigger(at=datetime(2026, 12, 1, 9, 0, tzinfo=UTC))
    assert describe(aware, "Europe/Paris") == "once at 2026-12-01 09:00:00+00:00"
