"""The tree walk and glob matching behind the glob and grep tools."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

from culm.errors import ToolFailure
from culm.tools.walk import Cancelled, file_filter, glob_regex, in_thread, pattern_parts, walk


@pytest.mark.parametrize(
    ("pattern", "matches", "misses"),
    [
        ("*.py", ["a.py", ".hidden.py"], ["d/a.py", "a.pyc"]),
        ("**/*.py", ["a.py", "d/a.py", "d/e/a.py"], ["a.txt", "d/a.pyx"]),
        ("d/**", ["d/x", "d/e/f"], ["d", "x/d/y"]),
        ("a/**/b", ["a/b", "a/x/b", "a/x/y/b"], ["a/xb", "b"]),
        ("?.txt", ["a.txt"], ["ab.txt", "/.txt"]),
        ("[ab]*", ["apple", "berry"], ["cherry"]),
        ("[!ab]*", ["cherry"], ["apple", "/x"]),
        ("*.{js,jsx}", ["a.js", "a.jsx"], ["a.ts"]),
        ("f[[]x", ["f[x"], ["fx"]),
        ("a+b(c).txt", ["a+b(c).txt"], ["aab(c).txt"]),
    ],
)
def test_glob_regex(pattern: str, matches: list[str], misses: list[str]) -> None:
    regex = glob_regex(pattern_parts(pattern))
    assert all(regex.fullmatch(path) for path in matches)
    assert not any(regex.fullmatch(path) for path in misses)


@pytest.mark.parametrize(
    ("pattern", "message"),
    [("", "is empty"), ("/etc/*", "must be relative"), ("a/../../b", "may not contain '..'")],
)
def test_pattern_parts_refuses_escapes(pattern: str, message: str) -> None:
    with pytest.raises(ToolFailure, match=message):
        pattern_parts(pattern)


def test_file_filter_by_name_or_by_path() -> None:
    assert file_filter(None)("any/thing")
    by_name = file_filter("*.py")
    assert by_name("a.py") and by_name("deep/er/a.py") and not by_name("a.py/x.txt")
    by_path = file_filter("src/*.py")
    assert by_path("src/a.py") and not by_path("a.py") and not by_path("src/x/a.py")
    with pytest.raises(ToolFailure, match="glob '../x/y' may not contain"):
        file_filter("../x/y")


def test_walk_is_depth_first_sorted_and_skips_links_and_git(tmp_path: Path) -> None:
    for rel in ["b/inner.txt", "a.txt", "b.txt", ".git/config", "c/d/e.txt"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).touch()
    (tmp_path / "link").symlink_to(tmp_path / "c", target_is_directory=True)
    seen = [(rel, is_dir) for rel, _, is_dir in walk(tmp_path, threading.Event())]
    assert seen == [
        (".git", True),
        ("a.txt", False),
        ("b", True),
        ("b/inner.txt", False),
        ("b.txt", False),
        ("c", True),
        ("c/d", True),
        ("c/d/e.txt", False),
        ("link", False),
    ]
    shallow = [rel for rel, _, _ in walk(tmp_path, threading.Event(), max_depth=1)]
    assert shallow == [".git", "a.txt", "b", "b.txt", "c", "link"]


def test_walk_stops_when_asked(tmp_path: Path) -> None:
    (tmp_path / "x").touch()
    stop = threading.Event()
    stop.set()
    with pytest.raises(Cancelled):
        list(walk(tmp_path, stop))


async def test_in_thread_passes_a_stop_flag_that_is_set_afterwards() -> None:
    flags: list[threading.Event] = []

    def work(stop: threading.Event) -> int:
        flags.append(stop)
        assert not stop.is_set()
        return 42

    assert await in_thread(work) == 42
    assert flags[0].is_set()


async def test_cancelling_in_thread_tells_the_work_to_stop() -> None:
    started, finished = threading.Event(), threading.Event()

    def work(stop: threading.Event) -> None:
        started.set()
        stop.wait(10)
        finished.set()

    task = asyncio.create_task(in_thread(work))
    assert await asyncio.to_thread(started.wait, 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await asyncio.to_thread(finished.wait, 5)
