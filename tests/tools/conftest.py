"""Fixtures for the built-in tools: a real workspace directory and a context that records output."""

from __future__ import annotations

from pathlib import Path

import pytest

from culm.tools.base import ToolContext


class Recorder:
    """Collects what a tool sends through ``emit_output``."""

    def __init__(self) -> None:
        self.chunks: list[str] = []

    def __call__(self, text: str) -> None:
        self.chunks.append(text)

    @property
    def text(self) -> str:
        return "".join(self.chunks)


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    root = tmp_path / "workspace"
    root.mkdir()
    return root


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A directory next to the workspace, with a file the tools must never reach."""
    root = tmp_path / "outside"
    root.mkdir()
    (root / "secret.txt").write_text("secret\n")
    return root


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def ctx(workspace: Path, recorder: Recorder) -> ToolContext:
    return ToolContext(workspace=workspace, tool_call_id="call-1", emit_output=recorder, timeout=30)
