"""Confinement: every path a built-in tool touches stays inside the session's workspace.

A path from the model is taken relative to the workspace (an absolute path is accepted if it lies
inside it). It is resolved the way the kernel will resolve it — ``..`` components and symbolic links
followed, including a dangling link or a linked parent of a file not yet created — and refused with a
:class:`~culm.errors.ToolFailure` if the result is outside the workspace. Messages show paths
relative to the workspace, so the model never needs to know where the workspace lives.

The check is made before the file is opened; a process racing the tool to swap a directory for a
link between the check and the use is outside what this guards against (``bash`` is confined
differently: by :mod:`culm.tools.sandbox`, when bubblewrap works).
"""

from __future__ import annotations

import os
from pathlib import Path

from culm.errors import ConfigError, ToolFailure


def session_workspace(default: Path, workspace: str | Path | None) -> Path:
    """A new session's workspace: ``workspace`` (an existing directory), else ``default``
    (made now). A path that cannot be one is a :class:`~culm.errors.ConfigError`."""
    if workspace is None:
        default.mkdir(parents=True, exist_ok=True)
        return default
    try:
        path = Path(workspace).expanduser().resolve()
        is_dir = path.is_dir()
    except (OSError, ValueError, RuntimeError) as exc:  # too long, NUL byte, ~nobody
        raise ConfigError(f"workspace {str(workspace)!r} is not usable: {exc}") from None
    if not is_dir:
        raise ConfigError(f"workspace {str(workspace)!r} is not an existing directory")
    return path


class Workspace:
    """A workspace directory and the confinement rules for paths inside it."""

    def __init__(self, root: Path) -> None:
        self._given = Path(os.path.abspath(root))
        try:
            self.root = root.resolve()
        except (OSError, RuntimeError) as exc:
            raise ToolFailure(f"the workspace cannot be resolved: {exc}") from exc

    def resolve(self, raw: str, *, field: str = "path") -> Path:
        """The real path ``raw`` names, or a ToolFailure naming it if that is outside."""
        if not raw.strip():
            raise ToolFailure(f"argument {field!r} is empty")
        if "\0" in raw:
            raise ToolFailure(f"argument {field!r} contains a NUL character")
        candidate = Path(raw) if os.path.isabs(raw) else self._given / raw
        try:
            resolved = candidate.resolve()
        except RuntimeError as exc:  # a symlink loop (Python 3.11 raises RuntimeError)
            raise ToolFailure(f"{raw!r} cannot be resolved: {exc}") from exc
        except OSError as exc:
            raise ToolFailure(f"{raw!r} cannot be resolved: {exc.strerror or exc}") from exc
        if self.contains(resolved):
            return resolved
        if self._lexically_inside(candidate):
            raise ToolFailure(f"{raw!r} leads outside the workspace through a symbolic link")
        raise ToolFailure(f"{raw!r} is outside the workspace; use a path inside it")

    def contains(self, path: Path) -> bool:
        return path == self.root or path.is_relative_to(self.root)

    def relative(self, path: Path) -> str:
        """``path`` (a resolved path inside the workspace) as shown to the model."""
        try:
            rel = path.relative_to(self.root)
        except ValueError:
            return path.as_posix()
        return rel.as_posix() if rel.parts else "."

    def _lexically_inside(self, candidate: Path) -> bool:
        normal = Path(os.path.normpath(candidate))
        return any(
            normal == root or normal.is_relative_to(root) for root in (self._given, self.root)
        )
