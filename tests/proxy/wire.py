"""What the providers send, as the fake upstream plays it, and the usage culm must read from it.

Each API's usage has every kind set (cache reads, cache writes, reasoning) to distinct numbers,
so a record that maps one field onto another cannot pass.
"""

from __future__ import annotations

import json
from typing import Any, Final

from culm.domain.models import Usage
from tests.providers.fakes import anthropic_events, openai_events

# Chat Completions

CHAT_USAGE: Final = {
    "prompt_tokens": 31,
    "completion_tokens": 12,
    "total_tokens": 43,
    "prompt_tokens_details": {"cached_tokens": 8},
    "completion_tokens_details": {"reasoning_tokens": 5},
}
CHAT_USAGE_MAPPED: Final = Usage(
    prompt_tokens=31, completion_tokens=12, total_tokens=43, cache_read_tokens=8, reasoning_tokens=5
)
CHAT_MODEL: Final = "gpt-4o"


def chat_chunk(delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
    """A content chunk, with the ``"usage": null`` a stream that reports usage carries."""
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1_700_000_000,
        "model": CHAT_MODEL,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
        "usage": None,
    }


def chat_usage_chunk() -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1_700_000_000,
        "model": CHAT_MODEL,
        "choices": [],
        "usage": CHAT_USAGE,
    }


def chat_text_events() -> list[bytes]:
    """``Hello world``, the usage-only chunk, ``[DONE]``: one event per list item."""
    return openai_events(
        chat_chunk({"role": "assistant", "content": ""}),
        chat_chunk({"content": "Hello"}),
        chat_chunk({"content": " world"}),
        chat_chunk({}, "stop"),
        chat_usage_chunk(),
        "[DONE]",
    )


def chat_tool_events() -> list[bytes]:
    """Two tool calls, each one's arguments split across chunks."""

    def call(index: int, **fields: Any) -> dict[str, Any]:
        return {"tool_calls": [{"index": index, **fields}]}

    return openai_events(
        chat_chunk(
            {
                "role": "assistant",
                "content": None,
                **call(
                    0, id="call_a", type="function", function={"name": "weather", "arguments": ""}
                ),
            }
        ),
        chat_chunk(call(0, function={"arguments": '{"ci'})),
        chat_chunk(call(0, function={"arguments": 'ty": "Par'})),
        chat_chunk(call(0, function={"arguments": 'is"}'})),
        chat_chunk(
            call(1, id="call_b", type="function", function={"name": "clock", "arguments": ""})
        ),
        chat_chunk(call(1, function={"arguments": '{"tz": '})),
        chat_chunk(call(1, function={"arguments": '"CET"}'})),
        chat_chunk({}, "tool_calls"),
        chat_usage_chunk(),
        "[DONE]",
    )


def chat_completion(message: dict[str, Any], finish_reason: str = "stop") -> dict[str, Any]:
    return {
        "id": "chatcmpl-2",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": CHAT_MODEL,
        "choices": [{"index": 0, "message": message, "finish_reason": finish_reason}],
        "usage": CHAT_USAGE,
    }


TOOL_CALLS_MESSAGE: Final = {
    "role": "assistant",
    "content": None,
    "tool_calls": [
        {
            "id": "call_a",
            "type": "function",
            "function": {"name": "weather", "arguments": '{"city": "Paris"}'},
        },
        {
            "id": "call_b",
            "type": "function",
            "function": {"name": "clock", "arguments": '{"tz": "CET"}'},
        },
    ],
}

# Responses

RESPONSES_USAGE: Final = {
    "input_tokens": 40,
    "input_tokens_details": {"cached_tokens": 16},
    "output_tokens": 20,
    "output_tokens_details": {"reasoning_tokens": 7},
    "total_tokens": 60,
}
RESPONSES_USAGE_MAPPED: Final = Usage(
    prompt_tokens=40,
    completion_tokens=20,
    total_tokens=60,
    cache_read_tokens=16,
    reasoning_tokens=7,
)


def response_object(status: str, *, text: str = "", usage: Any = None) -> dict[str, Any]:
    output = []
    if text:
        output = [
            {
                "type": "message",
                "id": "msg_1",
                "status": "completed",
                "role": "assistant",
                "content": [{"type": "output_text", "text": text, "annotations": []}],
            }
        ]
    return {
        "id": "resp_1",
        "object": "response",
        "created_at": 1_700_000_000,
        "status": status,
        "model": CHAT_MODEL,
        "output": output,
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
        "usage": usage,
    }


def responses_events() -> list[bytes]:
    events: list[dict[str, Any]] = [
        {
            "type": "response.created",
            "sequence_number": 0,
            "response": response_object("in_progress"),
        },
        {
            "type": "response.output_text.delta",
            "sequence_number": 1,
            "item_id": "msg_1",
            "output_index": 0,
            "content_index": 0,
            "delta": "Hi ",
            "logprobs": [],
        },
        {
            "type": "response.output_text.delta",
            "sequence_number": 2,
            "item_id": "msg_1",
            "output_index": 0,
            "content_index": 0,
            "delta": "there",
            "logprobs": [],
        },
        {
            "type": "response.completed",
            "sequence_number": 3,
            "response": response_object("completed", text="Hi there", usage=RESPONSES_USAGE),
        },
    ]
    return [f"event: {e['type']}\ndata: {json.dumps(e)}\n\n".encode() for e in events]


# Messages

MESSAGES_START_USAGE: Final = {
    "input_tokens": 25,
    "cache_creation_input_tokens": 100,
    "cache_read_input_tokens": 50,
    "output_tokens": 1,
}
MESSAGES_USAGE_MAPPED: Final = Usage(
    prompt_tokens=175,
    completion_tokens=42,
    total_tokens=217,
    cache_read_tokens=50,
    cache_write_tokens=100,
)
CLAUDE: Final = "claude-haiku-4-5"


def message_object(content: list[dict[str, Any]], usage: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": CLAUDE,
        "content": content,
        "stop_reason": "tool_use" if any(b["type"] == "tool_use" for b in content) else "end_turn",
        "stop_sequence": None,
        "usage": usage,
    }


def messages_events() -> list[bytes]:
    """Thinking, text, then a tool_use block whose input comes in ``input_json_delta`` pieces."""
    return anthropic_events(
        {"type": "message_start", "message": message_object([], MESSAGES_START_USAGE)},
        {
            "type": "content_block_start",
            "index": 0,
            "content_block": {"type": "thinking", "thinking": "", "signature": ""},
        },
        {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "thinking_delta", "thinking": "Weather "},
        },
        {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "thinking_delta", "thinking": "first."},
        },
        {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "signature_delta", "signature": "sig=="},
        },
        {"type": "content_block_stop", "index": 0},
        {"type": "content_block_start", "index": 1, "content_block": {"type": "text", "text": ""}},
        {
            "type": "content_block_delta",
            "index": 1,
            "delta": {"type": "text_delta", "text": "Checking."},
        },
        {"type": "content_block_stop", "index": 1},
        {
            "type": "content_block_start",
            "index": 2,
            "content_block": {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {}},
        },
        {
            "type": "content_block_delta",
            "index": 2,
            "delta": {"type": "input_json_delta", "partial_json": ""},
        },
        {
            "type": "content_block_delta",
            "index": 2,
            "delta": {"type": "input_json_delta", "partial_json": '{"city": "Pa'},
        },
        {
            "type": "content_block_delta",
            "index": 2,
            "delta": {"type": "input_json_delta", "partial_json": 'ris"}'},
        },
        {"type": "content_block_stop", "index": 2},
        {
            "type": "message_delta",
            "delta": {"stop_reason": "tool_use", "stop_sequence": None},
            "usage": {"output_tokens": 42},
        },
        {"type": "message_stop"},
    )


MESSAGE_BODY_USAGE: Final = {**MESSAGES_START_USAGE, "output_tokens": 42}


def anthropic_error(kind: str, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": kind, "message": message}}


def openai_error(kind: str, message: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": None, "code": kind}}


def rechunk(chunks: list[bytes], size: int) -> list[bytes]:
    """The same bytes, cut every ``size`` bytes regardless of where events end."""
    data = b"".join(chunks)
    return [data[i : i + size] for i in range(0, len(data), size)]
