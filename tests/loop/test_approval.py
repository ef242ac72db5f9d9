"""People in the loop, the pure parts of the loop's side (``loop/approval.py``): which calls
of a transcript still wait for a result, and what makes an ``ask_user`` call a question
(found by mutation testing, issue #22)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

import pytest

from culm.domain.input import InputAnswer, InputKind, InputRequest
from culm.domain.models import (
    AssistantMessage,
    Message,
    Session,
    ToolCall,
    ToolResultMessage,
    UserMessage,
)
from culm.input.ask import AskUserTool
from culm.loop.approval import (
    RECOVERED_APPROVAL,
    _question,
    apply_answers,
    denial_text,
    pending_calls,
    split_calls,
)
from culm.tools.base import Tool, ToolContext
from tests.loop.harness import loop_context
from tests.support import FailingTool, RecordingTool


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


# The round's split and the answers applied on resume, on a loop context built by hand (the
# engine's tests in tests/input reach them too, a server's worth of time per mutant).


class _Guarded(Tool):
    """A tool whose every call waits for approval, whatever the session's patterns."""

    name: ClassVar[str] = "guarded"
    description: ClassVar[str] = "Needs a person's yes."
    parameters: ClassVar[dict[str, Any]] = {"type": "object", "properties": {}}
    require_approval: ClassVar[bool] = True

    async def run(self, arguments: dict[str, Any], ctx: ToolContext) -> str:
        return "done"


def _call(call_id: str, name: str, **arguments: Any) -> ToolCall:
    return ToolCall(id=call_id, name=name, arguments=json.dumps(arguments))


def test_a_round_splits_into_calls_to_run_questions_approvals_and_malformed_questions(
    tmp_path: Path,
) -> None:
    session = Session(
        session_id="s", model="m", workspace=str(tmp_path), require_approval=("rec*",)
    )
    ctx, emitted = loop_context(
        tmp_path, [RecordingTool(), AskUserTool(), _Guarded(), FailingTool()], session=session
    )
    calls = [
        _call("q", "ask_user", question="Which?", choices=["a", "b"]),
        _call("r", "record", label="x"),
        _call("g", "guarded"),
        _call("e", "explode"),
        _call("u", "unknown"),  # no such tool: it fails on its own, nobody is asked
        _call("bad", "ask_user", choices=["a"]),
        ToolCall(id="raw", name="ask_user", arguments="{not json"),
    ]
    now, asks, refused = split_calls(ctx, calls)

    assert [call.id for call in now] == ["e", "u"]
    assert [(a.kind, a.call.id, a.arguments, a.question, a.choices) for a in asks] == [
        ("question", "q", {"question": "Which?", "choices": ["a", "b"]}, "Which?", ["a", "b"]),
        ("approval", "r", {"label": "x"}, None, None),
        ("approval", "g", {}, None, None),
    ]
    assert len({a.request_id for a in asks}) == 3 and all(a.request_id for a in asks)
    message = "error: ask_user needs a non-empty `question` (and `choices`: a list of strings)"
    assert [(r.tool_call_id, r.tool_name, r.content, r.is_error) for r in refused] == [
        ("bad", "ask_user", message, True),
        ("raw", "ask_user", message, True),
    ]
    starts = [(e.tool_call_id, e.tool_name, e.arguments) for e in emitted.of("tool_start")]
    assert starts == [("bad", "ask_user", {"choices": ["a"]}), ("raw", "ask_user", "{not json")]
    assert [(e.tool_call_id, e.error) for e in emitted.of("tool_error")] == [
        ("bad", message.removeprefix("error: ")),
        ("raw", message.removeprefix("error: ")),
    ]


def _request(call: ToolCall, kind: InputKind, answer: InputAnswer | None) -> InputRequest:
    return InputRequest(
        request_id=f"req-{call.id}",
        run_id="r",
        session_id="s",
        kind=kind,
        tool_call_id=call.id,
        tool_name=call.name,
        arguments=json.loads(call.arguments),
        created_at=datetime.now(UTC),
        answer=answer,
    )


async def test_answers_run_deny_edit_or_answer_the_waiting_calls_in_call_order(
    tmp_path: Path,
) -> None:
    tool = RecordingTool()
    ctx, emitted = loop_context(tmp_path, [tool, AskUserTool()])
    calls = [
        _call("approved", "record", label="as asked"),
        _call("edited", "record", label="asked"),
        _call("denied", "record", label="no"),
        _call("unanswered", "record", label="later"),
        _call("asked", "ask_user", question="Colour?"),
        _call("declined", "ask_user", question="Size?"),
        _call("blank", "ask_user", question="Anything?"),
        _call("done", "record", label="before"),
    ]
    messages: list[Message] = [
        UserMessage(content="go"),
        AssistantMessage(tool_calls=tuple(calls)),
        _result("done"),
    ]
    requests = [  # in another order than the calls: results come in call order
        _request(calls[6], "question", InputAnswer(answer="")),
        _request(calls[5], "question", InputAnswer(approve=False, reason="private")),
        _request(calls[4], "question", InputAnswer(answer="blue")),
        _request(calls[3], "approval", None),
        _request(calls[2], "approval", InputAnswer(approve=False)),
        _request(calls[1], "approval", InputAnswer(approve=True, arguments={"label": "edited"})),
        _request(calls[0], "approval", InputAnswer(approve=True)),
        _request(calls[7], "approval", InputAnswer(approve=False)),  # has its result already
    ]
    results = await apply_answers(ctx, messages, requests)

    edited = '(the user edited the arguments to {"label": "edited"})\nedited'
    assert [(r.tool_call_id, r.tool_name, r.content, r.is_error) for r in results] == [
        ("approved", "record", "as asked", False),
        ("edited", "record", edited, False),
        ("denied", "record", "error: denied by the user", True),
        ("asked", "ask_user", "blue", False),
        ("declined", "ask_user", "error: denied by the user: private", True),
        ("blank", "ask_user", "", False),
    ]
    assert tool.log == ["enter as asked", "exit as asked", "enter edited", "exit edited"]
    starts = [(e.tool_call_id, e.tool_name, e.arguments) for e in emitted.of("tool_start")]
    assert starts == [
        ("approved", "record", {"label": "as asked"}),
        ("edited", "record", {"label": "edited"}),
        ("denied", "record", {"label": "no"}),
        ("asked", "ask_user", {"question": "Colour?"}),
        ("declined", "ask_user", {"question": "Size?"}),
        ("blank", "ask_user", {"question": "Anything?"}),
    ]
    completes = [(e.tool_call_id, e.result, e.elapsed_ms) for e in emitted.of("tool_complete")]
    assert completes[2:] == [("asked", "blue", 0), ("blank", "", 0)]
    assert [e.tool_call_id for e in emitted.of("tool_error")] == ["denied", "declined"]


async def test_after_a_recovery_an_approved_call_is_not_run_and_denials_stay_denials(
    tmp_path: Path,
) -> None:
    tool = RecordingTool()
    ctx, emitted = loop_context(tmp_path, [tool, AskUserTool()])
    calls = [
        _call("approved", "record", label="x"),
        _call("denied", "record", label="y"),
        _call("asked", "ask_user", question="Colour?"),
    ]
    messages: list[Message] = [AssistantMessage(tool_calls=tuple(calls))]
    requests = [
        _request(calls[0], "approval", InputAnswer(approve=True)),
        _request(calls[1], "approval", InputAnswer(approve=False, reason="no")),
        _request(calls[2], "question", InputAnswer(answer="red")),
    ]
    results = await apply_answers(ctx, messages, requests, recovered=True)

    assert [(r.content, r.is_error) for r in results] == [
        (f"error: {RECOVERED_APPROVAL}", True),
        ("error: denied by the user: no", True),
        ("red", False),
    ]
    assert tool.log == []
    starts = [(e.tool_call_id, e.arguments) for e in emitted.of("tool_start")]
    assert starts == [
        ("approved", {"label": "x"}),
        ("denied", {"label": "y"}),
        ("asked", {"question": "Colour?"}),
    ]
    assert [e.error for e in emitted.of("tool_error")] == [
        RECOVERED_APPROVAL,
        "denied by the user: no",
    ]


@pytest.mark.parametrize(
    ("timeout", "answer", "text"),
    [
        (
            5.0,
            InputAnswer(approve=False, timed_out=True),
            "denied: no answer from the user within 5 s",
        ),
        (
            0.25,
            InputAnswer(approve=False, timed_out=True, reason="x"),
            "denied: no answer from the user within 0.25 s",
        ),
        (
            None,
            InputAnswer(approve=False, timed_out=True),
            "denied: no answer from the user within 0 s",
        ),
        (5.0, InputAnswer(approve=False, reason="too risky"), "denied by the user: too risky"),
        (5.0, InputAnswer(approve=False, reason=""), "denied by the user"),
    ],
)
def test_a_denial_says_who_denied_and_why(
    tmp_path: Path, timeout: float | None, answer: InputAnswer, text: str
) -> None:
    session = Session(session_id="s", model="m", workspace=str(tmp_path), input_timeout=timeout)
    ctx, _ = loop_context(tmp_path, session=session)
    assert denial_text(answer, ctx) == text


async def test_a_request_that_timed_out_is_denied_with_the_sessions_timeout(
    tmp_path: Path,
) -> None:
    session = Session(session_id="s", model="m", workspace=str(tmp_path), input_timeout=30)
    ctx, _ = loop_context(tmp_path, [RecordingTool(), AskUserTool()], session=session)
    calls = [_call("a", "record", label="x"), _call("q", "ask_user", question="Colour?")]
    expired = InputAnswer(approve=False, timed_out=True)
    requests = [_request(calls[0], "approval", expired), _request(calls[1], "question", expired)]
    for recovered in (False, True):
        messages: list[Message] = [AssistantMessage(tool_calls=tuple(calls))]
        results = await apply_answers(ctx, messages, requests, recovered=recovered)
        assert [r.content for r in results] == [
            "error: denied: no answer from the user within 30 s"
        ] * 2
