"""What a session can be given, and a named agent: a preset of it.

:class:`SessionSettings` is every optional setting of a new session, once: the body of
``POST /v1/sessions`` and ``POST /v1/runs`` and an agent's definition are made of it, so a
setting added to sessions is one line here and every one of them takes it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime
from enum import StrEnum
from pathlib import PurePath
from typing import Annotated, Any, Literal

from annotated_types import Ge, Le
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
)

from culm.errors import InvalidFieldError
from culm.mcp.config import MCPServers

AGENT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")


def _a_number(value: Any) -> Any:
    """JSON numbers only: not ``true`` / ``false``, nor a number written as a string."""
    if isinstance(value, bool | str):
        raise ValueError("must be a number")
    return value


# Past what the database's columns hold (INTEGER, BIGINT), a 422, not a 500. A count's limit is
# the largest integer a JSON number holds exactly (2**53 - 1, within BIGINT): the schema states
# it as a number, and 2**63 - 1 written as one rounds up past the column.
MAX_INT32 = 2**31 - 1
MAX_COUNT = 2**53 - 1

Count = Annotated[int, Ge(1), Le(MAX_COUNT), BeforeValidator(_a_number)]
Amount = Annotated[float, Ge(0), BeforeValidator(_a_number)]
Pattern = Annotated[str, Field(min_length=1, max_length=200)]


class SessionSettings(BaseModel):
    """A session's settings; None (or left out) means "not given": the agent's, else the
    engine's default. Given ones override the agent's, a field as a whole."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(default=None, max_length=200, examples=["scripted:demo"])
    system_prompt: str | None = None
    tools: list[str] | None = Field(default=None, max_length=200, examples=[["read"]])
    workspace: str | None = Field(default=None, max_length=4096)
    metadata: dict[str, Any] | None = None
    mcp_servers: MCPServers | None = Field(
        default=None,
        max_length=50,
        description="The session's own MCP servers, as in config.toml's [mcp_servers.<name>]: "
        "`command`, `args`, `env` (stdio) or `url`, `headers` (Streamable HTTP), and `timeout`",
        examples=[{"time": {"command": "mcp-server-time", "args": ["--local-timezone", "UTC"]}}],
    )
    max_rounds: int | None = Field(
        default=None,
        ge=1,
        le=MAX_INT32,
        description="the most rounds a run may take (CULM_MAX_ROUNDS)",
    )
    tool_timeout: float | None = Field(
        default=None, gt=0, description="seconds a tool call may take (CULM_TOOL_TIMEOUT)"
    )
    require_approval: list[Pattern] | None = Field(
        default=None,
        max_length=200,
        description="tool names or fnmatch patterns whose calls wait for a person's approval",
        examples=[["bash", "write_*", "mcp__github__*"]],
    )
    input_timeout: float | None = Field(
        default=None, gt=0, description="seconds an input request may wait (null: no limit)"
    )
    input_timeout_action: Literal["deny", "error"] | None = Field(
        default=None,
        description="on expiry: `deny` the request (the default), or end the run `error` "
        "(`input_timeout`)",
    )
    max_cost_usd: Amount | None = Field(
        default=None,
        description="Each run's spend limit in USD (its sub-agents' included); a run past it (or "
        "past `max_tokens`) ends `error` with code `budget_exceeded` after that round",
        examples=[0.5],
    )
    max_tokens: Count | None = Field(default=None, examples=[200000])

    def given(self) -> dict[str, Any]:
        """The settings that are set (not None), as keywords of ``Engine.create_session``."""
        return {name: value for name, value in self if value is not None}


def session_settings(given: Mapping[str, Any]) -> SessionSettings:
    """Python keywords as :class:`SessionSettings` (a path may be a ``Path``, tools any
    sequence); a bad one is an :class:`~culm.errors.InvalidFieldError` naming it."""
    values = dict(given)
    if isinstance(values.get("workspace"), PurePath):
        values["workspace"] = str(values["workspace"])
    if values.get("tools") is not None and not isinstance(values["tools"], str):
        values["tools"] = list(values["tools"])
    try:
        return SessionSettings(**values)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        field = ".".join(str(part) for part in first["loc"]) or "settings"
        raise InvalidFieldError(field, first["msg"]) from None


def check_agent_name(name: str) -> str:
    if not AGENT_NAME.match(name):
        raise ValueError(
            f"invalid agent name {name!r}: 1-100 letters, digits, '_', '.' or '-', "
            "starting with a letter or digit"
        )
    return name


class AgentDefinition(SessionSettings):
    """A named agent: a description and the settings of the sessions made from it
    (``PUT /v1/agents/{name}``'s body, a ``[agents.NAME]`` table of config.toml)."""

    description: str | None = Field(default=None, max_length=2000)

    def settings(self) -> SessionSettings:
        return SessionSettings(**self.model_dump(include=set(SessionSettings.model_fields)))


class AgentSource(StrEnum):
    """Where an agent is defined: code (an app) and config (config.toml) are read-only."""

    CODE = "code"
    CONFIG = "config"
    API = "api"


class Agent(AgentDefinition):
    """An agent as ``GET /v1/agents`` shows it: its definition, name and where it comes from."""

    name: str
    source: AgentSource
    origin: str = Field(
        description="where it is defined: the app (`module:attr`), config.toml's path, or "
        "`database`",
        examples=["myagents.app:app"],
    )
    read_only: bool = Field(description="true unless defined through the API")
    created_at: datetime | None = None
    updated_at: datetime | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return check_agent_name(value)

    def definition(self) -> AgentDefinition:
        return AgentDefinition(**self.model_dump(include=set(AgentDefinition.model_fields)))


class AgentList(BaseModel):
    agents: list[Agent]
