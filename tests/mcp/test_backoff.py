"""The restart backoff of an MCP server: 0.25 s, doubling with each failure in a row, at most
30 s (the numbers of culm.mcp.connection's docstring and the README, written here as literals).
Read from the computed schedule, so no test sleeps through it."""

from __future__ import annotations

from pathlib import Path

from culm.mcp.connection import ConnectionOptions, restart_backoff


def test_the_default_schedule_doubles_from_a_quarter_second_up_to_30_s(tmp_path: Path) -> None:
    options = ConnectionOptions(log_dir=tmp_path)
    schedule = [restart_backoff(failures, options) for failures in range(1, 13)]
    assert schedule == [0.25, 0.5, 1, 2, 4, 8, 16, 30, 30, 30, 30, 30]


def test_the_schedule_follows_the_options(tmp_path: Path) -> None:
    options = ConnectionOptions(log_dir=tmp_path, restart_delay=5, max_restart_delay=12)
    assert [restart_backoff(n, options) for n in (1, 2, 3, 4)] == [5, 10, 12, 12]
