"""The conversion of each wire format's request and answer to the GenAI content attributes, in
the cases the proxy's end-to-end tests do not play."""

from __future__ import annotations

import json
from typing import Any

from culm.tracing.wire_content import output_recorder, request_attributes


def text(value: str) -> dict[str, str]:
    return {"type": "text", "content": value}


def events(recorder_format: str, *payloads: dict[str, Any] | str) -> list[dict[str, Any]]:
    recorder = output_recorder(recorder_format)
    assert recorder is not None
    for payload in payloads:
        recorder.event(
            payload.encode() if isinstance(payload, str) else json.dumps(payload).encode()
        )
    output = recorder.output()
    return json.loads(output) if output is not None else []


def test_an_endpoint_without_messages_records_nothing() -> None:
    assert request_attributes("none", {"model": "x"}) == {}
    assert output_recorder("none") is None


def test_nothing_answered_records_no_output() -> None:
    for wire_format in ("chat", "responses", "messages"):
        assert events(wire_format) == []
        assert events(wire_format, "[DONE]", "not json") == []


def test_chat_refusal_reasoning_and_files_and_audio_placeholders() -> None:
    payload = {
        "messages": [
            {"role": "developer", "content": [{"type": "text", "text": "Rules."}]},
            {
                "role": "user",
                "content": [
                    {"type": "input_audio", "input_audio": {"data": "UklGR", "format": "wav"}},
                    {"type": "file", "file": {"file_data": "JVBERi0"}},
                ],
            },
            {"role": "assistant", "content": [{"type": "refusal", "refusal": "No."}]},
            {"role": "tool", "tool_call_id": "c", "content": [{"type": "text", "text": "ok"}]},
        ]
    }
    attributes = request_attributes("chat", payload)
    assert json.loads(attributes["gen_ai.system_instructions"]) == [text("Rules.")]
    assert json.loads(attributes["gen_ai.input.messages"]) == [
        {"role": "user", "parts": [{"type": "input_audio"}, {"type": "file"}]},
        {"role": "assistant", "parts": [text("No.")]},
        {"role": "tool", "parts": [{"type": "tool_call_response", "id": "c", "response": "ok"}]},
    ]
    assert "UklGR" not in attributes["gen_ai.input.messages"]


def test_chat_stream_of_two_choices_with_reasoning() -> None:
    def chunk(index: int, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {"choices": [{"index": index, "delta": delta, "finish_reason": finish}]}

    assert events(
        "chat",
        chunk(1, {"content": "B"}),
        chunk(0, {"reasoning_content": "think"}),
        chunk(0, {"content": "A"}),
        chunk(0, {}, "length"),
        chunk(1, {}, "stop"),
        "[DONE]",
    ) == [
        {
            "role": "assistant",
            "parts": [{"type": "reasoning", "content": "think"}, text("A")],
            "finish_reason": "length",
        },
        {"role": "assistant", "parts": [text("B")], "finish_reason": "stop"},
    ]


def test_chat_tool_call_cut_short_keeps_its_text() -> None:
    call = {"index": 0, "id": "c", "function": {"name": "f", "arguments": '{"a": '}}
    (message,) = events("chat", {"choices": [{"index": 0, "delta": {"tool_calls": [call]}}]})
    assert message == {
        "role": "assistant",
        "parts": [{"type": "tool_call", "id": "c", "name": "f", "arguments": '{"a": '}],
        "finish_reason": "error",
    }


def test_responses_items_of_one_assistant_turn_are_one_message() -> None:
    payload = {
        "input": [
            {"type": "message", "role": "system", "content": "S"},
            {"type": "message", "role": "user", "content": "Q"},
            {"type": "reasoning", "summary": [{"type": "summary_text", "text": "hm"}]},
            {"type": "function_call", "call_id": "c", "name": "f", "arguments": "{}"},
            {"type": "web_search_call", "id": "ws", "status": "completed"},
            {"type": "computer_call_output", "call_id": "cc", "output": {"image_url": "x"}},
        ]
    }
    attributes = request_attributes("responses", payload)
    assert json.loads(attributes["gen_ai.system_instructions"]) == [text("S")]
    assert json.loads(attributes["gen_ai.input.messages"]) == [
        {"role": "user", "parts": [text("Q")]},
        {
            "role": "assistant",
            "parts": [
                {"type": "reasoning", "content": "hm"},
                {"type": "tool_call", "id": "c", "name": "f", "arguments": {}},
                {"type": "web_search_call"},
            ],
        },
        {"role": "tool", "parts": [{"type": "computer_call_output"}]},
    ]


def test_responses_stream_without_its_final_event() -> None:
    call = {"type": "function_call", "call_id": "c", "name": "f", "arguments": ""}
    assert events(
        "responses",
        {
            "type": "response.reasoning_summary_text.delta",
            "output_index": 0,
            "summary_index": 0,
            "delta": "plan",
        },
        {"type": "response.output_item.added", "output_index": 1, "item": call},
        {"type": "response.function_call_arguments.delta", "output_index": 1, "delta": '{"x"'},
        {"type": "response.function_call_arguments.delta", "output_index": 1, "delta": ": 1}"},
    ) == [
        {
            "role": "assistant",
            "parts": [
                {"type": "reasoning", "content": "plan"},
                {"type": "tool_call", "id": "c", "name": "f", "arguments": {"x": 1}},
            ],
            "finish_reason": "error",
        }
    ]


def test_responses_incomplete_for_length_and_tool_calls() -> None:
    recorder = output_recorder("responses")
    assert recorder is not None
    incomplete = {
        "status": "incomplete",
        "incomplete_details": {"reason": "max_output_tokens"},
        "output": [{"type": "function_call", "call_id": "c", "name": "f", "arguments": "{}"}],
    }
    recorder.body(incomplete)
    output = json.loads(recorder.output() or "[]")
    assert [message["finish_reason"] for message in output] == ["length"]
    recorder.body({**incomplete, "status": "completed"})
    assert json.loads(recorder.output() or "[]")[0]["finish_reason"] == "tool_call"


def test_messages_system_blocks_tool_result_blocks_and_placeholders() -> None:
    payload = {
        "system": [{"type": "text", "text": "S", "cache_control": {"type": "ephemeral"}}],
        "messages": [
            {"role": "user", "content": [{"type": "document", "source": {"data": "JVBERi0"}}]},
            {"role": "assistant", "content": [{"type": "redacted_thinking", "data": "opaque"}]},
            {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": "t",
                        "content": [{"type": "text", "text": "a"}, {"type": "image"}],
                    }
                ],
            },
        ],
    }
    attributes = request_attributes("messages", payload)
    assert json.loads(attributes["gen_ai.system_instructions"]) == [text("S")]
    assert json.loads(attributes["gen_ai.input.messages"]) == [
        {"role": "user", "parts": [{"type": "document"}]},
        {"role": "assistant", "parts": [{"type": "redacted_thinking"}]},
        {"role": "user", "parts": [{"type": "tool_call_response", "id": "t", "response": "a"}]},
    ]
