"""The reaper's own rules, checked in a process of its own (it waits for any child)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from culm.tools.process import REAPER

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
