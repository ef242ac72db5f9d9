"""Build the model request for a round (pure)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from culm.domain.models import AssistantMessage, Message, ToolResultMessage
from culm.providers.base import ModelRequest, ToolSpec

INTERRUPTED_RESULT = "error: no result was recorded for this tool call (the run was interrupted)"


def build_request(
    system_prompt: str | None, messages: Sequence[Message], tools: Iterable[ToolSpec]
) -> ModelRequest:
    return ModelRequest(
        system_prompt=system_prompt, messages=repair_transcript(messages), tools=tuple(tools)
    )


def repair_transcript(messages: Sequence[Message]) -> list[Message]:
    """Give every tool call a result, as providers require.

    A run interrupted between a model's tool calls and their results (a crash, then a re-queue)
    leaves calls without results; they get an error result saying so.
    """
    repaired: list[Message] = []
    open_calls: dict[str, str] = {}
    for message in messages:
        if isinstance(message, ToolResultMessage):
            open_calls.pop(message.tool_call_id, None)
        else:
            repaired.extend(_interrupted(open_calls))
            open_calls = {}
        repaired.append(message)
        if isinstance(message, AssistantMessage):
            open_calls = {call.id: call.name for call in message.tool_calls}
    repaired.extend(_interrupted(open_calls))
    return repaired


def _interrupted(open_calls: dict[str, str]) -> list[Message]:
    return [
        ToolResultMessage(
            tool_call_id=call_id, tool_name=name, content=INTERRUPTED_RESULT, is_error=True
        )
        for call_id, name in open_calls.items()
    ]
