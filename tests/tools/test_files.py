"""The file tools on a real workspace: results, caps, and the errors the model sees."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from culm.errors import ToolFailure
from culm.tools import (
    EditFileTool,
    GlobTool,
    GrepTool,
    ListDirTool,
    ReadFileTool,
    Tool,
    WriteFileTool,
)
from culm.tools.base import ToolContext
from culm.tools.files import (
    MAX_GLOB_RESULTS,
    MAX_GREP_FILE_BYTES,
    MAX_GREP_MATCHES,
    MAX_LINE_CHARS,
    MAX_LIST_ENTRIES,
    MAX_READ_LINES,
)


async def call(tool: Tool, ctx: ToolContext, **arguments: Any) -> str:
    return await tool.run(arguments, ctx)


def write(root: Path, rel: str, content: str | bytes = "") -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    return path


# --- read_file ------------------------------------------------------------------------------


async def test_read_file_numbers_lines(ctx: ToolContext, workspace: Path) -> None:
    write(workspace, "a.txt", "alpha\nbeta\r\ngamma")
    assert (
        await call(ReadFileTool(), ctx, path="a.txt")
        == "     1\talpha\n     2\tbeta\n     3\tgamma"
    )


async def test_read_file_offset_and_limit_say_how_to_continue(
    ctx: ToolContext, workspace: Path
) -> None:
    write(workspace, "n.txt", "".join(f"line {i}\n" for i in range(1, 11)))
    result = await call(ReadFileTool(), ctx, path="n.txt", offset=3, limit=2)
    assert result.splitlines()[:2] == ["     3\tline 3", "     4\tline 4"]
    assert "showing lines 3-4" in result
    assert "offset=5" in result
    tail = await call(ReadFileTool(), ctx, path="n.txt", offset=9)
    assert tail == "     9\tline 9\n    10\tline 10"


async def test_read_file_caps_lines_per_call(ctx: ToolContext, workspace: Path) -> None:
    write(workspace, "big.txt", "x\n" * (MAX_READ_LINES + 50))
    result = await call(ReadFileTool(), ctx, path="big.txt", limit=10**6)
    assert result.count("\tx") == MAX_READ_LINES
    assert f"offset={MAX_READ_LINES + 1}" in result.splitlines()[-1]


async def test_read_file_caps_output_size(ctx: ToolContext, workspace: Path) -> None:
    write(workspace, "wide.txt", ("y" * 1000 + "\n") * 500)
    result = await call(ReadFileTool(), ctx, path="wide.txt")
    assert len(result) < 110_000
    note = result.splitlines()[-1]
    assert "wide.txt continues" in note
    assert "call read_file with offset=" in note


async def test_read_file_shortens_long_lines(ctx: ToolContext, workspace: Path) -> None:
    write(workspace, "min.js", "z" * (MAX_LINE_CHARS * 3))
    result = await call(ReadFileTool(), ctx, path="min.js")
    assert f"[line shortened: {MAX_LINE_CHARS * 3} characters]" in result
    assert len(result) < MAX_LINE_CHARS + 100


async def test_read_file_edge_cases(ctx: ToolContext, workspace: Path) -> None:
    write(workspace, "empty.txt")
    write(workspace, "two.txt", "1\n2\n")
    (workspace / "dir").mkdir()
    write(workspace, "blob.bin", b"\x89PNG\r\n\x1a\n\x00\x00")
    assert await call(ReadFileTool(), ctx, path="empty.txt") == "(empty.txt is empty)"
    cases = {
        "missing.txt": "file not found: missing.txt",
        "dir": "dir is a directory; use list_dir",
        "blob.bin": "blob.bin is a binary file",
    }
    for path, message in cases.items():
        with pytest.raises(ToolFailure, match=message):
            await call(ReadFileTool(), ctx, path=path)
    with pytest.raises(ToolFailure, match="offset 5 is past the end of two.txt, which has 2 lines"):
        await call(ReadFileTool(), ctx, path="two.txt", offset=5)


async def test_read_file_decodes_invalid_utf8_with_replacement(
    ctx: ToolContext, workspace: Path
) -> None:
    write(workspace, "latin.txt", "café\n".encode("latin-1"))
    assert await call(ReadFileTool(), ctx, path="latin.txt") == "     1\tcaf\ufffd"


async def test_read_file_refuses_paths_outside(
    ctx: ToolContext, workspace: Path, outside: Path
) -> None:
    (workspace / "out").symlink_to(outside, target_is_directory=True)
    with pytest.raises(ToolFailure, match="outside the workspace"):
        await call(ReadFileTool(), ctx, path="../outside/secret.txt")
    with pytest.raises(ToolFailure, match="symbolic link"):
        await call(ReadFileTool(), ctx, path="out/secret.txt")


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({}, "missing required argument 'path'"),
        ({"path": 3}, "argument 'path' must be a string, got an integer"),
        ({"path": "a", "offset": "2"}, "argument 'offset' must be an integer, got a string"),
        ({"path": "a", "offset": 0}, "argument 'offset' must be at least 1"),
        ({"path": "a", "limit": True}, "argument 'limit' must be an integer, got a boolean"),
        ({"path": "a", "lines": 3}, "unexpected argument 'lines'"),
    ],
)
async def test_read_file_validates_arguments(
    ctx: ToolContext, arguments: dict[str, Any], message: str
) -> None:
    with pytest.raises(ToolFailure, match=message):
        await ReadFileTool().run(arguments, ctx)


# --- write_file -----------------------------------------------------------------------------


async def test_write_file_creates_parents_and_counts_bytes(
    ctx: ToolContext, workspace: Path
) -> None:
    result = await call(WriteFileTool(), ctx, path="deep/er/new.txt", content="héllo\n")
    assert result == "Wrote 7 bytes to deep/er/new.txt (new file)."
    assert (workspace / "deep/er/new.txt").read_text() == "héllo\n"
    again = await call(WriteFileTool(), ctx, path="deep/er/new.txt", content="")
    assert again == "Wrote 0 bytes to deep/er/new.txt (replaced its previous content)."
    assert (workspace / "deep/er/new.txt").read_bytes() == b""


async def test_write_file_refuses_directories_and_escapes(
    ctx: ToolContext, workspace: Path, outside: Path
) -> None:
    (workspace / "d").mkdir()
    (workspace / "out").symlink_to(outside, target_is_directory=True)
    with pytest.raises(ToolFailure, match="d is a directory"):
        await call(WriteFileTool(), ctx, path="d", content="x")
    with pytest.raises(ToolFailure, match="symbolic link"):
        await call(WriteFileTool(), ctx, path="out/secret.txt", content="pwned")
    with pytest.raises(ToolFailure, match="symbolic link"):
        await call(WriteFileTool(), ctx, path="out/new/file.txt", content="pwned")
    with pytest.raises(ToolFailure, match="outside the workspace"):
        await call(WriteFileTool(), ctx, path=str(outside / "secret.txt"), content="pwned")
    assert (outside / "secret.txt").read_text() == "secret\n"
    assert sorted(p.name for p in outside.iterdir()) == ["secret.txt"]


async def test_write_file_validates_arguments(ctx: ToolContext) -> None:
    with pytest.raises(ToolFailure, match="missing required argument 'content'"):
        await call(WriteFileTool(), ctx, path="a.txt")
    with pytest.raises(ToolFailure, match="argument 'content' must be a string, got an array"):
        await call(WriteFileTool(), ctx, path="a.txt", content=["x"])


# --- edit_file ------------------------------------------------------------------------------


async def test_edit_file_replaces_a_unique_string(ctx: ToolContext, workspace: Path) -> None:
    path = write(workspace, "m.py", "def f():\n    return 1\n")
    result = await call(
        EditFileTool(), ctx, path="m.py", old_string="return 1", new_string="return 2"
    )
    assert result == "Replaced 1 occurrence in m.py (line 2)."
    assert path.read_text() == "def f():\n    return 2\n"


async def test_edit_file_refuses_ambiguous_and_absent_strings(
    ctx: ToolContext, workspace: Path
) -> None:
    path = write(workspace, "m.txt", "x = 1\nx = 1\nx = 1\n")
    with pytest.raises(ToolFailure, match="old_string occurs 3 times in m.txt"):
        await call(EditFileTool(), ctx, path="m.txt", old_string="x = 1", new_string="x = 2")
    with pytest.raises(ToolFailure, match="old_string was not found in m.txt"):
        await call(EditFileTool(), ctx, path="m.txt", old_string="y = 1", new_string="y = 2")
    assert path.read_text() == "x = 1\nx = 1\nx = 1\n"


async def test_edit_file_replace_all(ctx: ToolContext, workspace: Path) -> None:
    path = write(workspace, "m.txt", "keep\nx = 1\nx = 1\n")
    result = await call(
        EditFileTool(), ctx, path="m.txt", old_string="x = 1", new_string="x = 2", replace_all=True
    )
    assert result == "Replaced 2 occurrences in m.txt (the first at line 2)."
    assert path.read_text() == "keep\nx = 2\nx = 2\n"


async def test_edit_file_refusals(ctx: ToolContext, workspace: Path) -> None:
    write(workspace, "t.txt", "text\n")
    write(workspace, "latin.txt", "café\n".encode("latin-1"))
    edits: list[tuple[dict[str, Any], str]] = [
        ({"path": "t.txt", "old_string": "text", "new_string": "text"}, "are the same"),
        ({"path": "t.txt", "old_string": "", "new_string": "x"}, "old_string is empty"),
        ({"path": "nope.txt", "old_string": "a", "new_string": "b"}, "file not found: nope.txt"),
        ({"path": "latin.txt", "old_string": "caf", "new_string": "x"}, "not valid UTF-8"),
        ({"path": "t.txt", "old_string": "a"}, "missing required argument 'new_string'"),
        (
            {"path": "t.txt", "old_string": "t", "new_string": "T", "replace_all": "yes"},
            "argument 'replace_all' must be true or false, got a string",
        ),
    ]
    for arguments, message in edits:
        with pytest.raises(ToolFailure, match=message):
            await EditFileTool().run(arguments, ctx)
    assert (workspace / "t.txt").read_text() == "text\n"


# --- list_dir -------------------------------------------------------------------------------


async def test_list_dir_sorted_with_kinds_and_sizes(ctx: ToolContext, workspace: Path) -> None:
    write(workspace, "b.txt", "12345")
    write(workspace, "a/inner.txt", "x")
    write(workspace, "C.md", "")
    (workspace / "link").symlink_to("b.txt")
    result = await call(ListDirTool(), ctx)
    assert result.splitlines() == ["C.md (0 bytes)", "a/", "b.txt (5 bytes)", "link -> b.txt"]
    assert await call(ListDirTool(), ctx, path="a") == "inner.txt (1 bytes)"


async def test_list_dir_errors_and_empty(ctx: ToolContext, workspace: Path, outside: Path) -> None:
    (workspace / "empty").mkdir()
    write(workspace, "f.txt", "x")
    assert await call(ListDirTool(), ctx, path="empty") == "(empty is empty)"
    with pytest.raises(ToolFailure, match="directory not found: gone"):
        await call(ListDirTool(), ctx, path="gone")
    with pytest.raises(ToolFailure, match="f.txt is a file, not a directory"):
        await call(ListDirTool(), ctx, path="f.txt")
    with pytest.raises(ToolFailure, match="outside the workspace"):
        await call(ListDirTool(), ctx, path=str(outside))


async def test_list_dir_is_capped(ctx: ToolContext, workspace: Path) -> None:
    for i in range(MAX_LIST_ENTRIES + 5):
        (workspace / f"f{i:05}").touch()
    lines = (await call(ListDirTool(), ctx)).splitlines()
    assert len(lines) == MAX_LIST_ENTRIES + 1
    assert lines[-1] == f"[showing {MAX_LIST_ENTRIES} of {MAX_LIST_ENTRIES + 5} entries]"


# --- glob -----------------------------------------------------------------------------------


@pytest.fixture
def tree(workspace: Path) -> Path:
    for rel in [
        "top.py",
        "README.md",
        "src/app.py",
        "src/app.ts",
        "src/view.tsx",
        "src/pkg/deep.py",
        "src/pkg/data.json",
        ".git/hooks/pre.py",
    ]:
        write(workspace, rel, f"# {rel}\n")
    return workspace


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [
        ("**/*.py", ["src/app.py", "src/pkg/deep.py", "top.py"]),
        ("*.py", ["top.py"]),
        ("src/*.py", ["src/app.py"]),
        ("src/**/*.py", ["src/app.py", "src/pkg/deep.py"]),
        ("src/*.{ts,tsx}", ["src/app.ts", "src/view.tsx"]),
        ("src/pkg/d??a.*", ["src/pkg/data.json"]),
        ("src/[!a]*", ["src/pkg/", "src/view.tsx"]),
        ("src/*", ["src/app.py", "src/app.ts", "src/pkg/", "src/view.tsx"]),
        ("src/pkg", ["src/pkg/"]),
        ("README.md", ["README.md"]),
        (".git/*/*.py", [".git/hooks/pre.py"]),
    ],
)
async def test_glob_patterns(
    ctx: ToolContext, tree: Path, pattern: str, expected: list[str]
) -> None:
    assert (await call(GlobTool(), ctx, pattern=pattern)).splitlines() == expected


async def test_glob_from_a_path_reports_workspace_relative(ctx: ToolContext, tree: Path) -> None:
    result = await call(GlobTool(), ctx, pattern="**/*.py", path="src")
    assert result.splitlines() == ["src/app.py", "src/pkg/deep.py"]
    assert (
        await call(GlobTool(), ctx, pattern="*.rs", path="src") == "No paths match '*.rs' in src."
    )


async def test_glob_never_escapes(ctx: ToolContext, tree: Path, outside: Path) -> None:
    (tree / "out").symlink_to(outside, target_is_directory=True)
    with pytest.raises(ToolFailure, match="may not contain '..'"):
        await call(GlobTool(), ctx, pattern="../outside/*")
    with pytest.raises(ToolFailure, match="may not contain '..'"):
        await call(GlobTool(), ctx, pattern="src/../../*")
    with pytest.raises(ToolFailure, match="must be relative"):
        await call(GlobTool(), ctx, pattern=f"{outside}/*")
    with pytest.raises(ToolFailure, match="symbolic link"):
        await call(GlobTool(), ctx, pattern="out/*")
    with pytest.raises(ToolFailure, match="outside the workspace"):
        await call(GlobTool(), ctx, pattern="*", path="..")
    # `**` lists the link itself but does not walk into it.
    assert "secret" not in await call(GlobTool(), ctx, pattern="**")
    assert "out" in (await call(GlobTool(), ctx, pattern="*")).splitlines()


async def test_glob_is_capped(ctx: ToolContext, workspace: Path) -> None:
    for i in range(MAX_GLOB_RESULTS + 3):
        write(workspace, f"many/{i:05}.txt")
    lines = (await call(GlobTool(), ctx, pattern="many/*.txt")).splitlines()
    assert len(lines) == MAX_GLOB_RESULTS + 1
    assert lines[0] == "many/00000.txt"
    assert (
        lines[-1]
        == f"[showing {MAX_GLOB_RESULTS} of {MAX_GLOB_RESULTS + 3} matches; narrow the pattern]"
    )


async def test_glob_path_must_be_a_directory(ctx: ToolContext, tree: Path) -> None:
    with pytest.raises(ToolFailure, match="top.py is not a directory"):
        await call(GlobTool(), ctx, pattern="*", path="top.py")
    with pytest.raises(ToolFailure, match="missing required argument 'pattern'"):
        await call(GlobTool(), ctx)


# --- grep -----------------------------------------------------------------------------------


async def test_grep_reports_file_line_text(ctx: ToolContext, workspace: Path) -> None:
    write(workspace, "a.py", "import os\nx = 1\nprint(x)\n")
    write(workspace, "sub/b.txt", "no\nX marks\n")
    result = await call(GrepTool(), ctx, pattern=r"\bx\b")
    assert result.splitlines() == ["a.py:2:x = 1", "a.py:3:print(x)"]
    result = await call(GrepTool(), ctx, pattern=r"\bx\b", ignore_case=True)
    assert result.splitlines() == ["a.py:2:x = 1", "a.py:3:print(x)", "sub/b.txt:2:X marks"]


async def test_grep_path_and_glob_filters(ctx: ToolContext, tree: Path) -> None:
    everything = (await call(GrepTool(), ctx, pattern="^#")).splitlines()
    assert ".git/hooks/pre.py:1:# .git/hooks/pre.py" not in everything
    assert len(everything) == 7
    by_name = await call(GrepTool(), ctx, pattern="#", glob="*.py")
    assert by_name.splitlines() == [
        "src/app.py:1:# src/app.py",
        "src/pkg/deep.py:1:# src/pkg/deep.py",
        "top.py:1:# top.py",
    ]
    under = await call(GrepTool(), ctx, pattern="#", path="src", glob="pkg/*")
    assert under.splitlines() == [
        "src/pkg/data.json:1:# src/pkg/data.json",
        "src/pkg/deep.py:1:# src/pkg/deep.py",
    ]
    one_file = await call(GrepTool(), ctx, pattern="app", path="src/app.ts")
    assert one_file == "src/app.ts:1:# src/app.ts"


async def test_grep_skips_binary_huge_and_linked_files(
    ctx: ToolContext, workspace: Path, outside: Path
) -> None:
    write(workspace, "text.txt", "needle\n")
    write(workspace, "blob.bin", b"needle\x00\x01")
    write(workspace, "huge.log", b"needle\n" + b"." * MAX_GREP_FILE_BYTES)
    (workspace / "linked.txt").symlink_to(outside / "secret.txt")
    (workspace / "linkdir").symlink_to(outside, target_is_directory=True)
    write(outside, "more.txt", "needle\n")
    result = await call(GrepTool(), ctx, pattern="needle|secret")
    assert result.splitlines() == [
        "text.txt:1:needle",
        "[skipped 1 binary file(s) and 1 file(s) over 5 MiB]",
    ]


async def test_grep_is_capped_and_reports_no_matches(ctx: ToolContext, workspace: Path) -> None:
    write(workspace, "many.txt", "hit\n" * (MAX_GREP_MATCHES + 10))
    lines = (await call(GrepTool(), ctx, pattern="hit")).splitlines()
    assert len(lines) == MAX_GREP_MATCHES + 1
    assert lines[-2] == f"many.txt:{MAX_GREP_MATCHES}:hit"
    assert lines[-1].startswith(f"[stopped at {MAX_GREP_MATCHES} matches")
    assert await call(GrepTool(), ctx, pattern="absent") == "No matches for 'absent' in .."


async def test_grep_errors(ctx: ToolContext, workspace: Path, outside: Path) -> None:
    with pytest.raises(ToolFailure, match=r"invalid regular expression '\(unclosed'"):
        await call(GrepTool(), ctx, pattern="(unclosed")
    with pytest.raises(ToolFailure, match="outside the workspace"):
        await call(GrepTool(), ctx, pattern="secret", path=str(outside))
    with pytest.raises(ToolFailure, match="file not found: nothing"):
        await call(GrepTool(), ctx, pattern="x", path="nothing")
    with pytest.raises(ToolFailure, match="argument 'ignore_case' must be true or false"):
        await call(GrepTool(), ctx, pattern="x", ignore_case=1)
