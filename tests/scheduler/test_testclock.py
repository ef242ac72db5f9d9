"""CULM_TEST_SCHEDULE_CLOCK: the schedule clock the distributed tests give real processes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from culm.errors import ConfigError
from culm.scheduler import testclock


def test_unset_means_the_real_clock() -> None:
    assert testclock.from_env({}) is None
    assert testclock.from_env({testclock.VARIABLE: " "}) is None


def test_it_runs_speed_times_faster_from_t0(monkeypatch: pytest.MonkeyPatch) -> None:
    t0 = datetime(2026, 11, 23, 8, 0, 10, tzinfo=UTC)
    clock = testclock.from_env({testclock.VARIABLE: f"{t0.isoformat()},1000.0,120"})
    assert clock is not None
    monkeypatch.setattr(testclock.time, "time", lambda: 1000.0)
    assert clock() == t0
    monkeypatch.setattr(testclock.time, "time", lambda: 1000.5)
    assert clock() == t0 + timedelta(minutes=1)
    assert clock().tzinfo is not None


@pytest.mark.parametrize("value", ["2026-11-23T08:00:10+00:00", "x,1,2", "2026-11-23,1,fast"])
def test_a_bad_value_names_the_variable(value: str) -> None:
    with pytest.raises(ConfigError, match="CULM_TEST_SCHEDULE_CLOCK"):
        testclock.from_env({testclock.VARIABLE: value})
