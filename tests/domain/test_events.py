"""Run events: the envelope stamped on a copy, text events built without validation, and the
JSON every wire carries."""

from __future__ import annotations

import json
import pickle
from datetime import UTC, datetime

import pytest

from culm.domain.events import (
    Cancelled,
    Complete,
    Error,
    ReasoningToken,
    RunnerProgress,
    Token,
    event_from_dict,
    event_from_json,
    event_to_dict,
    event_to_json,
    is_terminal,
    text_event,
)
from culm.domain.models import Usage

T = datetime(2026, 12, 1, 9, 30, tzinfo=UTC)


def test_stamped_is_a_copy_with_the_envelope_as_if_validated() -> None:
    event = RunnerProgress(round_count=2)
    stamped = event.stamped(seq=7, run_id="r", session_id="s", ts=T)
    assert (event.seq, event.run_id, event.session_id) == (0, "", "")  # untouched
    built = RunnerProgress(round_count=2, seq=7, run_id="r", session_id="s", ts=T)
    assert stamped == built
    assert type(stamped) is RunnerProgress
    assert stamped.model_fields_set == {"round_count", "seq", "run_id", "session_id", "ts"}
    assert event.model_fields_set == {"round_count"}
    assert event_to_json(stamped) == event_to_json(built)
    assert stamped.model_extra is None
    assert event_from_json(event_to_json(stamped)) == stamped


@pytest.mark.parametrize(("kind", "name"), [(Token, "token"), (ReasoningToken, "reasoning_token")])
def test_text_event_is_what_validation_would_build(
    kind: type[Token] | type[ReasoningToken], name: str
) -> None:
    event = text_event(kind, "hé\x00")
    validated = kind(content="hé\x00")
    assert event == validated
    assert type(event) is kind and event.type == name
    assert event.model_fields_set == {"content"}
    assert event_to_dict(event) == event_to_dict(validated)
    stamped = event.stamped(seq=1, run_id="r", session_id="s", ts=T)
    assert event_from_dict(event_to_dict(stamped)) == stamped


def test_a_lone_surrogate_in_an_event_is_replaced_in_its_json() -> None:
    event = Token(content="a\ud83d", seq=1, run_id="r", session_id="s", ts=T)
    assert json.loads(event_to_json(event))["content"] == "a\ufffd"


def test_the_terminal_events() -> None:
    terminal = [
        Complete(usage=Usage(), final_message=""),
        Cancelled(reason="x"),
        Error(message="m", code="c"),
    ]
    assert all(is_terminal(event) for event in terminal)
    assert not is_terminal(RunnerProgress(round_count=1))
    assert not is_terminal(Token(content="complete"))


def test_built_events_are_whole_pydantic_objects() -> None:
    """What ``stamped`` and ``text_event`` build without validating pickles, copies and dumps
    as a validated event does."""
    stamped = RunnerProgress(round_count=2).stamped(seq=7, run_id="r", session_id="s", ts=T)
    token = text_event(Token, "x")
    for event in (stamped, token):
        assert pickle.loads(pickle.dumps(event)) == event
        assert event.model_copy(update={"seq": 9}).seq == 9


def test_event_to_dict_is_json_ready() -> None:
    event = RunnerProgress(round_count=2).stamped(seq=7, run_id="r", session_id="s", ts=T)
    data = event_to_dict(event)
    assert data == {
        "seq": 7,
        "run_id": "r",
        "session_id": "s",
        "ts": "2026-12-01T09:30:00Z",
        "type": "runner_progress",
        "round_count": 2,
    }
    assert json.loads(json.dumps(data)) == data
