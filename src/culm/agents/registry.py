"""The named agents of an engine, from three sources, and what a session made from one gets.

An agent's name is looked up in code (the apps' ``app.agent(…)``), then config.toml
(``[agents.NAME]``), then the database (``PUT /v1/agents/{name}``). Code and config ones are
read-only (change them where they are defined); a name taken by one of them cannot be stored.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from culm.agents.models import Agent, AgentDefinition, AgentSource, check_agent_name
from culm.agents.store import AgentStore
from culm.errors import InvalidFieldError, NotFoundError, ReadOnlyError

if TYPE_CHECKING:
    from culm.apps.app import App
    from culm.settings import Settings


class Agents:
    """Named agents: ``code`` maps name → (definition, origin); so does ``config``."""

    def __init__(
        self,
        code: Mapping[str, tuple[AgentDefinition, str]],
        config: Mapping[str, AgentDefinition],
        config_origin: str,
    ) -> None:
        self._fixed: dict[str, Agent] = {}
        for name, definition in config.items():
            self._fixed[name] = _fixed(name, definition, AgentSource.CONFIG, config_origin)
        for name, (definition, origin) in code.items():  # code wins over config
            self._fixed[name] = _fixed(name, definition, AgentSource.CODE, origin)
        self._store: AgentStore | None = None

    @classmethod
    def of(cls, apps: Iterable[App], settings: Settings) -> Agents:
        """The agents of ``apps`` (code) and of ``settings`` (config.toml)."""
        code = {name: (d, app.name) for app in apps for name, d in app.agents.items()}
        return cls(code, settings.agents, str(settings.config_file))

    def bind(self, store: AgentStore | None) -> None:
        """The database's agents (None: an engine on another store has only fixed ones)."""
        self._store = store

    async def list(self) -> list[Agent]:
        stored = await self._store.list_agents() if self._store is not None else []
        found = {agent.name: agent for agent in stored}
        found.update(self._fixed)
        return [found[name] for name in sorted(found)]

    async def get(self, name: str) -> Agent:
        agent = self._fixed.get(name)
        if agent is None and self._store is not None:
            agent = await self._store.get(name)
        if agent is None:
            raise NotFoundError("agent", name)
        return agent

    async def put(self, name: str, definition: AgentDefinition) -> tuple[Agent, bool]:
        """Create or replace an API agent; the agent and whether it is new."""
        try:
            check_agent_name(name)
        except ValueError as exc:
            raise InvalidFieldError("name", str(exc)) from None
        self._writable(name)
        return await self._require_store().put(name, definition)

    async def delete(self, name: str) -> None:
        self._writable(name)
        if not await self._require_store().delete(name):
            raise NotFoundError("agent", name)

    def _writable(self, name: str) -> None:
        fixed = self._fixed.get(name)
        if fixed is not None:
            raise ReadOnlyError(
                f"agent {name!r} is defined in {fixed.source.value} ({fixed.origin}) and is "
                "read-only: change it there"
            )

    def _require_store(self) -> AgentStore:
        if self._store is None:
            raise ReadOnlyError("agents can be stored only in culm's SQL store")
        return self._store

    async def session_fields(self, name: str | None, given: Mapping[str, Any]) -> dict[str, Any]:
        """The settings of a session made from agent ``name`` (None: none) with ``given``:
        the agent's, each replaced by a given one that is not None."""
        fields: dict[str, Any] = {}
        if name is not None:
            try:
                agent = await self.get(name)
            except NotFoundError:
                raise InvalidFieldError("agent", f"unknown agent {name!r}") from None
            fields = agent.settings().given()
        fields.update({key: value for key, value in given.items() if value is not None})
        return fields


def _fixed(name: str, definition: AgentDefinition, source: AgentSource, origin: str) -> Agent:
    return Agent(
        **definition.model_dump(),
        name=name,
        source=source,
        origin=origin,
        read_only=True,
    )
