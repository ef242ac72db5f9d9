"""Pure parts of the loop: response classification and transcript repair."""

from __future__ import annotations

from culm.domain.models import AssistantMessage, ToolCall, ToolResultMessage, Usage, UserMessage
from culm.loop.classify import ResponseBuilder
from culm.loop.plan import INTERRUPTED_RESULT, build_request, repair_transcript
from culm.providers.base import (
    Finish,
    ReasoningDelta,
    TextDelta,
    ToolCallDelta,
    ToolSpec,
    UsageReport,
)


def test_split_tool_call_arguments_and_several_calls_are_assembled() -> None:
    builder = ResponseBuilder()
    parts = [
        TextDelta(text="Hel"),
        TextDelta(text=""),
        TextDelta(text="lo"),
        ToolCallDelta(index=0, id="a", name="read_file", arguments='{"pa'),
        ToolCallDelta(index=1, id="b", name="grep"),
        ToolCallDelta(index=0, arguments='th": "x"}'),
        ToolCallDelta(index=1, arguments='{"pattern": "y"}'),
        ReasoningDelta(text="hmm"),
        ReasoningDelta(text="", signature="sig"),
        UsageReport(usage=Usage(prompt_tokens=1)),
        UsageReport(usage=Usage(prompt_tokens=3, completion_tokens=2, total_tokens=5)),
        Finish(reason="tool_calls"),
    ]
    emitted = [builder.add(part) for part in parts]
    assert [e.type for e in emitted if e is not None] == ["token", "token", "reasoning_token"]
    response = builder.result()
    assert response.message.content == "Hello"
    assert response.message.reasoning == "hmm"
    assert response.message.reasoning_signature == "sig"
    assert response.message.tool_calls == (
        ToolCall(id="a", name="read_file", arguments='{"path": "x"}'),
        ToolCall(id="b", name="grep", arguments='{"pattern": "y"}'),
    )
    assert response.usage == Usage(prompt_tokens=3, completion_tokens=2, total_tokens=5)
    assert response.finish_reason == "tool_calls"


def test_calls_without_ids_or_arguments_get_defaults() -> None:
    builder = ResponseBuilder()
    builder.add(ToolCallDelta(index=2, name="list_dir"))
    call = builder.result().message.tool_calls[0]
    assert call == ToolCall(id="call_2", name="list_dir", arguments="{}")
    assert builder.emitted is False
    response = builder.result()  # nothing said what finished it, who answered, no signature
    assert (response.finish_reason, response.model, response.usage) == (None, None, None)
    assert response.message.reasoning_signature is None


def test_streamed_reasoning_counts_as_output_and_a_nameless_call_stays_nameless() -> None:
    """``emitted``: something reached the client, so a failed call is not retried; reasoning
    text is output too, a signature alone is not (found by mutation testing, issue #22)."""
    builder = ResponseBuilder()
    builder.add(ReasoningDelta(text="", signature="sig"))
    assert builder.emitted is False
    builder.add(ReasoningDelta(text="thinking"))
    assert builder.emitted is True
    builder.add(ToolCallDelta(index=0, id="x", arguments='{"a": 1}'))
    builder.add(UsageReport(usage=Usage(prompt_tokens=1), model="m-2026"))
    builder.add(UsageReport(usage=Usage(prompt_tokens=2)))  # no model: the earlier one stays
    response = builder.result()
    assert response.message.tool_calls == (ToolCall(id="x", name="", arguments='{"a": 1}'),)
    assert (response.model, response.usage, builder.usage) == (
        "m-2026",
        Usage(prompt_tokens=2),
        Usage(prompt_tokens=2),
    )
    assert response.message.reasoning == "thinking"


def test_repair_gives_every_open_tool_call_a_result() -> None:
    calls = (ToolCall(id="1", name="a"), ToolCall(id="2", name="b"))
    transcript = [
        UserMessage(content="hi"),
        AssistantMessage(tool_calls=calls),
        ToolResultMessage(tool_call_id="1", tool_name="a", content="ok"),
        UserMessage(content="again"),
        AssistantMessage(tool_calls=(ToolCall(id="3", name="c"),)),
    ]
    repaired = repair_transcript(transcript)
    assert [getattr(m, "tool_call_id", m.role) for m in repaired] == [
        "user",
        "assistant",
        "1",
        "2",
        "user",
        "assistant",
        "3",
    ]
    assert repaired[3].content == INTERRUPTED_RESULT  # type: ignore[union-attr]
    assert repair_transcript(repaired) == repaired


def test_build_request_carries_system_prompt_and_tools() -> None:
    spec = ToolSpec(name="x", description="d", parameters={"type": "object"})
    request = build_request("sys", [UserMessage(content="q")], [spec])
    assert request.system_prompt == "sys"
    assert request.tools == (spec,)
