"""A stored compaction: what the model's view of a session's transcript is, as of it.

A compaction never changes the stored messages. It records the cumulative state of the view:
messages ``[0, summary_end)`` are stood for by ``summary`` (which folds in every earlier
summary), except the user turns listed in ``kept`` that stay verbatim after it; and the tool
results listed in ``elided`` (message index -> (head chars, tail chars)) are shown shortened.
The latest compaction of a session is its view; earlier ones are history.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from culm.domain.models import Usage
from culm.domain.time import utc_now

CompactionTrigger = Literal["auto", "overflow", "manual"]


class Compaction(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    session_id: str
    seq: int = 0  # 1, 2, 3 … per session, set by the store
    run_id: str | None = None
    trigger: CompactionTrigger
    strategy: str  # "elide", "summarize", "elide+summarize" or "none"
    summary: str | None = None
    summary_end: int = 0
    kept: tuple[int, ...] = ()
    elided: dict[int, tuple[int, int]] = Field(default_factory=dict)
    message_count: int  # how many stored messages there were when it was made
    messages_compacted: int = 0
    tokens_before: int
    tokens_after: int
    summary_model: str | None = None
    summary_usage: Usage = Field(default_factory=Usage)
    created_at: datetime = Field(default_factory=utc_now)
