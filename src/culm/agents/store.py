"""Agents defined through the API, in the ``agents`` table of the engine's database."""

from __future__ import annotations

import json
from typing import Any

import sqlalchemy as sa

from culm.agents.models import Agent, AgentDefinition, AgentSource
from culm.domain.time import utc_now
from culm.storage.schema import agents
from culm.storage.sql import SqlStore

ORIGIN = "database"


class AgentStore:
    def __init__(self, sql: SqlStore) -> None:
        self._sql = sql

    async def list_agents(self) -> list[Agent]:
        query = agents.select().order_by(agents.c.name)
        return await self._sql.read(lambda conn: [_agent(row) for row in conn.execute(query)])

    async def get(self, name: str) -> Agent | None:
        query = agents.select().where(agents.c.name == name)
        row = await self._sql.read(lambda conn: conn.execute(query).first())
        return None if row is None else _agent(row)

    async def put(self, name: str, definition: AgentDefinition) -> tuple[Agent, bool]:
        """Create or replace; the agent, and whether it is new."""
        body = definition.model_dump(mode="json", exclude_none=True)
        now = utc_now()

        def transaction(conn: sa.Connection) -> tuple[Agent, bool]:
            where = agents.c.name == name
            updated = conn.execute(
                agents.update().where(where).values(definition=body, updated_at=now)
            )
            created = updated.rowcount == 0
            if created:
                conn.execute(
                    agents.insert().values(
                        name=name, definition=body, created_at=now, updated_at=now
                    )
                )
            return _agent(conn.execute(agents.select().where(where)).one()), created

        return await self._sql.write(transaction)

    async def delete(self, name: str) -> bool:
        def transaction(conn: sa.Connection) -> bool:
            return conn.execute(agents.delete().where(agents.c.name == name)).rowcount > 0

        return await self._sql.write(transaction)


def _agent(row: sa.Row[Any]) -> Agent:
    definition = row.definition
    if isinstance(definition, str):
        definition = json.loads(definition)
    return Agent(
        **definition,
        name=row.name,
        source=AgentSource.API,
        origin=ORIGIN,
        read_only=False,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )
