"""What an MCP server is: how to reach it, and how long its tools may take.

In ``$CULM_HOME/config.toml``::

    [mcp_servers.time]                      # stdio: culm starts the command
    command = "mcp-server-time"             # on PATH, or installed beside culm
    args = ["--local-timezone", "UTC"]
    env = { TZ = "UTC" }                    # added to a minimal environment (PATH, HOME …)
    timeout = 30                            # seconds per call (default: CULM_TOOL_TIMEOUT)

    [mcp_servers.docs]                      # Streamable HTTP
    url = "https://mcp.example.com/mcp"
    headers = { Authorization = "Bearer …" }

A session may bring its own servers in the same shape (``mcp_servers`` when it is created); one
of them with the name of a configured server replaces it for that session.

Every mistake is a :class:`~culm.errors.ConfigError` that names the server and the field.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, WithJsonSchema, field_validator

from culm.errors import ConfigError

SERVER_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]|_(?!_))*")
"""A server name: letters, digits, ``-`` and single ``_`` (``__`` separates it from the tool)."""
MAX_SERVER_NAME = 32
SETTINGS_ORIGIN = "mcp_servers (config.toml or CULM_MCP_SERVERS)"
SESSION_ORIGIN = "the session's mcp_servers"

Transport = Literal["stdio", "http"]


class _Server(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    timeout: float | None = Field(default=None, gt=0)
    """Seconds one call of this server's tools may take (default: the engine's tool timeout)."""


class StdioServer(_Server):
    """A server that culm starts as a child process and talks to over stdin/stdout."""

    command: str = Field(min_length=1)
    args: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)

    @property
    def transport(self) -> Transport:
        return "stdio"

    @property
    def executable(self) -> str:
        """The program to start: ``command``, or, when it is a bare name that is not on ``PATH``,
        the program of that name installed beside culm's Python (a server installed in culm's
        virtualenv runs although that virtualenv is not activated)."""
        if os.sep in self.command or shutil.which(self.command) is not None:
            return self.command
        beside = Path(sys.executable).parent / self.command
        return str(beside) if os.access(beside, os.X_OK) and beside.is_file() else self.command


class HttpServer(_Server):
    """A server that culm reaches over Streamable HTTP."""

    url: str
    headers: dict[str, str] = Field(default_factory=dict)

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not re.fullmatch(r"https?://[^\s/]+\S*", value):
            raise ValueError("must be an http:// or https:// URL")
        return value

    @property
    def transport(self) -> Transport:
        return "http"


ServerConfig = StdioServer | HttpServer


def parse_servers(raw: Any, origin: str) -> dict[str, ServerConfig]:
    """Validate a ``mcp_servers`` table: ``{name: {command…} | {url…}}``. ``origin`` says where
    it came from, for the error message."""
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{origin}: expected a table of servers by name, got {_kind(raw)}")
    return {
        _check_name(name, origin): parse_server(name, value, origin) for name, value in raw.items()
    }


def parse_server(name: str, raw: Any, origin: str) -> ServerConfig:
    """One server's table, as a :data:`ServerConfig`."""
    where = f"MCP server {name!r} in {origin}"
    if isinstance(raw, StdioServer | HttpServer):
        return raw
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}: expected a table, got {_kind(raw)}")
    has_command, has_url = "command" in raw, "url" in raw
    if has_command and has_url:
        raise ConfigError(f"{where}: set either command (stdio) or url (Streamable HTTP), not both")
    if not has_command and not has_url:
        raise ConfigError(f"{where}: set command (stdio) or url (Streamable HTTP)")
    model: type[ServerConfig] = StdioServer if has_command else HttpServer
    try:
        return model.model_validate(dict(raw))
    except ValidationError as exc:
        raise ConfigError(f"{where}: {_first_error(exc, model)}") from None


def dump_servers(servers: Mapping[str, ServerConfig]) -> dict[str, dict[str, Any]]:
    """The JSON form of validated servers (as stored in a session's metadata)."""
    return {name: server.model_dump(mode="json") for name, server in servers.items()}


def _check_name(name: Any, origin: str) -> str:
    if not isinstance(name, str) or not SERVER_NAME.fullmatch(name) or name.endswith("_"):
        raise ConfigError(
            f"{origin}: invalid MCP server name {name!r} (letters, digits, '-' and single '_'; "
            "it starts with a letter or digit and does not end with '_')"
        )
    if len(name) > MAX_SERVER_NAME:
        raise ConfigError(
            f"{origin}: MCP server name {name!r} is longer than {MAX_SERVER_NAME} characters"
        )
    return name


def _first_error(exc: ValidationError, model: type[ServerConfig]) -> str:
    first = exc.errors()[0]
    field = ".".join(str(part) for part in first["loc"]) or "?"
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        known = ", ".join(model.model_fields)
        message = f"unknown field (a {_describe(model)} server takes: {known})"
    more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return f"{field}: {message}{more}"


def _describe(model: type[ServerConfig]) -> str:
    return "stdio" if model is StdioServer else "Streamable HTTP"


def _kind(value: Any) -> str:
    return f"{type(value).__name__} {value!r}"


def _mcp_servers_schema() -> dict[str, Any]:
    """What a session's ``mcp_servers`` may be, exactly as the engine checks it (the Python
    type stays a plain mapping: the engine validates it, naming the server and the field)."""
    stdio = StdioServer.model_json_schema()
    http = HttpServer.model_json_schema()
    http["properties"]["url"]["pattern"] = r"^https?://[^\s/]+\S*$"
    return {
        "type": "object",
        "propertyNames": {"pattern": MCP_SERVER_NAME, "maxLength": MAX_SERVER_NAME},
        "additionalProperties": {"oneOf": [stdio, http]},
    }


# Letters, digits, '-', and '_' only before a letter or digit (a bit narrower than the engine's
# rule, which also allows "a_-b"; what the schema allows, the engine takes).
MCP_SERVER_NAME = "^[A-Za-z0-9](?:-|_?[A-Za-z0-9])*$"
MCPServers = Annotated[dict[str, dict[str, Any]], WithJsonSchema(_mcp_servers_schema())]
