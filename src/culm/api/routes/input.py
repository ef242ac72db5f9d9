"""People in the loop: a run's open input requests, and answering one."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, Field

from culm.api.deps import EngineDep
from culm.api.openapi import Responses, errors
from culm.api.schemas import ErrorDetail, _Request
from culm.domain.input import InputRequest

router = APIRouter(prefix="/v1/runs", tags=["runs"])

UNKNOWN = "`not_found`: no run has this id, or the run has no request with this `request_id`"
INVALID = "`invalid_request`: the answer does not fit the request (`field` says what)"


class InputRequestList(BaseModel):
    requests: list[InputRequest] = Field(
        description="open requests, oldest first: the run's own and those of its sub-agent runs "
        "(`run_id` says whose: a child's request is answered on the child's run id)"
    )


class ApprovalAnswer(_Request):
    """Approve (with edited ``arguments``, if any) or deny (with a ``reason``) a tool call; or,
    with ``approve: false``, decline a question."""

    request_id: str = Field(max_length=36)
    approve: bool
    reason: str | None = Field(default=None, max_length=10_000)
    arguments: dict[str, Any] | None = None


class QuestionAnswer(_Request):
    """Answer a question the model asked (``ask_user``)."""

    request_id: str = Field(max_length=36)
    answer: str = Field(max_length=100_000)


class InputConflictDetail(ErrorDetail):
    request: InputRequest = Field(description="the request as it stands (its first answer)")


class InputConflict(BaseModel):
    error: InputConflictDetail


CONFLICT: Responses = {
    409: {
        "model": InputConflict,
        "description": "`input_conflict`: the request was answered already, differently "
        "(`request.answer` is the first answer), or its run is not waiting",
    }
}


@router.get("/{run_id}/input", responses=errors({404: "`not_found`: no run has this id"}))
async def pending_input(run_id: str, engine: EngineDep) -> InputRequestList:
    """The run's open input requests (and its sub-agent runs'), oldest first."""
    return InputRequestList(requests=await engine.pending_input(run_id))


@router.post("/{run_id}/input", responses={**errors({404: UNKNOWN, 422: INVALID}), **CONFLICT})
async def answer_input(
    run_id: str, body: ApprovalAnswer | QuestionAnswer, engine: EngineDep
) -> InputRequest:
    """Answer one of the run's input requests. Idempotent: the same answer again returns the
    request; a different one is 409 with the first. Once no request of the run is open, the run
    resumes (on whichever worker claims it)."""
    if isinstance(body, QuestionAnswer):
        return await engine.respond(run_id, body.request_id, answer=body.answer)
    return await engine.respond(
        run_id,
        body.request_id,
        approve=body.approve,
        reason=body.reason,
        arguments=body.arguments,
    )
