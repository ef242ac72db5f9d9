"""What API clients may ask of this host, checked before a session or schedule is made.

- ``workspace``: only a directory under the workspace roots (``CULM_HOME/workspaces`` and those
  in ``CULM_WORKSPACE_ROOTS``), symbolic links resolved; else 422 naming the field.
- ``mcp_servers``: a session's own stdio server runs a command on this host, so it is refused
  (422 naming ``mcp_servers.<name>``) unless ``CULM_ALLOW_SESSION_MCP_COMMANDS`` is true.
  Streamable HTTP servers and config.toml's servers are not affected.

``culm run`` and the Python API (in-process, the operator's own) are not limited.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from culm.errors import InvalidFieldError
from culm.settings import Settings


def check_client_session(
    settings: Settings,
    *,
    workspace: str | None,
    mcp_servers: Mapping[str, Mapping[str, Any]] | None = None,
    prefix: str = "",
) -> None:
    """Raise InvalidFieldError (field ``{prefix}workspace`` or ``mcp_servers.<name>``) for what
    an API client may not ask for."""
    if workspace is not None:
        check_workspace(settings, workspace, field=f"{prefix}workspace")
    if settings.allow_session_mcp_commands:
        return
    for name, config in (mcp_servers or {}).items():
        if isinstance(config, Mapping) and "command" in config:
            raise InvalidFieldError(
                f"mcp_servers.{name}",
                "this server does not run MCP server commands for sessions (stdio); use a "
                "Streamable HTTP server (`url`), one of its configured servers, or ask its "
                "operator to set CULM_ALLOW_SESSION_MCP_COMMANDS=true",
            )


def check_workspace(settings: Settings, workspace: str, *, field: str = "workspace") -> None:
    roots = settings.allowed_workspace_roots
    try:
        path = Path(workspace).expanduser().resolve()
    except (OSError, ValueError, RuntimeError):
        return  # not a usable path at all: the engine says why
    if any(path == root or path.is_relative_to(root) for root in roots):
        return
    allowed = ", ".join(str(root) for root in roots)
    raise InvalidFieldError(
        field,
        f"{workspace!r} is outside the workspace roots this server allows ({allowed}; "
        "CULM_WORKSPACE_ROOTS adds more)",
    )
