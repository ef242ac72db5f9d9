"""A person's answer to a run's request for input: which answers fit which request (the API
refuses the others with the field and the reason shown here), and what each one counts as."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from culm.domain.input import InputAnswer, InputKind, InputOutcome

EDITED = {"path": "/tmp/x"}


@pytest.mark.parametrize(
    ("answer", "kind", "problem"),
    [
        # approvals
        ({"approve": True}, "approval", None),
        ({"approve": False, "reason": "no"}, "approval", None),
        ({"approve": True, "arguments": EDITED}, "approval", None),
        (
            {"approve": True, "answer": "yes"},
            "approval",
            ("answer", "only a question takes an answer (an approval: approve)"),
        ),
        ({}, "approval", ("approve", "an approval is answered with approve: true or false")),
        (
            {"reason": "why", "arguments": EDITED},
            "approval",
            ("approve", "an approval is answered with approve: true or false"),
        ),
        (
            {"approve": False, "arguments": EDITED},
            "approval",
            ("arguments", "edited arguments come with approve: true"),
        ),
        # questions
        ({"answer": "blue"}, "question", None),
        ({"answer": ""}, "question", None),
        ({"approve": False}, "question", None),
        ({"approve": True, "answer": "blue"}, "question", None),
        ({}, "question", ("answer", "a question is answered with answer (or approve: false)")),
        (
            {"approve": True},
            "question",
            ("answer", "a question is answered with answer (or approve: false)"),
        ),
        (
            {"answer": "blue", "arguments": EDITED},
            "question",
            ("arguments", "only an approval takes edited arguments"),
        ),
        (
            {"approve": False, "arguments": EDITED},
            "question",
            ("arguments", "only an approval takes edited arguments"),
        ),
    ],
)
def test_what_is_wrong_with_an_answer_names_its_field(
    answer: dict[str, Any], kind: InputKind, problem: tuple[str, str] | None
) -> None:
    assert InputAnswer(**answer).problem(kind) == problem


@pytest.mark.parametrize(
    ("answer", "kind", "outcome", "allowed"),
    [
        ({"approve": True}, "approval", "approved", True),
        ({"approve": True, "arguments": EDITED}, "approval", "approved", True),
        ({"approve": False}, "approval", "denied", False),
        ({}, "approval", "denied", False),
        ({"answer": "blue"}, "question", "answered", True),
        ({"answer": ""}, "question", "answered", True),
        ({"approve": True, "answer": "blue"}, "question", "answered", True),
        ({"approve": False}, "question", "declined", False),
        ({"approve": False, "answer": "blue"}, "question", "declined", False),
        ({"approve": False, "timed_out": True}, "approval", "timed_out", False),
        ({"approve": False, "timed_out": True}, "question", "timed_out", False),
        ({"approve": True, "timed_out": True}, "approval", "timed_out", True),
    ],
)
def test_an_answer_counts_as_one_outcome(
    answer: dict[str, Any], kind: InputKind, outcome: InputOutcome, allowed: bool
) -> None:
    given = InputAnswer(**answer)
    assert given.outcome(kind) == outcome
    assert given.allowed is allowed


def test_an_answer_takes_no_unknown_field_and_does_not_change() -> None:
    with pytest.raises(ValidationError):
        InputAnswer(approve=True, approved=True)  # type: ignore[call-arg]
    answer = InputAnswer(approve=True)
    with pytest.raises(ValidationError):
        answer.approve = False  # type: ignore[misc]
    assert InputAnswer().timed_out is False
