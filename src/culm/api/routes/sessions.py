"""Sessions, their messages and their runs."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request, Response
from sse_starlette import EventSourceResponse

from culm.agents.models import SessionSettings
from culm.api.confine import check_client_session
from culm.api.deps import EngineDep, ShutdownDep
from culm.api.openapi import errors, event_stream
from culm.api.schemas import (
    CreateRun,
    CreateSession,
    MessageList,
    RunList,
    SessionList,
    TraceParent,
)
from culm.api.streaming import one_by_one, sse_response
from culm.domain.models import Run, Session
from culm.errors import ConfigError, InvalidFieldError
from culm.mcp.config import SESSION_ORIGIN, parse_servers
from culm.scheduler.runs import check_names
from culm.services import Engine

router = APIRouter(prefix="/v1/sessions", tags=["sessions"])

Limit = Annotated[int, Query(ge=1, le=1000)]

UNKNOWN = errors({404: "`not_found`: no session has this id"})
UNKNOWN_NAME = "`invalid_request`: a field is invalid (`field` names it), or an unknown model"
BUSY = "`session_busy`: the session has an active run (`run_id` says which)"
ALREADY_RUNNING = (
    "`already_running`: the session has an active run (`run_id` says which) and `multitask` "
    "is `reject`"
)


@router.post("", status_code=201, responses=errors({422: f"{UNKNOWN_NAME}, tool or workspace"}))
async def create_session(body: CreateSession, engine: EngineDep) -> Session:
    check_session(engine, body)
    return await engine.create_session(**body.model_dump())


def check_session(engine: Engine, body: CreateSession) -> None:
    """Refuse with 422 naming the field what this server allows no API client (confine.py), then
    what the engine would refuse of a new session (of the fields given; the agent's own are
    checked when the session is made)."""
    check_settings(engine, body)


def check_settings(engine: Engine, body: SessionSettings) -> None:
    """:func:`check_session` for settings: a session's, or an agent's definition."""
    check_client_session(engine.settings, workspace=body.workspace, mcp_servers=body.mcp_servers)
    try:
        parse_servers(body.mcp_servers, SESSION_ORIGIN)
    except ConfigError as exc:
        raise InvalidFieldError("mcp_servers", str(exc)) from None
    check_names(
        engine,
        model=body.model,
        tools=body.tools or (),
        workspace=body.workspace,
        mcp_servers=body.mcp_servers,
    )


@router.get("")
async def list_sessions(engine: EngineDep, limit: Limit = 100) -> SessionList:
    return SessionList(sessions=await engine.list_sessions(limit=limit))


@router.get("/{session_id}", responses=UNKNOWN)
async def get_session(session_id: str, engine: EngineDep) -> Session:
    return await engine.get_session(session_id)


@router.delete("/{session_id}", status_code=204, responses={**UNKNOWN, **errors({409: BUSY})})
async def delete_session(session_id: str, engine: EngineDep) -> Response:
    await engine.delete_session(session_id)
    return Response(status_code=204)


@router.get("/{session_id}/messages", responses=UNKNOWN)
async def get_messages(
    session_id: str, engine: EngineDep, view: Literal["stored", "model"] = "stored"
) -> MessageList:
    """Every stored message (`view=stored`, the originals), or what the model is sent
    (`view=model`: the transcript as the session's latest compaction shows it)."""
    return MessageList(messages=await engine.get_messages(session_id, view=view))


@router.post(
    "/{session_id}/runs",
    status_code=202,
    responses={**UNKNOWN, **errors({409: ALREADY_RUNNING, 422: UNKNOWN_NAME})},
)
async def create_run(
    session_id: str, body: CreateRun, engine: EngineDep, traceparent: TraceParent = None
) -> Run:
    if body.model is not None:
        check_names(engine, model=body.model)
    return await engine.start_run(
        session_id,
        body.message,
        model=body.model,
        multitask=body.multitask,
        max_cost_usd=body.max_cost_usd,
        max_tokens=body.max_tokens,
        traceparent=traceparent,
    )


@router.get("/{session_id}/runs", responses=UNKNOWN)
async def list_session_runs(session_id: str, engine: EngineDep, limit: Limit = 100) -> RunList:
    await engine.get_session(session_id)
    return RunList(runs=await engine.list_runs(session_id=session_id, limit=limit))


@router.get(
    "/{session_id}/events",
    response_class=EventSourceResponse,
    responses={
        **event_stream("the session's run events (SSE): its replay cache, then live"),
        **UNKNOWN,
    },
)
async def session_events(
    session_id: str, request: Request, engine: EngineDep, shutdown: ShutdownDep
) -> EventSourceResponse:
    """The replay cache of the session's active (or last) run, then every live event."""
    await engine.get_session(session_id)
    return sse_response(request, one_by_one(engine.subscribe_session(session_id)), shutdown)
