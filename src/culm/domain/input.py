"""Requests of runs for a person's input and their answers (``culm.input``), as stored in
``input_requests`` and as the API shows them."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

InputKind = Literal["approval", "question"]
# open: waits for a person; answered: by a person; expired: its input_timeout denied it;
# applied: the resumed run used its answer (the tool call's result is stored).
RequestStatus = Literal["open", "answered", "expired", "applied", "closed"]
# What became of a request, counted per tool by the metrics.
InputOutcome = Literal["approved", "denied", "answered", "declined", "timed_out"]


class InputAnswer(BaseModel):
    """A person's answer: ``approve`` (with an optional ``reason`` and edited ``arguments``)
    for an approval, ``answer`` for a question (``approve: false`` declines it)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    approve: bool | None = None
    reason: str | None = None
    arguments: dict[str, Any] | None = None
    answer: str | None = None
    timed_out: bool = False

    def problem(self, kind: InputKind) -> tuple[str, str] | None:
        """(field, what is wrong) unless this answers a request of ``kind``."""
        if kind == "approval":
            if self.answer is not None:
                return "answer", "only a question takes an answer (an approval: approve)"
            if self.approve is None:
                return "approve", "an approval is answered with approve: true or false"
        else:
            if self.answer is None and self.approve is not False:
                return "answer", "a question is answered with answer (or approve: false)"
            if self.arguments is not None:
                return "arguments", "only an approval takes edited arguments"
        if self.arguments is not None and self.approve is not True:
            return "arguments", "edited arguments come with approve: true"
        return None

    def outcome(self, kind: InputKind) -> InputOutcome:
        if self.timed_out:
            return "timed_out"
        if kind == "question":
            return "answered" if self.allowed else "declined"
        return "approved" if self.allowed else "denied"

    @property
    def allowed(self) -> bool:
        return self.approve is True or (self.approve is None and self.answer is not None)


class InputRequest(BaseModel):
    """One request of a run for a person's input (``GET /v1/runs/{run_id}/input``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    request_id: str
    run_id: str
    session_id: str
    kind: InputKind
    tool_call_id: str
    tool_name: str
    arguments: Any = None
    question: str | None = None
    choices: list[str] | None = None
    created_at: datetime
    expires_at: datetime | None = None
    status: RequestStatus = "open"
    answer: InputAnswer | None = None
    answered_at: datetime | None = None
    attempt: int = Field(default=1, exclude=True)  # the run's attempt that asked
