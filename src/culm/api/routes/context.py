"""A session's context window: compact it now, and the compactions made so far."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel

from culm.api.deps import EngineDep
from culm.api.openapi import errors
from culm.domain.compaction import Compaction

router = APIRouter(prefix="/v1/sessions", tags=["sessions"])

BUSY = (
    "`session_busy`: the session has an active run (`run_id` says which; it compacts itself), "
    "or a run came and went while the compaction was made (`run_id`; nothing stored: compact "
    "again)"
)
MODEL = "the summarizer's model call failed (`code` says how: `model_http_error` …)"


class CompactionList(BaseModel):
    compactions: list[Compaction]


@router.post(
    "/{session_id}/compact",
    responses=errors({404: "`not_found`: no session has this id", 409: BUSY, 502: MODEL}),
)
async def compact_session(session_id: str, engine: EngineDep) -> Compaction:
    """Compact the session's context now (`trigger: manual`): old tool outputs elided and the
    conversation before its last rounds summarized. The stored messages stay as they are;
    `GET …/messages?view=model` shows what the model is sent from now on."""
    return await engine.compact(session_id)


@router.get(
    "/{session_id}/compactions", responses=errors({404: "`not_found`: no session has this id"})
)
async def list_compactions(session_id: str, engine: EngineDep) -> CompactionList:
    """The session's compactions, oldest first (the last one is its model view)."""
    return CompactionList(compactions=await engine.list_compactions(session_id))
