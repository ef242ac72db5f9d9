"""The public Python API is pinned: changing it must be a decision, not an accident."""

import pytest
from pydantic import ValidationError

import culm


def test_exported_names() -> None:
    assert sorted(culm.__all__) == [
        "Agent",
        "AgentDefinition",
        "AlreadyRunningError",
        "App",
        "AppLoadError",
        "AssistantMessage",
        "Client",
        "Compaction",
        "ConfigError",
        "CulmError",
        "Engine",
        "FunctionTool",
        "InputAnswer",
        "InputConflictError",
        "InputRequest",
        "Message",
        "MultitaskPolicy",
        "NotFoundError",
        "ReadOnlyError",
        "Run",
        "RunEvent",
        "RunFailure",
        "RunStatus",
        "RunTrigger",
        "Script",
        "Session",
        "SessionKind",
        "SessionSettings",
        "Settings",
        "SyncClient",
        "Tool",
        "ToolCall",
        "ToolContext",
        "ToolDefinitionError",
        "ToolFailure",
        "ToolResultMessage",
        "UnknownModelError",
        "UnknownToolError",
        "Usage",
        "UserError",
        "UserMessage",
        "__version__",
        "event_from_json",
        "event_to_json",
        "tool",
    ]
    for name in culm.__all__:
        assert hasattr(culm, name), name


def test_every_event_type_of_the_contract_round_trips() -> None:
    import typing

    from culm.domain import events

    union = typing.get_args(typing.get_args(events.RunEvent)[0])
    names = {cls.model_fields["type"].default for cls in union}
    assert names == {
        "execution_started", "runner_progress", "token", "reasoning_token", "tool_start",
        "tool_token", "tool_complete", "tool_error", "token_budget_updated", "round_completed",
        "sub_agent_started", "sub_agent_event", "sub_agent_heartbeat", "sub_agent_completed",
        "run_recovered", "complete", "cancelled", "error", "gap", "context_pressure",
        "context_compacted", "input_requested", "input_received",
    }  # fmt: skip


def test_a_stamped_event_is_the_validated_event_with_its_envelope() -> None:
    from datetime import UTC, datetime

    from culm.domain.events import ToolStart, event_from_json, event_to_json

    payload = ToolStart(tool_call_id="c1", tool_name="bash", arguments={"command": "ls"})
    ts = datetime(2026, 11, 21, 12, 0, 0, 1, tzinfo=UTC)
    event = payload.stamped(seq=7, run_id="r", session_id="s", ts=ts)

    expected = ToolStart(
        seq=7, run_id="r", session_id="s", ts=ts,
        tool_call_id="c1", tool_name="bash", arguments={"command": "ls"},
    )  # fmt: skip
    assert event == expected
    assert event.model_fields_set == expected.model_fields_set
    assert event_to_json(event) == event_to_json(expected)
    assert event_from_json(event_to_json(event)) == event
    assert payload.seq == 0 and payload.run_id == ""  # the payload is untouched
    assert event.arguments is payload.arguments  # a shallow copy, as model_copy makes
    with pytest.raises(ValidationError, match="frozen"):
        event.seq = 8  # type: ignore[misc]


@pytest.mark.parametrize("kind", ["token", "reasoning_token"])
def test_a_text_event_is_the_validated_event(kind: str) -> None:
    from culm.domain.events import ReasoningToken, Token, event_to_json, text_event

    cls = Token if kind == "token" else ReasoningToken
    built, validated = text_event(cls, "héllo"), cls(content="héllo")
    assert type(built) is cls and built == validated and built.type == kind
    assert built.model_fields_set == validated.model_fields_set == {"content"}
    assert event_to_json(built) == event_to_json(validated)
    stamped = built.stamped(seq=1, run_id="r", session_id="s", ts=validated.ts)
    assert stamped == validated.stamped(seq=1, run_id="r", session_id="s", ts=validated.ts)


def test_built_events_behave_as_validated_ones_in_every_pydantic_operation() -> None:
    import copy
    import pickle
    from datetime import UTC, datetime, timedelta, timezone

    from culm.domain.events import Token, text_event

    ts = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
    validated = Token(content="x").model_copy(
        update={"seq": 1, "run_id": "r", "session_id": "s", "ts": ts}
    )
    for built in (
        Token(content="x").stamped(seq=1, run_id="r", session_id="s", ts=ts),
        text_event(Token, "x").stamped(seq=1, run_id="r", session_id="s", ts=ts),
    ):
        assert built.model_dump(exclude_unset=True) == validated.model_dump(exclude_unset=True)
        assert built.model_dump_json(exclude_unset=True) == validated.model_dump_json(
            exclude_unset=True
        )
        local = timezone(timedelta(hours=2))
        moved = built.model_copy(update={"ts": ts.astimezone(local)})
        assert moved.ts == ts and built.ts.tzinfo is UTC  # a copy; the original is untouched
        assert copy.deepcopy(built) == pickle.loads(pickle.dumps(built)) == validated
        assert hash(built) == hash(validated)
