"""A fake provider that enforces a context window, in the OpenAI and Anthropic wire formats.

A real HTTP server on 127.0.0.1 (``tests.providers.fakes.FakeUpstream``) that answers each
request by what it holds, like a tiny agent model:

- a compaction's summarizer request (its system prompt) → a short summary, numbered;
- the conversation ends with a tool result → a final answer;
- otherwise → a call of the ``big_output`` tool.

It counts a request's prompt tokens its own way (a quarter of the request body's bytes) and
refuses any request over ``window`` tokens with a 400 in the provider's own error shape
(OpenAI ``context_length_exceeded``, Anthropic "prompt is too long"). Each answer reports its
usage, as the provider would; ``usage_sent`` sums every usage it reported. A summary is held
back (its request received, nothing sent) while ``summaries_released`` is clear, any other
answer while ``answers_released`` is.
"""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar, Literal

from culm.domain.models import Usage
from culm.tools.base import Tool, ToolContext
from tests.providers.fakes import (
    FakeUpstream,
    Recorded,
    Reply,
    anthropic_events,
    json_reply,
    openai_events,
)

Wire = Literal["openai", "anthropic"]
SUMMARIZER_PROMPT_START = "You compact the conversation"


class BigOutputTool(Tool):
    """Returns ``size`` characters of text (default 6000, about 1500 tokens)."""

    name: ClassVar[str] = "big_output"
    description: ClassVar[str] = "Produce a large output."
    parameters: ClassVar[dict[str, Any]] = {"type": "object", "properties": {}}
    read_only: ClassVar[bool] = True

    def __init__(self, size: int = 6000) -> None:
        self.size = size
        self.calls = 0

    async def run(self, arguments: dict[str, Any], ctx: ToolContext) -> str:
        self.calls += 1
        line = f"output {self.calls}: " + "lorem ipsum dolor sit amet " * 4 + "\n"
        return (line * (self.size // len(line) + 1))[: self.size]


class WindowedUpstream(FakeUpstream):
    def __init__(self, wire: Wire, window: int) -> None:
        super().__init__()
        self.wire = wire
        self.window = window
        self.rejected = 0
        self.summaries = 0
        self.usage_sent = Usage()
        self.prompt_sizes: list[int] = []  # of the agent's accepted requests
        self.stall_summaries = False
        self.summary_requested = asyncio.Event()
        self.summaries_released = asyncio.Event()
        self.answers_released = asyncio.Event()
        self.summaries_released.set()
        self.answers_released.set()
        self._held: dict[int, asyncio.Event] = {}  # id(reply) -> what releases it

    def next_reply(self, request: Recorded) -> Reply:
        body = request.json()
        tokens = len(request.body) // 4
        if tokens > self.window:
            self.rejected += 1
            return self._too_long(tokens)
        if _system(body).startswith(SUMMARIZER_PROMPT_START):
            self.summaries += 1
            self.summary_requested.set()
            if self.stall_summaries:
                return Reply(chunks=[], end="stall")
            reply = self._answer(tokens, text=f"summary #{self.summaries} of the conversation")
            self._held[id(reply)] = self.summaries_released
            return reply
        self.prompt_sizes.append(tokens)
        if _ends_with_tool_result(body, self.wire):
            reply = self._answer(tokens, text=f"done after {len(self.prompt_sizes)} requests")
        else:
            reply = self._answer(tokens, tool=f"call_{len(self.requests)}")
        self._held[id(reply)] = self.answers_released
        return reply

    async def _send(
        self, reply: Reply, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        released = self._held.pop(id(reply), None)
        if released is not None:
            await released.wait()
        return await super()._send(reply, reader, writer)

    def _answer(self, prompt: int, *, text: str = "", tool: str | None = None) -> Reply:
        completion = max(1, len(text) // 4) + (10 if tool else 0)
        self.usage_sent += Usage(
            prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion
        )
        if self.wire == "openai":
            return Reply(chunks=_openai(text, tool, prompt, completion))
        return Reply(chunks=_anthropic(text, tool, prompt, completion))

    def _too_long(self, tokens: int) -> Reply:
        if self.wire == "openai":
            message = (
                f"This model's maximum context length is {self.window} tokens. However, your "
                f"messages resulted in {tokens} tokens. Please reduce the length of the messages."
            )
            error = {"message": message, "type": "invalid_request_error", "param": "messages"}
            return json_reply(400, {"error": {**error, "code": "context_length_exceeded"}})
        message = f"prompt is too long: {tokens} tokens > {self.window} maximum"
        error = {"type": "invalid_request_error", "message": message}
        return json_reply(400, {"type": "error", "error": error})


def _system(body: dict[str, Any]) -> str:
    system = body.get("system")
    if isinstance(system, list):
        return "".join(block.get("text", "") for block in system)
    if isinstance(system, str):
        return system
    first = body["messages"][0]
    return str(first["content"]) if first["role"] == "system" else ""


def _ends_with_tool_result(body: dict[str, Any], wire: Wire) -> bool:
    last = body["messages"][-1]
    if wire == "openai":
        return bool(last["role"] == "tool")
    content = last["content"]
    return isinstance(content, list) and content[-1].get("type") == "tool_result"


def _openai(text: str, tool: str | None, prompt: int, completion: int) -> list[bytes]:
    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        choice = {"index": 0, "delta": delta, "finish_reason": finish}
        return {"id": "c", "object": "chat.completion.chunk", "choices": [choice]}

    chunks: list[dict[str, Any] | str] = [chunk({"role": "assistant", "content": text})]
    if tool:
        call = {"index": 0, "id": tool, "type": "function"}
        call["function"] = {"name": "big_output", "arguments": "{}"}
        chunks.append(chunk({"tool_calls": [call]}))
    chunks.append(chunk({}, "tool_calls" if tool else "stop"))
    usage = {"prompt_tokens": prompt, "completion_tokens": completion}
    chunks.append(
        {"id": "c", "choices": [], "usage": {**usage, "total_tokens": prompt + completion}}
    )
    chunks.append("[DONE]")
    return openai_events(*chunks)


def _anthropic(text: str, tool: str | None, prompt: int, completion: int) -> list[bytes]:
    message = {"id": "m", "type": "message", "role": "assistant", "content": []}
    events: list[dict[str, Any]] = [
        {"type": "message_start", "message": {**message, "usage": {"input_tokens": prompt}}}
    ]
    index = 0
    if text:
        events.append(
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": ""},
            }
        )
        events.append(
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "text_delta", "text": text},
            }
        )
        events.append({"type": "content_block_stop", "index": 0})
        index = 1
    if tool:
        block = {"type": "tool_use", "id": tool, "name": "big_output", "input": {}}
        events.append({"type": "content_block_start", "index": index, "content_block": block})
        events.append(
            {
                "type": "content_block_delta",
                "index": index,
                "delta": {"type": "input_json_delta", "partial_json": "{}"},
            }
        )
        events.append({"type": "content_block_stop", "index": index})
    stop = "tool_use" if tool else "end_turn"
    events.append(
        {
            "type": "message_delta",
            "delta": {"stop_reason": stop},
            "usage": {"output_tokens": completion},
        }
    )
    events.append({"type": "message_stop"})
    return anthropic_events(*events)
