"""File tools: read_file, write_file, edit_file, list_dir, glob and grep.

Every path goes through :class:`~culm.tools.paths.Workspace`, so a tool never touches anything
outside the session's workspace, and every result names paths relative to it. The filesystem work
runs in a worker thread (``asyncio.to_thread``); glob and grep walk trees with
:mod:`culm.tools.walk`, which stops as soon as their call is cancelled. Output is capped, and a
note says what was left out and how to get the rest.
"""

from __future__ import annotations

import asyncio
import os
import re
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, BinaryIO

from culm.errors import ToolFailure
from culm.tools.args import check_fields, get_bool, get_int, get_optional_str, get_str
from culm.tools.base import Tool, ToolContext
from culm.tools.paths import Workspace
from culm.tools.walk import (
    PathFilter,
    Stop,
    file_filter,
    glob_regex,
    has_magic,
    in_thread,
    pattern_parts,
    walk,
)

MAX_READ_LINES = 2000
MAX_READ_CHARS = 100_000
MAX_LINE_CHARS = 2000
MAX_LIST_ENTRIES = 1000
MAX_GLOB_RESULTS = 1000
MAX_GREP_MATCHES = 250
MAX_GREP_LINE_CHARS = 500
MAX_GREP_FILE_BYTES = 5 * 1024 * 1024
BINARY_SNIFF_BYTES = 8192


def _schema(properties: dict[str, Any], *required: str) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": properties,
        "required": list(required),
        "additionalProperties": False,
    }


def _string(description: str) -> dict[str, Any]:
    return {"type": "string", "description": description}


# --- read_file ------------------------------------------------------------------------------


class ReadFileTool(Tool):
    name = "read_file"
    description = (
        "Read a text file from the workspace. Lines are returned numbered as `N<TAB>text`; the "
        f"numbers are not part of the file. At most {MAX_READ_LINES} lines per call, starting at "
        "`offset`; when more follows, a note gives the offset to continue from. Binary files are "
        "refused; long lines are shortened."
    )
    parameters = _schema(
        {
            "path": _string("File path, relative to the workspace."),
            "offset": {
                "type": "integer",
                "minimum": 1,
                "description": "First line to return, 1-based. Default: 1.",
            },
            "limit": {
                "type": "integer",
                "minimum": 1,
                "description": f"Number of lines to return. Default and maximum: {MAX_READ_LINES}.",
            },
        },
        "path",
    )
    read_only = True

    async def run(self, arguments: dict[str, Any], ctx: ToolContext) -> str:
        check_fields(arguments, self.parameters)
        path = get_str(arguments, "path")
        offset = get_int(arguments, "offset", 1, minimum=1)
        limit = min(get_int(arguments, "limit", MAX_READ_LINES, minimum=1), MAX_READ_LINES)
        return await asyncio.to_thread(_read_file, ctx.workspace, path, offset, limit)


def _read_file(workspace: Path, raw: str, offset: int, limit: int) -> str:
    ws = Workspace(workspace)
    path = ws.resolve(raw)
    rel = ws.relative(path)
    _require_regular_file(path, rel)
    try:
        with path.open("rb") as file:
            if _is_binary(file.read(BINARY_SNIFF_BYTES)):
                raise ToolFailure(f"{rel} is a binary file; read_file shows text files only")
            file.seek(0)
            lines, more, seen = _read_window(file, offset, limit)
    except OSError as exc:
        raise _os_failure("cannot read", rel, exc) from exc
    if not lines:
        if seen == 0:
            return f"({rel} is empty)"
        raise ToolFailure(f"offset {offset} is past the end of {rel}, which has {seen} lines")
    text = "\n".join(lines)
    if more:
        last = offset + len(lines) - 1
        text += (
            f"\n[{rel} continues: showing lines {offset}-{last}; "
            f"call read_file with offset={last + 1} to read more]"
        )
    return text


def _read_window(file: BinaryIO, offset: int, limit: int) -> tuple[list[str], bool, int]:
    """Numbered lines from ``offset``; whether more follow; how many lines were seen."""
    out: list[str] = []
    size = 0
    number = 0
    for raw in file:
        number += 1
        if number < offset:
            continue
        if len(out) >= limit or size >= MAX_READ_CHARS:
            return out, True, number
        line = f"{number:>6}\t{_clip(_line_text(raw), MAX_LINE_CHARS)}"
        out.append(line)
        size += len(line) + 1
    return out, False, number


# --- write_file and edit_file ---------------------------------------------------------------


class WriteFileTool(Tool):
    name = "write_file"
    description = (
        "Create or overwrite a file in the workspace with the given content (UTF-8). Missing "
        "parent directories are created. To change part of an existing file, prefer edit_file."
    )
    parameters = _schema(
        {
            "path": _string("File path, relative to the workspace."),
            "content": _string("The complete new content of the file."),
        },
        "path",
        "content",
    )

    async def run(self, arguments: dict[str, Any], ctx: ToolContext) -> str:
        check_fields(arguments, self.parameters)
        path = get_str(arguments, "path")
        content = get_str(arguments, "content")
        return await asyncio.to_thread(_write_file, ctx.workspace, path, content)


def _write_file(workspace: Path, raw: str, content: str) -> str:
    ws = Workspace(workspace)
    path = ws.resolve(raw)
    rel = ws.relative(path)
    existed = path.exists()
    if existed:
        _require_regular_file(path, rel, hint=", not a file")
    data = content.encode("utf-8", errors="replace")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    except OSError as exc:
        raise _os_failure("cannot write", rel, exc) from exc
    what = "replaced its previous content" if existed else "new file"
    return f"Wrote {len(data)} bytes to {rel} ({what})."


class EditFileTool(Tool):
    name = "edit_file"
    description = (
        "Replace an exact string in a text file. `old_string` must match the file exactly, "
        "whitespace and indentation included (without read_file's line numbers), and must occur "
        "once unless `replace_all` is true; include enough surrounding lines to make it unique."
    )
    parameters = _schema(
        {
            "path": _string("File path, relative to the workspace."),
            "old_string": _string("The exact text to replace."),
            "new_string": _string("The text to put in its place (may be empty)."),
            "replace_all": {
                "type": "boolean",
                "description": "Replace every occurrence instead of exactly one. Default: false.",
            },
        },
        "path",
        "old_string",
        "new_string",
    )

    async def run(self, arguments: dict[str, Any], ctx: ToolContext) -> str:
        check_fields(arguments, self.parameters)
        path = get_str(arguments, "path")
        old = get_str(arguments, "old_string")
        new = get_str(arguments, "new_string")
        replace_all = get_bool(arguments, "replace_all")
        if not old:
            raise ToolFailure("old_string is empty; use write_file to create or overwrite a file")
        if old == new:
            raise ToolFailure("old_string and new_string are the same; there is nothing to change")
        return await asyncio.to_thread(_edit_file, ctx.workspace, path, old, new, replace_all)


def _edit_file(workspace: Path, raw: str, old: str, new: str, replace_all: bool) -> str:
    ws = Workspace(workspace)
    path = ws.resolve(raw)
    rel = ws.relative(path)
    _require_regular_file(path, rel)
    text = _read_utf8(path, rel)
    count = text.count(old)
    if count == 0:
        raise ToolFailure(
            f"old_string was not found in {rel}; it must match the file exactly, "
            "whitespace and indentation included"
        )
    if count > 1 and not replace_all:
        raise ToolFailure(
            f"old_string occurs {count} times in {rel}; include more surrounding lines to make "
            "it unique, or set replace_all to true"
        )
    line = text.count("\n", 0, text.index(old)) + 1
    updated = text.replace(old, new) if replace_all else text.replace(old, new, 1)
    try:
        path.write_bytes(updated.encode("utf-8", errors="replace"))
    except OSError as exc:
        raise _os_failure("cannot write", rel, exc) from exc
    if count == 1:
        return f"Replaced 1 occurrence in {rel} (line {line})."
    return f"Replaced {count} occurrences in {rel} (the first at line {line})."


def _read_utf8(path: Path, rel: str) -> str:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise _os_failure("cannot read", rel, exc) from exc
    if _is_binary(data[:BINARY_SNIFF_BYTES]):
        raise ToolFailure(f"{rel} is a binary file; edit_file edits text files only")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ToolFailure(f"{rel} is not valid UTF-8; edit_file edits UTF-8 text only") from exc


# --- list_dir -------------------------------------------------------------------------------


class ListDirTool(Tool):
    name = "list_dir"
    description = (
        "List a directory in the workspace, sorted by name: subdirectories end in `/`, files "
        "show their size, symbolic links their target. At most "
        f"{MAX_LIST_ENTRIES} entries. Use glob to find files in nested directories."
    )
    parameters = _schema({"path": _string("Directory, relative to the workspace. Default: '.'.")})
    read_only = True

    async def run(self, arguments: dict[str, Any], ctx: ToolContext) -> str:
        check_fields(arguments, self.parameters)
        path = get_str(arguments, "path", ".")
        return await asyncio.to_thread(_list_dir, ctx.workspace, path)


def _list_dir(workspace: Path, raw: str) -> str:
    ws = Workspace(workspace)
    path = ws.resolve(raw)
    rel = ws.relative(path)
    try:
        with os.scandir(path) as scan:
            entries = sorted(scan, key=lambda entry: entry.name)
    except FileNotFoundError as exc:
        raise ToolFailure(f"directory not found: {rel}") from exc
    except NotADirectoryError as exc:
        raise ToolFailure(f"{rel} is a file, not a directory; use read_file to read it") from exc
    except OSError as exc:
        raise _os_failure("cannot list", rel, exc) from exc
    if not entries:
        return f"({rel} is empty)"
    lines = [_describe(entry) for entry in entries[:MAX_LIST_ENTRIES]]
    if len(entries) > MAX_LIST_ENTRIES:
        lines.append(f"[showing {MAX_LIST_ENTRIES} of {len(entries)} entries]")
    return "\n".join(lines)


def _describe(entry: os.DirEntry[str]) -> str:
    try:
        if entry.is_symlink():
            return f"{entry.name} -> {os.readlink(entry.path)}"
        if entry.is_dir():
            return f"{entry.name}/"
        return f"{entry.name} ({entry.stat().st_size} bytes)"
    except OSError:
        return entry.name


# --- glob -----------------------------------------------------------------------------------


class GlobTool(Tool):
    name = "glob"
    description = (
        "Find files and directories by glob pattern, e.g. `**/*.py` or `src/*.{ts,tsx}`. `*` and "
        "`?` match within one path segment, `**` spans directories. Returns paths relative to the "
        f"workspace (directories end in `/`), sorted, at most {MAX_GLOB_RESULTS}. Does not enter "
        "`.git` or linked directories."
    )
    parameters = _schema(
        {
            "pattern": _string("Glob pattern, relative to `path`."),
            "path": _string("Directory to search from, relative to the workspace. Default: '.'."),
        },
        "pattern",
    )
    read_only = True

    async def run(self, arguments: dict[str, Any], ctx: ToolContext) -> str:
        check_fields(arguments, self.parameters)
        pattern = get_str(arguments, "pattern")
        base = get_str(arguments, "path", ".")
        parts = pattern_parts(pattern)
        return await in_thread(partial(_glob, ctx.workspace, pattern, parts, base))


def _glob(workspace: Path, pattern: str, parts: list[str], base_raw: str, stop: Stop) -> str:
    ws = Workspace(workspace)
    base = ws.resolve(base_raw)
    base_rel = ws.relative(base)
    if not base.exists():
        raise ToolFailure(f"directory not found: {base_rel}")
    if not base.is_dir():
        raise ToolFailure(f"{base_rel} is not a directory; `path` must name one")
    prefix = [] if base_rel == "." else base_rel.split("/")
    literal = 0
    while literal < len(parts) and not has_magic(parts[literal]):
        literal += 1
    prefix += parts[:literal]
    rest = parts[literal:]
    start = ws.resolve("/".join(prefix)) if prefix else ws.root
    shown = "".join(f"{part}/" for part in prefix)
    if not rest:
        found = [shown.rstrip("/") + ("/" if start.is_dir() else "")] if start.exists() else []
    else:
        regex = glob_regex(rest)
        depth = None if "**" in rest else len(rest)
        found = sorted(
            shown + rel + ("/" if is_dir else "")
            for rel, _, is_dir in walk(start, stop, max_depth=depth)
            if regex.fullmatch(rel)
        )
    if not found:
        where = "" if base_rel == "." else f" in {base_rel}"
        return f"No paths match {pattern!r}{where}."
    lines = found[:MAX_GLOB_RESULTS]
    if len(found) > MAX_GLOB_RESULTS:
        lines.append(f"[showing {MAX_GLOB_RESULTS} of {len(found)} matches; narrow the pattern]")
    return "\n".join(lines)


# --- grep -----------------------------------------------------------------------------------


class GrepTool(Tool):
    name = "grep"
    description = (
        "Search file contents for a regular expression (Python `re` syntax), line by line. "
        "Returns `path:line:text` lines with paths relative to the workspace, at most "
        f"{MAX_GREP_MATCHES} matches. `glob` filters which files are searched: a name pattern "
        "such as `*.py`, or a path pattern such as `src/**/*.ts` (relative to `path`). Skips "
        "binary files, files over 5 MiB, `.git` and symbolic links."
    )
    parameters = _schema(
        {
            "pattern": _string("Regular expression to search for."),
            "path": _string(
                "File or directory to search, relative to the workspace. Default: '.'."
            ),
            "glob": _string("Only search files matching this glob, e.g. '*.py'."),
            "ignore_case": {
                "type": "boolean",
                "description": "Match without regard to case. Default: false.",
            },
        },
        "pattern",
    )
    read_only = True

    async def run(self, arguments: dict[str, Any], ctx: ToolContext) -> str:
        check_fields(arguments, self.parameters)
        pattern = get_str(arguments, "pattern")
        base = get_str(arguments, "path", ".")
        file_glob = get_optional_str(arguments, "glob")
        flags = re.IGNORECASE if get_bool(arguments, "ignore_case") else 0
        try:
            regex = re.compile(pattern, flags)
        except re.error as exc:
            raise ToolFailure(f"invalid regular expression {pattern!r}: {exc}") from exc
        accept = file_filter(file_glob)
        return await in_thread(partial(_grep, ctx.workspace, regex, base, accept))


@dataclass(slots=True)
class _GrepResult:
    lines: list[str] = field(default_factory=list)
    binary: int = 0
    oversized: int = 0
    complete: bool = True


def _grep(
    workspace: Path, regex: re.Pattern[str], base_raw: str, accept: PathFilter, stop: Stop
) -> str:
    ws = Workspace(workspace)
    base = ws.resolve(base_raw)
    base_rel = ws.relative(base)
    result = _GrepResult()
    for rel, path, size in _grep_candidates(ws, base, accept, stop):
        if size > MAX_GREP_FILE_BYTES:
            result.oversized += 1
        elif not _grep_file(path, rel, regex, result):
            result.complete = False
            break
    lines = result.lines or [f"No matches for {regex.pattern!r} in {base_rel}."]
    if not result.complete:
        lines.append(f"[stopped at {MAX_GREP_MATCHES} matches; narrow the pattern, path or glob]")
    skipped = []
    if result.binary:
        skipped.append(f"{result.binary} binary file(s)")
    if result.oversized:
        skipped.append(f"{result.oversized} file(s) over {MAX_GREP_FILE_BYTES // 2**20} MiB")
    if skipped:
        lines.append(f"[skipped {' and '.join(skipped)}]")
    return "\n".join(lines)


def _grep_candidates(
    ws: Workspace, base: Path, accept: PathFilter, stop: Stop
) -> Iterator[tuple[str, Path, int]]:
    """(path shown, real path, size) of each regular file to search under ``base``."""
    base_rel = ws.relative(base)
    if not base.is_dir():
        yield base_rel, base, _require_regular_file(base, base_rel).st_size
        return
    shown = "" if base_rel == "." else f"{base_rel}/"
    for rel, entry, _ in walk(base, stop):
        try:
            if not entry.is_file(follow_symlinks=False) or not accept(rel):
                continue
            size = entry.stat(follow_symlinks=False).st_size
        except OSError:
            continue
        yield shown + rel, Path(entry.path), size


def _grep_file(path: Path, rel: str, regex: re.Pattern[str], result: _GrepResult) -> bool:
    """Add the file's matching lines to ``result``; False once the match cap is reached."""
    try:
        data = path.read_bytes()
    except OSError:
        return True
    if _is_binary(data[:BINARY_SNIFF_BYTES]):
        result.binary += 1
        return True
    lines = data.decode("utf-8", errors="replace").split("\n")
    if lines[-1] == "":
        lines.pop()
    for number, line in enumerate(lines, 1):
        if regex.search(line):
            if len(result.lines) >= MAX_GREP_MATCHES:
                return False
            text = _clip(line.removesuffix("\r"), MAX_GREP_LINE_CHARS)
            result.lines.append(f"{rel}:{number}:{text}")
    return True


def _require_regular_file(
    path: Path, rel: str, hint: str = "; use list_dir to see what it contains"
) -> os.stat_result:
    try:
        info = path.stat()
    except FileNotFoundError as exc:
        raise ToolFailure(f"file not found: {rel}") from exc
    except OSError as exc:
        raise _os_failure("cannot read", rel, exc) from exc
    if stat.S_ISDIR(info.st_mode):
        raise ToolFailure(f"{rel} is a directory{hint}")
    if not stat.S_ISREG(info.st_mode):
        raise ToolFailure(f"{rel} is not a regular file")
    return info


def _os_failure(action: str, rel: str, exc: OSError) -> ToolFailure:
    return ToolFailure(f"{action} {rel}: {exc.strerror or exc}")


def _is_binary(head: bytes) -> bool:
    return b"\0" in head


def _line_text(raw: bytes) -> str:
    return raw.decode("utf-8", errors="replace").removesuffix("\n").removesuffix("\r")


def _clip(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… [line shortened: {len(text)} characters]"
