"""The reaper's own rules, checked in a process of its own (it waits for any child)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator

import psutil
import pytest

from culm.tools.process import REAPER, reaped
from tests.processes import marked, names, new_marker, wait_gone_sync, wait_sync

# A process that runs the reaper's ending (``_end_all``) on a child of its own while the scans
# of /proc miss that child three times, as a scan does when the child was forked while /proc
# was read (its pid below the entries already read, once pids wrap) and its parent then exited.
ENDING_WITH_MISSED_SCANS = textwrap.dedent(
    """
    import importlib.util, os, sys

    spec = importlib.util.spec_from_file_location("reaper", sys.argv[1])
    reaper = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(reaper)
    child = os.fork()
    if child == 0:
        os.execvp("sleep", ["sleep", "300"])
    real_scan, scans = reaper._descendants, []

    def scan(root):
        scans.append(root)
        return [] if len(scans) <= 3 else real_scan(root)

    reaper._descendants = scan
    reaper._end_all(child, None, 0.2)
    try:
        os.kill(child, 0)
    except ProcessLookupError:
        print("gone")
    else:
        print("left")
        os.kill(child, 9)
    """
)


def test_the_reaper_ends_only_when_no_child_is_left_whatever_a_scan_missed() -> None:
    done = subprocess.run(
        [sys.executable, "-c", ENDING_WITH_MISSED_SCANS, str(REAPER)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "gone"


@pytest.fixture
def marker() -> Iterator[str]:
    marker = new_marker()
    yield marker
    for process in marked(marker):  # what a failing reaper left
        with contextlib.suppress(psutil.Error):
            process.kill()


@pytest.mark.parametrize("burst", ["SIGTERM", "SIGTERM SIGHUP SIGINT"])
def test_stop_signals_in_a_burst_still_end_everything_below(marker: str, burst: str) -> None:
    """A stop signal that comes while the reaper begins to end what is below it (a parent-death
    signal and a cancel at once, say) must not end the reaper before it has: what is below would
    be left to init. Thousands of signals, sent as fast as they go, land in every window."""
    command = (
        f"setsid bash -c 'exec -a {marker}-helper sleep 300' </dev/null >/dev/null 2>&1 & "
        f"exec -a {marker}-main sleep 300"
    )
    reaper = subprocess.Popen(reaped(["bash", "-c", command], grace=1.0), start_new_session=True)
    try:
        wait_sync(lambda: names(marker) == {"helper", "main"}, what="the command and its helper")
        signals = [signal.Signals[name] for name in burst.split()]
        with contextlib.suppress(ProcessLookupError):
            for sent in range(5000):
                os.kill(reaper.pid, signals[sent % len(signals)])
        reaper.wait(timeout=30)
    finally:
        if reaper.poll() is None:
            reaper.kill()
            reaper.wait()
    wait_gone_sync(marker)
    # It exits as its command did: killed by the SIGTERM it sent it.
    assert reaper.returncode == -signal.SIGTERM
