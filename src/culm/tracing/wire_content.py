"""Message content of a proxied request's span, read from the wire format it was forwarded in.

The forward proxy records the same content as a run's ``chat`` spans (:mod:`culm.tracing.content`),
only when capture is asked for and the span is recording:

- input (:func:`request_attributes`), from the request body: system and developer messages (and
  Anthropic's ``system``, the Responses ``instructions``) → ``gen_ai.system_instructions``; the
  other messages → ``gen_ai.input.messages``, tool calls and tool results as their parts;
- output (an :class:`OutputRecorder`), from the answer: a whole body, or the events of a stream as
  they pass (text, reasoning and tool-call deltas, the finish or stop reason). A stream that breaks
  off records what arrived, with ``finish_reason`` ``error`` when none came.

Images, files, audio and any other kind of part are recorded as ``{"type": <its wire type>}``,
never their bytes.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Final

from culm.tracing.content import (
    INPUT_MESSAGES,
    SYSTEM_INSTRUCTIONS,
    dumps,
    finish_reason,
    text_part,
    tool_call_part,
)

Part = dict[str, Any]
Message = dict[str, Any]
_SYSTEM_ROLES: Final = frozenset({"system", "developer"})


def request_attributes(wire_format: str, payload: dict[str, Any]) -> dict[str, str]:
    """A proxied request's input content (``wire_format``: the endpoint's, ``chat`` …)."""
    reader = _REQUESTS.get(wire_format)
    if reader is None:
        return {}
    system, messages = reader(payload)
    attributes = {INPUT_MESSAGES: dumps(messages)}
    if system:
        attributes[SYSTEM_INSTRUCTIONS] = dumps(system)
    return attributes


class OutputRecorder(ABC):
    """Reads the answer of one proxied request: a whole body, or a stream event by event."""

    @abstractmethod
    def body(self, payload: dict[str, Any]) -> None: ...

    @abstractmethod
    def event(self, data: bytes) -> None:
        """One event's ``data`` (not always JSON: ``[DONE]``, a cut event)."""

    @abstractmethod
    def messages(self) -> list[Message]: ...

    def output(self) -> str | None:
        """``gen_ai.output.messages``, or None when nothing was answered."""
        messages = self.messages()
        return dumps(messages) if messages else None


def output_recorder(wire_format: str) -> OutputRecorder | None:
    recorder = _RECORDERS.get(wire_format)
    return recorder() if recorder is not None else None


# The parts of an answer as it arrives


@dataclass(slots=True)
class _Pending:
    kind: str  # text, reasoning, tool_call, or another type (recorded as a placeholder)
    chunks: list[str] = field(default_factory=list)
    call_id: str = ""
    name: str = ""
    arguments: Any = ""  # a tool call's decoded input, when no JSON text comes

    def render(self) -> Part:
        text = "".join(self.chunks)
        if self.kind == "text":
            return text_part(text)
        if self.kind == "reasoning":
            return {"type": "reasoning", "content": text}
        if self.kind == "tool_call":
            return tool_call_part(self.call_id, self.name, text or self.arguments)
        return {"type": self.kind}


@dataclass(slots=True)
class _Draft:
    """One answer message as it arrives: its parts by key, in the order they started."""

    parts: dict[Any, _Pending] = field(default_factory=dict)
    finish: str | None = None

    def part(self, key: Any, kind: str) -> _Pending:
        found = self.parts.get(key)
        if found is None:
            found = self.parts[key] = _Pending(kind)
        return found

    def message(self) -> Message:
        return _answer([part.render() for part in self.parts.values()], self.finish)


def _answer(parts: list[Part], reason: str | None) -> Message:
    return {
        "role": "assistant",
        "parts": parts,
        "finish_reason": finish_reason(reason) if reason else "error",
    }


def _json(data: bytes) -> dict[str, Any] | None:
    try:
        payload = json.loads(data)
    except ValueError:
        return None
    return payload if isinstance(payload, dict) else None


def _dicts(value: Any) -> Iterator[dict[str, Any]]:
    if isinstance(value, list):
        yield from (item for item in value if isinstance(item, dict))


def _str(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _placeholder(block: dict[str, Any]) -> Part:
    return {"type": _str(block.get("type")) or "unknown"}


def _text_of(content: Any) -> str:
    """A tool result's text: a string, or the text blocks of a list joined."""
    if isinstance(content, str):
        return content
    return "".join(_str(block.get("text")) for block in _dicts(content))


def _tool_response(call_id: Any, content: Any) -> Part:
    return {"type": "tool_call_response", "id": _str(call_id), "response": _text_of(content)}


# OpenAI Chat Completions


def _chat_parts(content: Any) -> list[Part]:
    if isinstance(content, str):
        return [text_part(content)] if content else []
    parts: list[Part] = []
    for block in _dicts(content):
        kind = block.get("type")
        if kind in ("text", "refusal"):
            parts.append(text_part(_str(block.get(kind))))
        else:
            parts.append(_placeholder(block))
    return parts


def _chat_tool_calls(calls: Any) -> list[Part]:
    parts = []
    for call in _dicts(calls):
        function = call.get("function")
        function = function if isinstance(function, dict) else {}
        parts.append(
            tool_call_part(
                _str(call.get("id")), _str(function.get("name")), _str(function.get("arguments"))
            )
        )
    return parts


def _chat_request(payload: dict[str, Any]) -> tuple[list[Part], list[Message]]:
    system: list[Part] = []
    messages: list[Message] = []
    for message in _dicts(payload.get("messages")):
        role = _str(message.get("role"))
        if role in _SYSTEM_ROLES:
            system.extend(_chat_parts(message.get("content")))
        elif role == "tool":
            part = _tool_response(message.get("tool_call_id"), message.get("content"))
            messages.append({"role": "tool", "parts": [part]})
        else:
            parts = _chat_parts(message.get("content"))
            parts.extend(_chat_tool_calls(message.get("tool_calls")))
            messages.append({"role": role, "parts": parts})
    return system, messages


class _ChatOutput(OutputRecorder):
    """Each choice's answer (one for most requests)."""

    def __init__(self) -> None:
        self._choices: dict[int, _Draft] = {}
        self._whole: list[Message] | None = None

    def body(self, payload: dict[str, Any]) -> None:
        messages = []
        for choice in _dicts(payload.get("choices")):
            message = choice.get("message")
            message = message if isinstance(message, dict) else {}
            parts: list[Part] = []
            if reasoning := _str(message.get("reasoning_content")):
                parts.append({"type": "reasoning", "content": reasoning})
            parts.extend(_chat_parts(message.get("content")))
            if refusal := _str(message.get("refusal")):
                parts.append(text_part(refusal))
            parts.extend(_chat_tool_calls(message.get("tool_calls")))
            messages.append(_answer(parts, _str(choice.get("finish_reason"))))
        self._whole = messages

    def event(self, data: bytes) -> None:
        payload = _json(data)
        if payload is None:
            return
        for choice in _dicts(payload.get("choices")):
            index = choice.get("index")
            draft = self._choices.setdefault(index if isinstance(index, int) else 0, _Draft())
            delta = choice.get("delta")
            if isinstance(delta, dict):
                _chat_delta(draft, delta)
            if reason := _str(choice.get("finish_reason")):
                draft.finish = reason

    def messages(self) -> list[Message]:
        if self._whole is not None:
            return self._whole
        return [self._choices[index].message() for index in sorted(self._choices)]


def _chat_delta(draft: _Draft, delta: dict[str, Any]) -> None:
    for key in ("reasoning_content", "reasoning"):
        if text := _str(delta.get(key)):
            draft.part("reasoning", "reasoning").chunks.append(text)
    if text := _str(delta.get("content")):
        draft.part("text", "text").chunks.append(text)
    if text := _str(delta.get("refusal")):
        draft.part("refusal", "text").chunks.append(text)
    for call in _dicts(delta.get("tool_calls")):
        part = draft.part(("tool_call", call.get("index")), "tool_call")
        part.call_id = part.call_id or _str(call.get("id"))
        function = call.get("function")
        if isinstance(function, dict):
            part.name = part.name or _str(function.get("name"))
            if arguments := _str(function.get("arguments")):
                part.chunks.append(arguments)


# OpenAI Responses


def _responses_content(content: Any) -> list[Part]:
    if isinstance(content, str):
        return [text_part(content)] if content else []
    parts: list[Part] = []
    for block in _dicts(content):
        kind = block.get("type")
        if kind in ("input_text", "output_text", "text"):
            parts.append(text_part(_str(block.get("text"))))
        elif kind == "refusal":
            parts.append(text_part(_str(block.get("refusal"))))
        else:
            parts.append(_placeholder(block))
    return parts


def _responses_item_parts(item: dict[str, Any]) -> list[Part]:
    """The parts of one item the model produced (a message, a function call, reasoning …)."""
    kind = item.get("type", "message")
    if kind == "message":
        return _responses_content(item.get("content"))
    if kind == "function_call":
        call_id = _str(item.get("call_id"))
        return [tool_call_part(call_id, _str(item.get("name")), _str(item.get("arguments")))]
    if kind == "reasoning":
        texts = [*_dicts(item.get("summary")), *_dicts(item.get("content"))]
        return [{"type": "reasoning", "content": _str(text.get("text"))} for text in texts]
    return [_placeholder(item)]


def _append(messages: list[Message], role: str, parts: list[Part]) -> None:
    """One message per turn: the items of one assistant turn go into one message."""
    if role == "assistant" and messages and messages[-1]["role"] == "assistant":
        messages[-1]["parts"].extend(parts)
    else:
        messages.append({"role": role, "parts": parts})


def _responses_request(payload: dict[str, Any]) -> tuple[list[Part], list[Message]]:
    instructions = payload.get("instructions")
    system = [text_part(instructions)] if isinstance(instructions, str) and instructions else []
    items = payload.get("input")
    if isinstance(items, str):
        items = [{"role": "user", "content": items}]
    messages: list[Message] = []
    for item in _dicts(items):
        kind = _str(item.get("type")) or "message"
        role = _str(item.get("role"))
        if kind == "message" and role in _SYSTEM_ROLES:
            system.extend(_responses_content(item.get("content")))
        elif kind == "message" and role != "assistant":
            _append(messages, role, _responses_content(item.get("content")))
        elif kind == "function_call_output":
            part = _tool_response(item.get("call_id"), item.get("output"))
            _append(messages, "tool", [part])
        elif kind.endswith("_output"):
            _append(messages, "tool", [_placeholder(item)])
        else:
            _append(messages, "assistant", _responses_item_parts(item))
    return system, messages


def _responses_answer(response: dict[str, Any]) -> Message:
    output = list(_dicts(response.get("output")))
    parts = [part for item in output for part in _responses_item_parts(item)]
    status = _str(response.get("status"))
    reason: str | None = status
    if status == "completed":
        called = any(item.get("type") == "function_call" for item in output)
        reason = "tool_call" if called else "stop"
    elif status == "incomplete":
        details = response.get("incomplete_details")
        why = _str(details.get("reason")) if isinstance(details, dict) else ""
        reason = "length" if why == "max_output_tokens" else why or status
    elif status == "failed":
        reason = "error"
    return _answer(parts, reason)


_RESPONSE_ENDS: Final = ("response.completed", "response.incomplete", "response.failed")
_RESPONSE_TEXTS: Final = {
    "response.output_text.delta": ("text", "content_index"),
    "response.refusal.delta": ("text", "content_index"),
    "response.reasoning_text.delta": ("reasoning", "content_index"),
    "response.reasoning_summary_text.delta": ("reasoning", "summary_index"),
}


class _ResponsesOutput(OutputRecorder):
    """A stream's deltas by output item; the final response, when it comes, replaces them."""

    def __init__(self) -> None:
        self._draft = _Draft()
        self._whole: Message | None = None

    def body(self, payload: dict[str, Any]) -> None:
        self._whole = _responses_answer(payload)

    def event(self, data: bytes) -> None:
        payload = _json(data)
        if payload is None:
            return
        kind = _str(payload.get("type"))
        index = payload.get("output_index")
        if kind in _RESPONSE_TEXTS:
            part_kind, sub = _RESPONSE_TEXTS[kind]
            key = (index, part_kind, payload.get(sub))
            self._draft.part(key, part_kind).chunks.append(_str(payload.get("delta")))
        elif kind == "response.function_call_arguments.delta":
            self._draft.part(index, "tool_call").chunks.append(_str(payload.get("delta")))
        elif kind == "response.output_item.added":
            item = payload.get("item")
            if isinstance(item, dict):
                self._item_started(index, item)
        elif kind in _RESPONSE_ENDS and isinstance(payload.get("response"), dict):
            self._whole = _responses_answer(payload["response"])

    def _item_started(self, index: Any, item: dict[str, Any]) -> None:
        kind = _str(item.get("type"))
        if kind == "function_call":
            part = self._draft.part(index, "tool_call")
            part.call_id, part.name = _str(item.get("call_id")), _str(item.get("name"))
        elif kind not in ("message", "reasoning"):  # their text comes in deltas
            self._draft.part(index, kind or "unknown")

    def messages(self) -> list[Message]:
        if self._whole is not None:
            return [self._whole]
        return [self._draft.message()] if self._draft.parts else []


# Anthropic Messages


def _messages_parts(content: Any) -> list[Part]:
    if isinstance(content, str):
        return [text_part(content)] if content else []
    parts: list[Part] = []
    for block in _dicts(content):
        kind = block.get("type")
        if kind == "text":
            parts.append(text_part(_str(block.get("text"))))
        elif kind == "thinking":
            parts.append({"type": "reasoning", "content": _str(block.get("thinking"))})
        elif kind == "tool_use":
            name = _str(block.get("name"))
            parts.append(tool_call_part(_str(block.get("id")), name, block.get("input")))
        elif kind == "tool_result":
            parts.append(_tool_response(block.get("tool_use_id"), block.get("content")))
        else:
            parts.append(_placeholder(block))
    return parts


def _messages_request(payload: dict[str, Any]) -> tuple[list[Part], list[Message]]:
    system = _messages_parts(payload.get("system"))
    messages = [
        {"role": _str(message.get("role")), "parts": _messages_parts(message.get("content"))}
        for message in _dicts(payload.get("messages"))
    ]
    return system, messages


class _MessagesOutput(OutputRecorder):
    """The content blocks of the answer, by index, and its stop reason."""

    def __init__(self) -> None:
        self._draft = _Draft()
        self._whole: Message | None = None

    def body(self, payload: dict[str, Any]) -> None:
        parts = _messages_parts(payload.get("content"))
        self._whole = _answer(parts, _str(payload.get("stop_reason")))

    def event(self, data: bytes) -> None:
        payload = _json(data)
        if payload is None:
            return
        kind = payload.get("type")
        if kind == "content_block_start":
            block = payload.get("content_block")
            if isinstance(block, dict):
                self._block_started(payload.get("index"), block)
        elif kind == "content_block_delta":
            delta = payload.get("delta")
            if isinstance(delta, dict) and (field_name := _DELTAS.get(_str(delta.get("type")))):
                part = self._draft.parts.get(payload.get("index"))
                if part is not None:
                    part.chunks.append(_str(delta.get(field_name)))
        elif kind == "message_delta":
            delta = payload.get("delta")
            if isinstance(delta, dict) and (reason := _str(delta.get("stop_reason"))):
                self._draft.finish = reason

    def _block_started(self, index: Any, block: dict[str, Any]) -> None:
        kind = _str(block.get("type"))
        if kind in ("text", "thinking"):
            part = self._draft.part(index, "text" if kind == "text" else "reasoning")
            if text := _str(block.get(kind)):
                part.chunks.append(text)
        elif kind == "tool_use":
            part = self._draft.part(index, "tool_call")
            part.call_id, part.name = _str(block.get("id")), _str(block.get("name"))
            part.arguments = block.get("input")
        else:
            self._draft.part(index, kind or "unknown")

    def messages(self) -> list[Message]:
        if self._whole is not None:
            return [self._whole]
        return [self._draft.message()] if self._draft.parts or self._draft.finish else []


# Which delta field carries the text of a streamed content block.
_DELTAS: Final = {
    "text_delta": "text",
    "thinking_delta": "thinking",
    "input_json_delta": "partial_json",
}

_REQUESTS: Final[dict[str, Callable[[dict[str, Any]], tuple[list[Part], list[Message]]]]] = {
    "chat": _chat_request,
    "responses": _responses_request,
    "messages": _messages_request,
}
_RECORDERS: Final[dict[str, Callable[[], OutputRecorder]]] = {
    "chat": _ChatOutput,
    "responses": _ResponsesOutput,
    "messages": _MessagesOutput,
}
