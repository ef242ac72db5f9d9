"""Compacting a session outside a run (``engine.compact``): the same compaction a run makes,
on the stored transcript, with ``trigger: manual``.

With no run there is no event stream: the summarizer's ``round_completed`` (its usage, marked
``compaction``) goes to ``report`` instead, which the engine turns into a metrics round of the
session (the metrics see a run's summarizer calls through its stored events)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from culm.domain.compaction import Compaction
from culm.domain.events import RoundCompleted, RunEvent, RunEventBase
from culm.domain.models import Message, Session
from culm.loop.context import ContextSettings, LoopContext, LoopLimits, LoopState
from culm.loop.window import ContextWindow
from culm.providers.base import Model
from culm.tools.base import Tool


async def compact_session(
    session: Session,
    model: Model,
    tools: Iterable[Tool],
    context: ContextSettings,
    messages: Sequence[Message],
    report: Callable[[RoundCompleted], object],
) -> Compaction:
    """Compact ``messages`` (the session's stored transcript) as far as it goes; the result
    carries the summarizer's usage, and each summarizer call (also one that failed or was
    cancelled) is handed to ``report``. No run: no other events (the result says it all)."""

    def emit(event: RunEventBase) -> RunEvent:
        if isinstance(event, RoundCompleted):
            report(event)
        return event  # type: ignore[return-value]  # nobody reads it back

    ctx = LoopContext(
        session=session,
        model=model,
        tools={tool.name: tool for tool in tools},
        workspace=Path(session.workspace),
        limits=LoopLimits(),
        emit=emit,
        append_messages=_no_append,
        context=context,
    )
    window = await ContextWindow.open(ctx, LoopState(messages=list(messages)))
    return await window.compact("manual")


async def _no_append(messages: Sequence[Message]) -> None:
    raise AssertionError("a compaction outside a run appends no messages")
