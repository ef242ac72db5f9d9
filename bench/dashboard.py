"""The dashboard at scale against its targets (issue 21): the runs page over 10,000 runs drawn
in < 300 ms, and a run of 50,000 events drawn without freezing the tab.

    .venv/bin/python -m bench.dashboard [--rounds 5]

Starts a real ``culm serve`` (SQLite under a fresh ``CULM_HOME``), writes the rows the slow
test ``tests/dashboard/test_scale.py`` writes (copies of a real run's: 10,000 runs, one with
50,000 events), then, ``--rounds`` times, each in a fresh browser context of Debian's chromium:

- the runs page: when its 50 rows were drawn (the page's own mark, from the navigation), the
  list call's share (``GET /v1/runs?limit=51``, as the browser timed it), the first visit's
  waterfall (page, modules, list call: medians), and the same page reloaded (its assets from
  the browser's cache);
- the list call alone from Python (``httpx2``, a kept-alive connection): the server's part;
- the big run's page: until all 50,000 events were drawn, and its longest main-thread task.

Prints each round and the medians. Not a test (timing a shared machine in a test is flaky): the
test keeps hang guards only; the figures are in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from playwright.sync_api import sync_playwright
from tests.dashboard.conftest import CHROMIUM, CHROMIUM_ARGS, start_server, stop_server
from tests.dashboard.test_scale import EVENTS, RUNS, WATCH_LONG_TASKS, big_run_page, runs_page
from tests.dashboard.test_scale import seed as seed_rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    figures: dict[str, list[float]] = {
        "runs page drawn (ms)": [],
        "list call in the browser (ms)": [],
        "reloaded, drawn (ms)": [],
        "list call from Python (ms)": [],
        f"{EVENTS:,} events drawn (ms)": [],
        "longest main-thread task (ms)": [],
    }
    steps: dict[str, list[float]] = {}  # the first visit's waterfall
    with tempfile.TemporaryDirectory(prefix="culm-bench-dashboard-") as home:
        server = start_server(Path(home))
        try:
            big = seed_rows(server)
            print(f"seeded {RUNS:,} runs, one of {EVENTS:,} events")
            with sync_playwright() as playwright, server.client() as client:
                browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
                for round_ in range(1, args.rounds + 1):
                    context = browser.new_context(viewport={"width": 1280, "height": 800})
                    context.set_default_timeout(60_000)
                    page = context.new_page()
                    page.add_init_script(WATCH_LONG_TASKS)
                    shown, api, again, waterfall = runs_page(page, server)
                    for name, value in waterfall.items():
                        steps.setdefault(name, []).append(value)
                    started = time.perf_counter()
                    client.get("/v1/runs", params={"limit": 51}).raise_for_status()
                    direct = (time.perf_counter() - started) * 1000
                    took, longest = big_run_page(page, server, big)
                    context.close()
                    row = [shown, api, again, direct, took, longest]
                    for values, value in zip(figures.values(), row, strict=True):
                        values.append(value)
                    print(f"round {round_}: " + ", ".join(f"{v:.0f}" for v in row))
                browser.close()
        finally:
            stop_server(server)
    print()
    print("first visit, ms from the navigation (medians):")
    for name, values in steps.items():
        print(f"  {name:32} {statistics.median(values):6.0f}")
    for name, values in figures.items():
        low, high = min(values), max(values)
        print(f"{name:34} median {statistics.median(values):6.0f}  ({low:.0f}\u2013{high:.0f})")


if __name__ == "__main__":
    main()
