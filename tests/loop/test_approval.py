"""People in the loop, the pure parts of the loop's side (``loop/approval.py``): which calls
of a transcript still wait for a result, and what makes an ``ask_user`` call a question
(found by mutation testing, issue #22)."""

from __future__ import annotations

from typing import Any

import pytest

from culm.domain.models import AssistantMessage, ToolCall, ToolResultMessage, UserMessage
from culm.loop.approval import _question, pending_calls


def _asks(*ids: str) -> AssistantMessage:
    return AssistantMessage(content="", tool_calls=tuple(ToolCall(id=i, name="t") for i in ids))


def _result(call_id: str) -> ToolResultMessage:
    return ToolResultMessage(tool_call_id=call_id, tool_name="t", content="ok")


def test_the_waiting_calls_are_the_last_model_messages_without_a_result() -> None:
    assert pending_calls([]) == []
    assert pending_calls([UserMessage(content="hi")]) == []
    earlier = [_asks("x"), _result("x")]
    assert [c.id for c in pending_calls([*earlier, _asks("a")])] == ["a"]
    latest = [*earlier, _asks("a", "b", "c"), _result("b"), UserMessage(content="go on")]
    assert [c.id for c in pending_calls(latest)] == ["a", "c"]
    assert pending_calls([*earlier, _asks("a"), _result("a")]) == []
    assert [c.id for c in pending_calls([_asks("a"), UserMessage(content="?")])] == ["a"]
    # some servers number calls per round: an earlier round's result answers its own call only
    assert [c.id for c in pending_calls([_asks("a"), _result("a"), _asks("a")])] == ["a"]


@pytest.mark.parametrize(
    ("arguments", "question"),
    [
        ({"question": " Which? "}, " Which? "),
        ({"question": "Which?", "choices": ["a", "b"]}, "Which?"),
        ({"question": "Which?", "choices": []}, "Which?"),
        ({"question": "Which?", "choices": None}, "Which?"),
        ({"question": "Which?", "choices": ["a", 1]}, None),
        ({"question": "Which?", "choices": "a"}, None),
        ({"question": "  "}, None),
        ({"question": 3}, None),
        ({}, None),
        (["Which?"], None),
    ],
)
def test_a_question_needs_non_blank_text_and_choices_of_strings(
    arguments: Any, question: str | None
) -> None:
    assert _question(arguments) == question
