"""A loop context without an engine, for unit tests of the driver, the model call and the tool
calls: a model that plays a list of attempts, an ``emit`` that keeps the events, a clock the
test moves."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from culm.domain.events import RunEvent, RunEventBase
from culm.domain.models import Message, Session
from culm.domain.time import utc_now
from culm.loop.context import LoopContext, LoopLimits
from culm.providers.base import ModelRequest, StreamPart
from culm.tools.base import Tool

# An attempt: the parts to stream, then (optionally) the error to raise after them.
Attempt = tuple[Sequence[StreamPart], BaseException | None]


class PlayedModel:
    """Plays one attempt per call of ``stream``, in order, and keeps the requests."""

    max_context_tokens = None

    def __init__(self, *attempts: Attempt, name: str = "fake:played") -> None:
        self.name = name
        self.attempts = list(attempts)
        self.requests: list[ModelRequest] = []

    async def stream(self, request: ModelRequest) -> AsyncIterator[StreamPart]:
        self.requests.append(request)
        parts, error = self.attempts.pop(0)
        for part in parts:
            yield part
        if error is not None:
            raise error


class Clock:
    """A ``time.monotonic`` that only moves when the test says so."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@dataclass
class Harness:
    """Keeps what the loop emits and stores."""

    events: list[RunEventBase] = field(default_factory=list)
    writes: list[list[Message]] = field(default_factory=list)

    def emit(self, payload: RunEventBase) -> RunEvent:
        self.events.append(payload)
        return payload.stamped(seq=len(self.events), run_id="r", session_id="s", ts=utc_now())

    async def append(self, messages: Sequence[Message]) -> None:
        self.writes.append(list(messages))

    def of(self, kind: type[Any]) -> list[Any]:
        return [event for event in self.events if isinstance(event, kind)]

    def context(
        self,
        model: Any,
        workspace: Path,
        *,
        tools: Sequence[Tool] = (),
        system_prompt: str | None = None,
        **kwargs: Any,
    ) -> LoopContext:
        limits: LoopLimits = kwargs.pop("limits", LoopLimits())
        return LoopContext(
            session=Session(
                session_id="s",
                model=model.name,
                workspace=str(workspace),
                system_prompt=system_prompt,
            ),
            model=model,
            tools={tool.name: tool for tool in tools},
            workspace=workspace,
            limits=limits,
            emit=self.emit,
            append_messages=self.append,
            **kwargs,
        )


def price_per_token(model: str, usage: Any) -> float | None:
    """$0.001 a token for the played model, unpriced for any other name."""
    return usage.total_tokens / 1000 if model == "fake:played" else None
