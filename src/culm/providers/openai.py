"""The Chat Completions adapter: OpenAI and compatible servers (vLLM, Ollama, llama.cpp, LM Studio).

Request: ``POST {base_url}/chat/completions`` with ``stream: true`` and
``stream_options.include_usage``; ``Authorization: Bearer`` only when a key is set.

Stream: ``data:`` events of ``chat.completion.chunk`` objects, ended by ``data: [DONE]``.

- ``delta.content`` → :class:`TextDelta`; ``delta.reasoning_content`` / ``delta.reasoning``
  (vLLM, DeepSeek, OpenRouter) → :class:`ReasoningDelta`.
- ``delta.tool_calls[]`` → :class:`ToolCallDelta` keyed by the call's ``index``; the id and name
  come in the first piece, the arguments may be split across any number of chunks.
- ``finish_reason`` → :class:`Finish` with the provider's reason (``stop``, ``tool_calls``,
  ``length`` …).
- The usage chunk (``choices: []`` plus ``usage``) → :class:`UsageReport`:
  ``prompt_tokens``, ``completion_tokens``, ``total_tokens`` as reported;
  ``cache_read_tokens`` = ``prompt_tokens_details.cached_tokens`` (DeepSeek:
  ``prompt_cache_hit_tokens``); ``reasoning_tokens`` = ``completion_tokens_details.reasoning_tokens``;
  ``cache_write_tokens`` = 0 (not reported by this format).
- ``{"error": {...}}`` inside the stream → :class:`~culm.errors.ModelHTTPError`.
- A stream that ends with neither ``[DONE]`` nor a finish reason →
  :class:`~culm.errors.ModelConnectionError`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from typing import Any

from culm.domain.models import AssistantMessage, Message, ToolResultMessage, Usage, UserMessage
from culm.errors import ModelConnectionError
from culm.providers.base import (
    Finish,
    ModelRequest,
    ReasoningDelta,
    StreamPart,
    TextDelta,
    ToolCallDelta,
    ToolSpec,
    UsageReport,
)
from culm.providers.catalog import ProviderConfig
from culm.providers.http import (
    HTTPModel,
    error_from_payload,
    load_event_json,
    open_event_stream,
)


class OpenAIChatModel(HTTPModel):
    """One model behind a Chat Completions endpoint."""

    def request_headers(self) -> dict[str, str]:
        headers = {"accept": "text/event-stream"}
        if self._config.key is not None:
            headers["authorization"] = f"Bearer {self._config.key}"
        return headers

    def request_body(self, request: ModelRequest) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model,
            "messages": chat_messages(request.system_prompt, request.messages),
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if request.tools:
            body["tools"] = [chat_tool(tool) for tool in request.tools]
        if request.max_output_tokens is not None:
            body[self._config.output_limit_field] = request.max_output_tokens
        return body

    async def stream(self, request: ModelRequest) -> AsyncIterator[StreamPart]:
        """Stream one completion; the HTTP response is closed however the iteration ends."""
        complete = False
        async with open_event_stream(
            self._client,
            self._config,
            f"{self._config.base_url}/chat/completions",
            body=self.request_body(request),
            headers=self.request_headers(),
            timeouts=self._timeout,
        ) as events:
            async for event in events:
                if event.data.strip() == "[DONE]":
                    complete = True
                    break
                for part in parse_chunk(self._config, load_event_json(self._config, event)):
                    complete = complete or isinstance(part, Finish)
                    yield part
        if not complete:
            raise ModelConnectionError(f"{self._config.name} stream ended before completion")


def chat_messages(system_prompt: str | None, messages: Sequence[Message]) -> list[dict[str, Any]]:
    """culm messages in Chat Completions form, the system prompt first.

    Reasoning is not sent back: the format has no field for it and DeepSeek refuses it.
    """
    converted: list[dict[str, Any]] = []
    if system_prompt:
        converted.append({"role": "system", "content": system_prompt})
    for message in messages:
        if isinstance(message, UserMessage):
            converted.append({"role": "user", "content": message.content})
        elif isinstance(message, AssistantMessage):
            converted.append(_assistant_message(message))
        elif isinstance(message, ToolResultMessage):
            converted.append(
                {"role": "tool", "tool_call_id": message.tool_call_id, "content": message.content}
            )
    return converted


def _assistant_message(message: AssistantMessage) -> dict[str, Any]:
    if not message.tool_calls:
        return {"role": "assistant", "content": message.content}
    return {
        "role": "assistant",
        "content": message.content or None,
        "tool_calls": [
            {
                "id": call.id,
                "type": "function",
                "function": {"name": call.name, "arguments": call.arguments},
            }
            for call in message.tool_calls
        ],
    }


def chat_tool(tool: ToolSpec) -> dict[str, Any]:
    return {
        "type": "function",
        "function": {
            "name": tool.name,
            "description": tool.description,
            "parameters": tool.parameters,
        },
    }


def parse_chunk(config: ProviderConfig, chunk: Mapping[str, Any]) -> Iterator[StreamPart]:
    """The stream parts of one ``chat.completion.chunk`` (only the first choice is read)."""
    if chunk.get("error"):
        raise error_from_payload(config, chunk)
    for choice in chunk.get("choices") or ():
        if choice.get("index", 0) == 0:
            yield from _choice_parts(choice)
    usage = chunk.get("usage")
    if isinstance(usage, Mapping):
        model = chunk.get("model")
        yield UsageReport(usage=chat_usage(usage), model=model if isinstance(model, str) else None)


def _choice_parts(choice: Mapping[str, Any]) -> Iterator[StreamPart]:
    delta = choice.get("delta") or {}
    reasoning = delta.get("reasoning_content") or delta.get("reasoning")
    if isinstance(reasoning, str) and reasoning:
        yield ReasoningDelta(text=reasoning)
    for key in ("content", "refusal"):
        text = delta.get(key)
        if isinstance(text, str) and text:
            yield TextDelta(text=text)
    for position, call in enumerate(delta.get("tool_calls") or ()):
        function = call.get("function") or {}
        index = call.get("index")
        yield ToolCallDelta(
            index=index if isinstance(index, int) else position,
            id=call.get("id") or None,
            name=function.get("name") or None,
            arguments=function.get("arguments") or "",
        )
    if choice.get("finish_reason"):
        yield Finish(reason=choice["finish_reason"])


def chat_usage(usage: Mapping[str, Any]) -> Usage:
    """Chat Completions usage in culm's terms (see the module docstring)."""
    prompt = usage.get("prompt_tokens") or 0
    completion = usage.get("completion_tokens") or 0
    prompt_details = usage.get("prompt_tokens_details") or {}
    completion_details = usage.get("completion_tokens_details") or {}
    return Usage(
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=usage.get("total_tokens") or prompt + completion,
        cache_read_tokens=prompt_details.get("cached_tokens")
        or usage.get("prompt_cache_hit_tokens")
        or 0,
        reasoning_tokens=completion_details.get("reasoning_tokens") or 0,
    )
