"""The public Python API is pinned: changing it must be a decision, not an accident."""

import culm


def test_exported_names() -> None:
    assert sorted(culm.__all__) == [
        "AlreadyRunningError",
        "AssistantMessage",
        "ConfigError",
        "CulmError",
        "Engine",
        "Message",
        "MultitaskPolicy",
        "NotFoundError",
        "Run",
        "RunEvent",
        "RunFailure",
        "RunStatus",
        "RunTrigger",
        "Script",
        "Session",
        "SessionKind",
        "Settings",
        "Tool",
        "ToolCall",
        "ToolContext",
        "ToolResultMessage",
        "UnknownModelError",
        "UnknownToolError",
        "Usage",
        "UserError",
        "UserMessage",
        "__version__",
        "event_from_json",
        "event_to_json",
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
        "run_recovered", "complete", "cancelled", "error", "gap",
    }  # fmt: skip
