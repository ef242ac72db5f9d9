"""MCP tool servers: their status, and a refresh (list the tools again, or reconnect)."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel

from culm.api.deps import EngineDep
from culm.api.openapi import errors
from culm.mcp.connection import ServerInfo

router = APIRouter(prefix="/v1/mcp", tags=["mcp"])

UNKNOWN = errors({404: "`not_found`: no MCP server has this name, or no session has `session_id`"})


class MCPServerList(BaseModel):
    servers: list[ServerInfo]


@router.get("/servers")
async def list_servers(engine: EngineDep) -> MCPServerList:
    """The servers of config.toml (also those not started yet), then the sessions' own servers
    that were used: transport, status (`stopped`, `starting`, `ready`, `error`), tools, last
    error."""
    return MCPServerList(servers=engine.mcp.servers())


@router.post("/servers/{name}/refresh", responses=UNKNOWN)
async def refresh_server(name: str, engine: EngineDep, session_id: str | None = None) -> ServerInfo:
    """List a ready server's tools again, or start (reconnect) one that is not ready, at once.
    Answers once done, with the server's status: a server that failed to start is `error`, with
    `last_error` saying why. With `session_id`, the server is that session's."""
    session = await engine.get_session(session_id) if session_id is not None else None
    return await engine.mcp.refresh(name, session)
