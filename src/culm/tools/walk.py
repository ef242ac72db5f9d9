"""Walking a workspace tree and matching glob patterns, for the glob and grep tools.

The walk is depth first and sorted by name, never follows symbolic links (so it cannot leave the
workspace through one) and does not enter VCS directories. It runs in a worker thread through
:func:`in_thread`, which tells it to stop when the tool call is cancelled — a thread cannot be
cancelled, but it can be asked to give up.

Glob patterns are matched against ``/``-separated relative paths: ``*`` and ``?`` stay within one
segment, ``[...]`` is a character class (``[!...]`` negated), ``{a,b}`` are alternatives and a
``**`` segment spans any number of directories.
"""

from __future__ import annotations

import asyncio
import os
import re
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

from culm.errors import ToolFailure

SKIPPED_DIRS = frozenset({".git", ".hg", ".svn"})

Stop = threading.Event
PathFilter = Callable[[str], bool]
_T = TypeVar("_T")


class Cancelled(Exception):
    """Raised by :func:`walk` in a worker thread whose call was cancelled."""


async def in_thread(work: Callable[[Stop], _T]) -> _T:
    """Run ``work`` in a thread; if the call is cancelled, tell it to stop walking."""
    stop = threading.Event()
    try:
        return await asyncio.to_thread(work, stop)
    finally:
        stop.set()


def walk(
    top: Path, stop: Stop, *, max_depth: int | None = None
) -> Iterator[tuple[str, os.DirEntry[str], bool]]:
    """(path relative to ``top``, entry, is a directory) for everything under ``top``.

    Depth first, sorted by name, so a directory's contents follow it. Never follows symbolic
    links; does not enter VCS directories (``.git`` …).
    """
    stack = [("", iter(_entries(top)), 1)]
    while stack:
        prefix, entries, depth = stack[-1]
        entry = next(entries, None)
        if entry is None:
            stack.pop()
            continue
        if stop.is_set():
            raise Cancelled
        try:
            is_dir = entry.is_dir(follow_symlinks=False)
        except OSError:
            is_dir = False
        rel = prefix + entry.name
        yield rel, entry, is_dir
        deeper = max_depth is None or depth < max_depth
        if is_dir and deeper and entry.name not in SKIPPED_DIRS:
            stack.append((rel + "/", iter(_entries(entry.path)), depth + 1))


def _entries(directory: str | Path) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(directory) as scan:
            return sorted(scan, key=lambda entry: entry.name)
    except OSError:
        return []


def pattern_parts(pattern: str, field: str = "pattern") -> list[str]:
    """The segments of a relative glob pattern; ``..`` and absolute patterns are refused, so a
    pattern can never reach above the directory it is matched from."""
    if not pattern.strip():
        raise ToolFailure(f"argument {field!r} is empty")
    if pattern.startswith("/"):
        raise ToolFailure(f"{field} {pattern!r} must be relative; use `path` to pick a directory")
    parts = [part for part in pattern.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise ToolFailure(f"{field} {pattern!r} may not contain '..'; use `path` instead")
    return parts or ["*"]


def has_magic(part: str) -> bool:
    """Whether a pattern segment has wildcards (else it names one entry literally)."""
    return any(ch in part for ch in "*?[{")


def glob_regex(parts: list[str]) -> re.Pattern[str]:
    """A regex for a relative path matching the glob ``parts`` (``**`` spans directories)."""
    pieces = []
    for index, part in enumerate(parts):
        last = index == len(parts) - 1
        if part == "**":
            pieces.append(".*" if last else "(?:.*/)?")
        else:
            pieces.append(segment_regex(part) + ("" if last else "/"))
    return re.compile("".join(pieces), re.DOTALL)


def segment_regex(segment: str) -> str:
    """Regex source for one path segment: ``*``, ``?``, ``[...]`` and ``{a,b}``."""
    out = []
    i = 0
    while i < len(segment):
        ch = segment[i]
        i += 1
        if ch == "*":
            out.append("[^/]*")
        elif ch == "?":
            out.append("[^/]")
        elif ch == "[" and (end := segment.find("]", i + 1)) != -1:
            body = segment[i:end]
            negate = body[:1] in ("!", "^")
            body = "".join(c if c == "-" else re.escape(c) for c in (body[1:] if negate else body))
            out.append(f"[^/{body}]" if negate else f"[{body}]")
            i = end + 1
        elif ch == "{" and (end := segment.find("}", i)) != -1:
            options = segment[i:end].split(",")
            out.append("(?:" + "|".join(segment_regex(option) for option in options) + ")")
            i = end + 1
        else:
            out.append(re.escape(ch))
    return "".join(out)


def file_filter(file_glob: str | None) -> PathFilter:
    """A test on a path relative to the search base: by name, or by path if the glob has '/'."""
    if file_glob is None or not file_glob.strip():
        return lambda rel: True
    if "/" in file_glob.strip("/"):
        regex = glob_regex(pattern_parts(file_glob, field="glob"))
        return lambda rel: regex.fullmatch(rel) is not None
    name = re.compile(segment_regex(file_glob.strip("/")), re.DOTALL)
    return lambda rel: name.fullmatch(rel.rpartition("/")[2]) is not None
