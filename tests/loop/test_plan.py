"""The request of a round: every tool call gets a result, as providers require."""

from __future__ import annotations

from culm.domain.models import AssistantMessage, ToolCall, ToolResultMessage, UserMessage
from culm.loop.plan import INTERRUPTED_RESULT, build_request, repair_transcript
from culm.tools.compact import CompactContextTool


def calls(*ids: str) -> AssistantMessage:
    return AssistantMessage(
        content="", tool_calls=tuple(ToolCall(id=i, name=f"tool_{i}", arguments="{}") for i in ids)
    )


def result(call_id: str) -> ToolResultMessage:
    return ToolResultMessage(tool_call_id=call_id, tool_name=f"tool_{call_id}", content="ok")


def interrupted(call_id: str) -> ToolResultMessage:
    return ToolResultMessage(
        tool_call_id=call_id,
        tool_name=f"tool_{call_id}",
        content=INTERRUPTED_RESULT,
        is_error=True,
    )


def test_a_whole_transcript_is_unchanged() -> None:
    transcript = [UserMessage(content="go"), calls("a", "b"), result("b"), result("a")]
    assert repair_transcript(transcript) == transcript


def test_calls_left_without_results_get_an_error_result_where_they_belong() -> None:
    """A round cut short mid-transcript (its results before the next user message) and one at
    the end; a result for an unknown call is kept as it is."""
    transcript = [
        UserMessage(content="go"),
        calls("a", "b"),
        result("a"),
        UserMessage(content="again"),
        calls("c"),
        result("zz"),
    ]
    assert repair_transcript(transcript) == [
        UserMessage(content="go"),
        calls("a", "b"),
        result("a"),
        interrupted("b"),
        UserMessage(content="again"),
        calls("c"),
        result("zz"),
        interrupted("c"),
    ]


def test_an_assistant_message_closes_the_calls_before_it() -> None:
    transcript = [calls("a"), calls("b"), result("b")]
    assert repair_transcript(transcript) == [calls("a"), interrupted("a"), calls("b"), result("b")]


def test_the_request_has_the_system_prompt_the_repaired_messages_and_the_tools() -> None:
    spec = CompactContextTool().spec()
    request = build_request("be brief", [calls("a")], iter([spec]))
    assert request.system_prompt == "be brief"
    assert request.messages == [calls("a"), interrupted("a")]
    assert request.tools == (spec,)
