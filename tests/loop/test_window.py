"""The context window's default limits for a run without a session budget
(``loop/window.py``; found by mutation testing, issue #22)."""

from __future__ import annotations

from culm.loop.window import DEFAULT_WINDOW, default_limits


def test_the_default_reserves_are_a_quarter_and_an_eighth_of_the_window_capped() -> None:
    assert DEFAULT_WINDOW == 128_000
    found = [
        (limits.window, limits.output_reserve, limits.working_reserve)
        for limits in map(default_limits, (None, 10_001, 20_000, 80_000))
    ]
    assert found == [
        (128_000, 8192, 2048),  # no window known: 128k, both reserves at their caps
        (10_001, 2500, 1250),  # whole tokens
        (20_000, 5000, 2048),
        (80_000, 8192, 2048),
    ]
    assert all(type(value) is int for row in found for value in row)
