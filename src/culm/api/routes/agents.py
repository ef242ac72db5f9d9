"""Named agents: list, get, and create/replace/delete those defined through the API (code- and
config-defined ones are read-only: 409 ``read_only``)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Response

from culm.agents.models import AGENT_NAME, Agent, AgentDefinition, AgentList
from culm.api.deps import EngineDep
from culm.api.openapi import errors
from culm.api.routes.sessions import check_settings

router = APIRouter(prefix="/v1/agents", tags=["agents"])

UNKNOWN = errors({404: "`not_found`: no agent has this name"})
READ_ONLY = errors(
    {409: "`read_only`: the agent is defined in code (an app) or config.toml; change it there"}
)
INVALID = errors({422: "`invalid_request`: a field is invalid (`field` names it)"})
NO_ROUTE = errors({404: "`not_found`: no such route (a name holding `/`); PUT creates agents"})
CREATED: dict[int | str, dict[str, Any]] = {
    201: {"model": Agent, "description": "Created (200: replaced)"}
}


@router.get("")
async def list_agents(engine: EngineDep) -> AgentList:
    """Every named agent, by name, with where it is defined (`source`, `origin`)."""
    return AgentList(agents=await engine.agents.list())


@router.get("/{name}", responses=UNKNOWN)
async def get_agent(name: str, engine: EngineDep) -> Agent:
    return await engine.agents.get(name)


@router.put("/{name}", responses={**CREATED, **NO_ROUTE, **READ_ONLY, **INVALID})
async def put_agent(
    name: Annotated[str, Path(pattern=AGENT_NAME.pattern, max_length=100)],
    body: AgentDefinition,
    engine: EngineDep,
    response: Response,
) -> Agent:
    """Create (201) or replace (200) an agent stored in the database. Its model, tools and
    workspace are checked as a new session's would be."""
    check_settings(engine, body)
    agent, created = await engine.agents.put(name, body)
    response.status_code = 201 if created else 200
    return agent


@router.delete("/{name}", status_code=204, responses={**UNKNOWN, **READ_ONLY})
async def delete_agent(name: str, engine: EngineDep) -> Response:
    await engine.agents.delete(name)
    return Response(status_code=204)
