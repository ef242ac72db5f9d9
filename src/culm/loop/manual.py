"""Compacting a session outside a run (``engine.compact``): the same compaction a run makes,
on the stored transcript, with ``trigger: manual``."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

from culm.domain.compaction import Compaction
from culm.domain.events import RunEvent, RunEventBase
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
) -> Compaction:
    """Compact ``messages`` (the session's stored transcript) as far as it goes; the result
    carries the summarizer's usage. No run: no events (the result says it all)."""
    ctx = LoopContext(
        session=session,
        model=model,
        tools={tool.name: tool for tool in tools},
        workspace=Path(session.workspace),
        limits=LoopLimits(),
        emit=_discard,
        append_messages=_no_append,
        context=context,
    )
    window = await ContextWindow.open(ctx, LoopState(messages=list(messages)))
    return await window.compact("manual")


def _discard(event: RunEventBase) -> RunEvent:
    return event  # type: ignore[return-value]


async def _no_append(messages: Sequence[Message]) -> None:
    raise AssertionError("a compaction outside a run appends no messages")
