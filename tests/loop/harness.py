"""A loop context built by hand for the loop's unit tests: the session, model and tools given,
and every event the loop emits kept in a list (no engine, no store); a summarizer model and a
compaction store for the context window's tests, and transcripts of tool rounds."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

from culm.domain.compaction import Compaction
from culm.domain.events import RunEvent, RunEventBase
from culm.domain.models import (
    AssistantMessage,
    Message,
    Session,
    ToolCall,
    ToolResultMessage,
    Usage,
    UserMessage,
)
from culm.loop.context import ContextSettings, LoopContext, LoopLimits
from culm.providers.base import Finish, Model, ModelRequest, StreamPart, TextDelta, UsageReport
from culm.providers.scripted import Script, ScriptedModel
from culm.tools.base import Tool

NO_MODEL = ScriptedModel("scripted:none", Script(turns=[]))


class Emitted(list[RunEventBase]):
    """The events a loop context emitted, in order."""

    def of(self, kind: str) -> list[Any]:
        return [event for event in self if event.type == kind]

    def emit(self, event: RunEventBase) -> RunEvent:
        self.append(event)
        return event  # type: ignore[return-value]  # the loop reads no stored fields back


async def _no_append(messages: Sequence[Message]) -> None:
    raise AssertionError("these tests append no messages")


def loop_context(
    tmp_path: Path,
    tools: Sequence[Tool] = (),
    *,
    model: Model = NO_MODEL,
    session: Session | None = None,
    **fields: Any,
) -> tuple[LoopContext, Emitted]:
    emitted = Emitted()
    ctx = LoopContext(
        session=session or Session(session_id="s", model=model.name, workspace=str(tmp_path)),
        model=model,
        tools={tool.name: tool for tool in tools},
        workspace=tmp_path,
        limits=LoopLimits(),
        emit=emitted.emit,
        append_messages=_no_append,
        context=fields.pop("context", ContextSettings()),
        **fields,
    )
    return ctx, emitted


SUMMARY_USAGE = Usage(prompt_tokens=40, completion_tokens=5, total_tokens=45)


class Summarizer:
    """A model that answers each request with the next of ``texts`` (the last again when they
    run out) and reports ``usage``; ``fail`` raises it after the usage, ``hang`` never ends."""

    def __init__(
        self,
        *texts: str,
        name: str = "test:summarizer",
        usage: Usage | None = SUMMARY_USAGE,
        fail: BaseException | None = None,
        hang: asyncio.Event | None = None,
    ) -> None:
        self.texts = texts
        self._name = name
        self.usage = usage
        self.fail = fail
        self.hang = hang
        self.requests: list[ModelRequest] = []

    @property
    def name(self) -> str:
        return self._name

    @property
    def max_context_tokens(self) -> int | None:
        return None

    async def stream(self, request: ModelRequest) -> AsyncIterator[StreamPart]:
        self.requests.append(request)
        yield TextDelta(text=self.texts[min(len(self.requests), len(self.texts)) - 1])
        if self.usage is not None:
            yield UsageReport(usage=self.usage)
        if self.hang is not None:
            self.hang.set()
            await asyncio.Event().wait()
        if self.fail is not None:
            raise self.fail
        yield Finish(reason="stop")


class SavedCompactions:
    """The context settings' store: keeps each compaction saved, numbering it as a store does."""

    def __init__(self, first: Compaction | None = None) -> None:
        self.saved: list[Compaction] = []
        self.first = first

    async def load(self) -> Compaction | None:
        return self.first

    async def save(self, compaction: Compaction) -> Compaction:
        stored = compaction.model_copy(update={"seq": len(self.saved) + 1})
        self.saved.append(stored)
        return stored


def tool_round(n: int, output: str) -> list[Message]:
    call = ToolCall(id=f"c{n}", name="read_file", arguments="{}")
    return [
        AssistantMessage(tool_calls=(call,)),
        ToolResultMessage(tool_call_id=f"c{n}", tool_name="read_file", content=output),
    ]


def transcript(rounds: int, output: str = "x" * 4000) -> list[Message]:
    messages: list[Message] = [UserMessage(content="read the files")]
    for n in range(rounds):
        messages += tool_round(n, output)
    return messages
