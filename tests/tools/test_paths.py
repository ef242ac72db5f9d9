"""Confinement of tool paths to the workspace, with real directories and real symlinks."""

from __future__ import annotations

from pathlib import Path

import pytest

from culm.errors import ToolFailure
from culm.tools.paths import Workspace


@pytest.fixture
def ws(workspace: Path) -> Workspace:
    (workspace / "sub").mkdir()
    (workspace / "sub" / "a.txt").write_text("a\n")
    return Workspace(workspace)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("sub/a.txt", "sub/a.txt"),
        ("./sub/a.txt", "sub/a.txt"),
        ("sub/../sub/a.txt", "sub/a.txt"),
        (".", "."),
        ("sub/", "sub"),
        ("new/dir/file.txt", "new/dir/file.txt"),
    ],
)
def test_paths_inside_resolve_relative_to_the_workspace(
    ws: Workspace, raw: str, expected: str
) -> None:
    path = ws.resolve(raw)
    assert path.is_absolute()
    assert ws.relative(path) == expected


def test_absolute_path_inside_is_accepted(ws: Workspace, workspace: Path) -> None:
    assert ws.relative(ws.resolve(str(workspace / "sub" / "a.txt"))) == "sub/a.txt"
    assert ws.relative(ws.resolve(str(workspace))) == "."


@pytest.mark.parametrize("raw", ["..", "../outside/secret.txt", "sub/../../x", "sub/../.."])
def test_dotdot_escape_is_refused(ws: Workspace, outside: Path, raw: str) -> None:
    with pytest.raises(ToolFailure, match="is outside the workspace") as info:
        ws.resolve(raw)
    assert repr(raw) in str(info.value)


def test_absolute_path_outside_is_refused(ws: Workspace, outside: Path) -> None:
    raw = str(outside / "secret.txt")
    with pytest.raises(ToolFailure, match="outside the workspace") as info:
        ws.resolve(raw)
    assert raw in str(info.value)


def test_sibling_with_the_same_prefix_is_outside(tmp_path: Path, workspace: Path) -> None:
    sibling = tmp_path / (workspace.name + "-other")
    sibling.mkdir()
    with pytest.raises(ToolFailure, match="outside"):
        Workspace(workspace).resolve(str(sibling / "x"))


def test_symlinked_directory_pointing_outside_is_refused(
    ws: Workspace, workspace: Path, outside: Path
) -> None:
    (workspace / "link").symlink_to(outside, target_is_directory=True)
    for raw in ["link", "link/secret.txt", "link/not-yet.txt", "link/new/deeper.txt"]:
        with pytest.raises(ToolFailure, match="symbolic link") as info:
            ws.resolve(raw)
        assert repr(raw) in str(info.value)


def test_symlinked_file_pointing_outside_is_refused(
    ws: Workspace, workspace: Path, outside: Path
) -> None:
    (workspace / "secret").symlink_to(outside / "secret.txt")
    with pytest.raises(ToolFailure, match="'secret' leads outside the workspace"):
        ws.resolve("secret")


def test_dangling_symlink_pointing_outside_is_refused(
    ws: Workspace, workspace: Path, outside: Path
) -> None:
    (workspace / "future").symlink_to(outside / "does-not-exist-yet.txt")
    with pytest.raises(ToolFailure, match="symbolic link"):
        ws.resolve("future")


def test_nested_symlink_chain_pointing_outside_is_refused(
    ws: Workspace, workspace: Path, outside: Path
) -> None:
    (workspace / "hop2").symlink_to(outside, target_is_directory=True)
    (workspace / "sub" / "hop1").symlink_to("../hop2", target_is_directory=True)
    with pytest.raises(ToolFailure, match="symbolic link"):
        ws.resolve("sub/hop1/secret.txt")


def test_symlink_staying_inside_is_followed(ws: Workspace, workspace: Path) -> None:
    (workspace / "alias").symlink_to("sub", target_is_directory=True)
    path = ws.resolve("alias/a.txt")
    assert path == (workspace / "sub" / "a.txt").resolve()
    assert ws.relative(path) == "sub/a.txt"


def test_symlink_loop_is_a_clear_failure(ws: Workspace, workspace: Path) -> None:
    (workspace / "loop1").symlink_to("loop2")
    (workspace / "loop2").symlink_to("loop1")
    with pytest.raises(ToolFailure, match="'loop1' cannot be resolved"):
        ws.resolve("loop1")


def test_workspace_reached_through_a_symlink(tmp_path: Path, workspace: Path) -> None:
    (workspace / "f.txt").write_text("x")
    alias = tmp_path / "alias"
    alias.symlink_to(workspace, target_is_directory=True)
    ws = Workspace(alias)
    assert ws.relative(ws.resolve("f.txt")) == "f.txt"
    assert ws.relative(ws.resolve(str(alias / "f.txt"))) == "f.txt"
    with pytest.raises(ToolFailure, match="outside"):
        ws.resolve("../workspace/../x")


@pytest.mark.parametrize(
    ("raw", "message"), [("", "is empty"), ("  ", "is empty"), ("a\0b", "NUL")]
)
def test_malformed_paths_are_refused(ws: Workspace, raw: str, message: str) -> None:
    with pytest.raises(ToolFailure, match=message):
        ws.resolve(raw, field="path")
