"""Message content on spans, as the OpenTelemetry GenAI conventions record it (opt-in).

Recorded only when ``OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT`` is ``true`` and the
span is being recorded (an exporter is configured); otherwise nothing is serialized at all.

- ``chat`` spans: ``gen_ai.system_instructions`` (a JSON array of parts),
  ``gen_ai.input.messages`` (the messages sent) and ``gen_ai.output.messages`` (the answer),
  JSON arrays of ``{"role", "parts"}`` messages (output ones with ``finish_reason``). Parts:
  ``text``, ``reasoning``, ``tool_call`` (``id``, ``name``, ``arguments``: the JSON the model
  sent, decoded, or its text when it is not JSON) and ``tool_call_response`` (``id``,
  ``response``: the tool's result text).
- ``execute_tool`` spans: ``gen_ai.tool.call.arguments`` (the model's JSON text, as sent) and
  ``gen_ai.tool.call.result`` (the result text the model gets back).

The forward proxy's ``chat`` spans get the same three attributes, read from the wire formats it
forwards (:mod:`culm.tracing.wire_content`, built on the part helpers at the end of this module).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Sequence
from typing import Any

from culm.domain.models import AssistantMessage, Message, ToolCall, ToolResultMessage

SYSTEM_INSTRUCTIONS = "gen_ai.system_instructions"
INPUT_MESSAGES = "gen_ai.input.messages"
OUTPUT_MESSAGES = "gen_ai.output.messages"
TOOL_ARGUMENTS = "gen_ai.tool.call.arguments"
TOOL_RESULT = "gen_ai.tool.call.result"

# The providers' finish reasons → the conventions' values; others pass through.
_FINISH_REASONS = {
    "tool_calls": "tool_call",
    "tool_use": "tool_call",
    "end_turn": "stop",
    "max_tokens": "length",
}


def request_attributes(system_prompt: str | None, messages: Sequence[Message]) -> dict[str, str]:
    """A chat span's input content: its system instructions and input messages."""
    attributes = {INPUT_MESSAGES: _dumps([_message(message) for message in messages])}
    if system_prompt:
        attributes[SYSTEM_INSTRUCTIONS] = _dumps([_text(system_prompt)])
    return attributes


def output_messages(message: AssistantMessage, finish_reason: str | None) -> str:
    """A chat span's ``gen_ai.output.messages``: the one answer."""
    reason = _FINISH_REASONS.get(finish_reason or "stop", finish_reason or "stop")
    return _dumps(
        [{"role": "assistant", "parts": _assistant_parts(message), "finish_reason": reason}]
    )


def _message(message: Message) -> dict[str, Any]:
    if isinstance(message, AssistantMessage):
        return {"role": "assistant", "parts": _assistant_parts(message)}
    if isinstance(message, ToolResultMessage):
        part = {
            "type": "tool_call_response",
            "id": message.tool_call_id,
            "response": message.content,
        }
        return {"role": "tool", "parts": [part]}
    return {"role": "user", "parts": [_text(message.content)]}


def _assistant_parts(message: AssistantMessage) -> list[dict[str, Any]]:
    parts: list[dict[str, Any]] = []
    if message.reasoning:
        parts.append({"type": "reasoning", "content": message.reasoning})
    if message.content:
        parts.append(_text(message.content))
    parts.extend(_tool_call(call) for call in message.tool_calls)
    return parts


def _tool_call(call: ToolCall) -> dict[str, Any]:
    try:
        arguments: Any = json.loads(call.arguments)
    except ValueError:
        arguments = call.arguments  # not JSON: recorded as the model sent it
    return {"type": "tool_call", "id": call.id, "name": call.name, "arguments": arguments}


def _text(content: str) -> dict[str, str]:
    return {"type": "text", "content": content}


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


# The parts, for recorders of other wire formats (culm.tracing.wire_content).


def finish_reason(reason: str) -> str:
    """A provider's finish reason as the conventions name it (others pass through)."""
    return _FINISH_REASONS.get(reason, reason)


def text_part(content: str) -> dict[str, str]:
    return _text(content)


def tool_call_part(call_id: str, name: str, arguments: Any) -> dict[str, Any]:
    """A ``tool_call`` part; ``arguments`` is the model's JSON text (decoded when it is JSON),
    or the arguments already decoded."""
    if isinstance(arguments, str):
        with contextlib.suppress(ValueError):  # not JSON (or cut short): kept as sent
            arguments = json.loads(arguments)
    return {"type": "tool_call", "id": call_id, "name": name, "arguments": arguments}


def dumps(value: Any) -> str:
    return _dumps(value)
