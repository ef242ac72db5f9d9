"""The Messages adapter (Anthropic).

Request: ``POST {base_url}/v1/messages`` with ``x-api-key``, ``anthropic-version: 2023-06-01``
and ``stream: true``. ``max_tokens`` is required by the API: the request's value, else
:func:`~culm.providers.catalog.default_max_output_tokens` of the model. Messages become content
blocks; tool results are ``tool_result`` blocks of a ``user`` message, and consecutive messages
of one role (several tool results, a tool result and the next user text) are merged into one.

Stream events:

- ``message_start``, ``message_delta`` → :class:`UsageReport` (cumulative; the latest replaces
  the earlier), ``message_delta.delta.stop_reason`` → :class:`Finish` (``end_turn``,
  ``tool_use``, ``max_tokens`` …).
- ``content_block_start`` / ``content_block_delta``: ``text_delta`` → :class:`TextDelta`;
  ``tool_use`` (id, name) and ``input_json_delta`` → :class:`ToolCallDelta` whose ``index`` is
  the content block's index; ``thinking_delta`` → :class:`ReasoningDelta`; ``signature_delta``
  → ``ReasoningDelta(text="", signature=…)``.
- ``ping``, ``content_block_stop`` and unknown events are ignored; ``error`` raises
  :class:`~culm.errors.ModelHTTPError`; ending without ``message_stop`` raises
  :class:`~culm.errors.ModelConnectionError`.

Usage mapping (Anthropic's ``input_tokens`` excludes cached tokens; culm's ``prompt_tokens`` is
every input token):

    prompt_tokens      = input_tokens + cache_read_input_tokens + cache_creation_input_tokens
    completion_tokens  = output_tokens
    total_tokens       = prompt_tokens + completion_tokens
    cache_read_tokens  = cache_read_input_tokens
    cache_write_tokens = cache_creation_input_tokens
    reasoning_tokens   = 0 (not reported separately)
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any, Final

from culm.domain.models import AssistantMessage, Message, ToolResultMessage, Usage, UserMessage
from culm.errors import ModelConnectionError
from culm.providers.base import (
    Finish,
    ModelRequest,
    ReasoningDelta,
    StreamPart,
    TextDelta,
    ToolCallDelta,
    UsageReport,
)
from culm.providers.catalog import ProviderConfig, default_max_output_tokens
from culm.providers.http import (
    HTTPModel,
    error_from_payload,
    load_event_json,
    open_event_stream,
)
from culm.providers.sse import SSEEvent

ANTHROPIC_VERSION: Final = "2023-06-01"


class AnthropicMessagesModel(HTTPModel):
    """One model behind a Messages endpoint."""

    def request_headers(self) -> dict[str, str]:
        headers = {"accept": "text/event-stream", "anthropic-version": ANTHROPIC_VERSION}
        if self._config.key is not None:
            headers["x-api-key"] = self._config.key
        return headers

    def request_body(self, request: ModelRequest) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model,
            "max_tokens": request.max_output_tokens or default_max_output_tokens(self._info),
            "messages": anthropic_messages(request.messages),
            "stream": True,
        }
        if request.system_prompt:
            body["system"] = request.system_prompt
        if request.tools:
            body["tools"] = [
                {
                    "name": tool.name,
                    "description": tool.description,
                    "input_schema": tool.parameters,
                }
                for tool in request.tools
            ]
        return body

    async def stream(self, request: ModelRequest) -> AsyncIterator[StreamPart]:
        """Stream one message; the HTTP response is closed however the iteration ends."""
        parser = MessagesStreamParser(self._config)
        async with open_event_stream(
            self._client,
            self._config,
            f"{self._config.base_url}/v1/messages",
            body=self.request_body(request),
            headers=self.request_headers(),
            timeouts=self._timeout,
        ) as events:
            async for event in events:
                for part in parser.feed(event):
                    yield part
                if parser.stopped:
                    break
        if not parser.stopped:
            raise ModelConnectionError(f"{self._config.name} stream ended before message_stop")


def anthropic_messages(messages: Sequence[Message]) -> list[dict[str, Any]]:
    """culm messages as Messages-API turns, consecutive same-role messages merged."""
    turns: list[dict[str, Any]] = []
    for message in messages:
        role, blocks = _blocks(message)
        if not blocks:
            continue
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": role, "content": blocks})
    for turn in turns:
        # The API wants a user turn's tool results before its text (the sort is stable).
        turn["content"].sort(key=lambda block: block["type"] != "tool_result")
    return turns


def _blocks(message: Message) -> tuple[str, list[dict[str, Any]]]:
    if isinstance(message, UserMessage):
        return "user", [{"type": "text", "text": message.content}] if message.content else []
    if isinstance(message, ToolResultMessage):
        block: dict[str, Any] = {"type": "tool_result", "tool_use_id": message.tool_call_id}
        if message.content:
            block["content"] = message.content
        block["is_error"] = message.is_error
        return "user", [block]
    return "assistant", _assistant_blocks(message)


def _assistant_blocks(message: AssistantMessage) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    if message.reasoning_signature is not None:
        blocks.append(
            {
                "type": "thinking",
                "thinking": message.reasoning,
                "signature": message.reasoning_signature,
            }
        )
    if message.content:
        blocks.append({"type": "text", "text": message.content})
    for call in message.tool_calls:
        blocks.append(
            {"type": "tool_use", "id": call.id, "name": call.name, "input": _input(call.arguments)}
        )
    return blocks


def _input(arguments: str) -> dict[str, Any]:
    """A tool call's arguments as the object the API wants (``{}`` when they are not one)."""
    try:
        value = json.loads(arguments or "{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def messages_usage(usage: Mapping[str, Any]) -> Usage:
    """A Messages ``usage`` object in culm's terms (see the module docstring)."""
    read = usage.get("cache_read_input_tokens") or 0
    write = usage.get("cache_creation_input_tokens") or 0
    prompt = (usage.get("input_tokens") or 0) + read + write
    completion = usage.get("output_tokens") or 0
    return Usage(
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=prompt + completion,
        cache_read_tokens=read,
        cache_write_tokens=write,
    )


class MessagesStreamParser:
    """Turns Messages stream events into stream parts, keeping the cumulative usage."""

    def __init__(self, config: ProviderConfig) -> None:
        self._config = config
        self.stopped = False
        self._usage: dict[str, int] = {}
        self._model: str | None = None
        self._handlers: Mapping[str, Callable[[dict[str, Any]], list[StreamPart]]] = {
            "message_start": self._message_start,
            "content_block_start": self._block_start,
            "content_block_delta": self._block_delta,
            "message_delta": self._message_delta,
            "message_stop": self._message_stop,
            "error": self._error,
        }

    def feed(self, event: SSEEvent) -> list[StreamPart]:
        """The parts of one event (``ping`` and unknown events give none)."""
        if event.event == "ping":
            return []
        payload = load_event_json(self._config, event)
        handler = self._handlers.get(str(payload.get("type", event.event)))
        return handler(payload) if handler else []

    @property
    def usage(self) -> Usage:
        """The usage reported so far, mapped as the module docstring says."""
        return messages_usage(self._usage)

    def _update_usage(self, usage: Any) -> list[StreamPart]:
        if not isinstance(usage, Mapping):
            return []
        self._usage.update({k: v for k, v in usage.items() if isinstance(v, int)})
        return [UsageReport(usage=self.usage, model=self._model)]

    def _message_start(self, payload: dict[str, Any]) -> list[StreamPart]:
        message = payload.get("message") or {}
        model = message.get("model")
        self._model = model if isinstance(model, str) else None
        return self._update_usage(message.get("usage"))

    def _block_start(self, payload: dict[str, Any]) -> list[StreamPart]:
        index = payload.get("index", 0)
        block = payload.get("content_block") or {}
        kind = block.get("type")
        if kind == "text" and block.get("text"):
            return [TextDelta(text=block["text"])]
        if kind == "thinking" and block.get("thinking"):
            return [ReasoningDelta(text=block["thinking"])]
        if kind == "tool_use":
            arguments = json.dumps(block["input"]) if block.get("input") else ""
            return [
                ToolCallDelta(
                    index=index, id=block.get("id"), name=block.get("name"), arguments=arguments
                )
            ]
        return []

    def _block_delta(self, payload: dict[str, Any]) -> list[StreamPart]:
        delta = payload.get("delta") or {}
        kind = delta.get("type")
        if kind == "text_delta" and delta.get("text"):
            return [TextDelta(text=delta["text"])]
        if kind == "input_json_delta" and delta.get("partial_json"):
            return [ToolCallDelta(index=payload.get("index", 0), arguments=delta["partial_json"])]
        if kind == "thinking_delta" and delta.get("thinking"):
            return [ReasoningDelta(text=delta["thinking"])]
        if kind == "signature_delta" and delta.get("signature"):
            return [ReasoningDelta(text="", signature=delta["signature"])]
        return []

    def _message_delta(self, payload: dict[str, Any]) -> list[StreamPart]:
        parts: list[StreamPart] = []
        reason = (payload.get("delta") or {}).get("stop_reason")
        if reason:
            parts.append(Finish(reason=reason))
        return parts + self._update_usage(payload.get("usage"))

    def _message_stop(self, payload: dict[str, Any]) -> list[StreamPart]:
        self.stopped = True
        return []

    def _error(self, payload: dict[str, Any]) -> list[StreamPart]:
        raise error_from_payload(self._config, payload)
