"""The prompt meter's and the limits' edges (found by mutation testing, issue #22): a report
of no prompt tokens is ignored and one of a single token is not, the system prompt and the
tools are part of what a report calibrates against, underestimates raise the ratio to its cap
of 3 and no further, and percentages of the window are given to a tenth."""

from __future__ import annotations

from culm.context import estimate
from culm.context.budget import ContextLimits, PromptMeter
from culm.domain.models import AssistantMessage, ToolCall, ToolResultMessage, Usage, UserMessage
from culm.providers.base import ModelRequest, ToolSpec

REQUEST = ModelRequest(system_prompt=None, messages=[UserMessage(content="x" * 400)])


def test_a_report_of_no_prompt_tokens_is_ignored_and_of_one_is_not() -> None:
    meter = PromptMeter()
    meter.reported(REQUEST, 0, Usage(prompt_tokens=0))
    assert (meter.ratio, meter.measure(REQUEST, 0)) == (1.0, (104, True))

    meter.reported(REQUEST, 0, Usage(prompt_tokens=1))
    assert meter.measure(REQUEST, 0) == (1, False)


def test_a_report_calibrates_against_the_whole_request_system_prompt_included() -> None:
    request = ModelRequest(system_prompt="s" * 4000, messages=REQUEST.messages)
    ours = estimate.request_tokens(request.system_prompt, request.messages, request.tools)
    meter = PromptMeter()

    meter.reported(request, 0, Usage(prompt_tokens=ours))

    assert meter.ratio == 1.0


def test_underestimates_raise_the_ratio_to_three_at_most() -> None:
    meter = PromptMeter()
    for _ in range(10):
        meter.underestimated()
    assert meter.ratio == 3.0


def test_a_report_calibrates_against_the_tools_too() -> None:
    tool = ToolSpec(name="bash", description="d" * 400, parameters={"type": "object"})
    request = ModelRequest(system_prompt=None, messages=REQUEST.messages, tools=[tool])
    ours = estimate.request_tokens(request.system_prompt, request.messages, request.tools)
    meter = PromptMeter()

    meter.reported(request, 0, Usage(prompt_tokens=ours))

    assert meter.ratio == 1.0


def test_a_report_for_a_request_we_estimate_empty_keeps_the_ratio() -> None:
    meter = PromptMeter()
    empty = ModelRequest(system_prompt=None, messages=[])

    meter.reported(empty, 0, Usage(prompt_tokens=50))

    assert (meter.ratio, meter.measure(empty, 0)) == (1.0, (50, False))


def test_limits_give_percentages_of_the_window_to_a_tenth() -> None:
    limits = ContextLimits(window=3000, output_reserve=500, working_reserve=500)

    assert limits.percent(1000) == 33.3
    assert limits.percent(1500) == 50.0
    assert (limits.trigger, limits.target) == (2000, 1500)


def test_a_tool_costs_its_framing_its_name_and_description_and_its_parameters() -> None:
    tool = ToolSpec(name="bash", description="d" * 12, parameters={"type": "object"})
    # 8 framing + (4 + 12) / 4 + len("{'type': 'object'}") = 18 -> 5
    assert estimate.tools_tokens([tool]) == 8 + 4 + 5


def test_a_report_calibrates_within_a_half_and_three() -> None:
    meter = PromptMeter()
    meter.reported(REQUEST, 0, Usage(prompt_tokens=104 * 10))
    assert meter.ratio == 3.0
    meter.reported(REQUEST, 0, Usage(prompt_tokens=10))
    assert meter.ratio == 0.5


def test_a_whole_estimate_counts_the_system_prompt_with_its_framing_and_the_tools() -> None:
    tool = ToolSpec(name="bash", description="d" * 12, parameters={"type": "object"})
    request = ModelRequest(system_prompt="s" * 40, messages=REQUEST.messages, tools=[tool])
    # (4 framing + 40 / 4) + 104 for the message + 17 for the tool
    assert estimate.request_tokens(request.system_prompt, request.messages, request.tools) == 135
    assert PromptMeter().measure(request, 0) == (135, True)


def test_after_an_underestimate_the_next_measure_is_a_whole_estimate_again() -> None:
    meter = PromptMeter()
    meter.reported(REQUEST, 0, Usage(prompt_tokens=208))
    meter.underestimated()
    assert meter.measure(REQUEST, 0) == (260, True)  # 104 * 2.5, not the report of 208


def test_a_message_costs_its_framing_text_reasoning_and_each_call() -> None:
    assert [estimate.text_tokens("x" * n) for n in (0, 1, 4, 5)] == [0, 1, 1, 2]
    calls = tuple(ToolCall(id=f"c{i}", name="abcd", arguments="x" * 8) for i in range(2))
    assistant = AssistantMessage(content="c" * 4, reasoning="r" * 8, tool_calls=calls)
    # 4 framing + 1 text + 2 reasoning + 2 calls of (8 framing + 1 name + 2 arguments)
    assert estimate.message_tokens(assistant) == 29
    result = ToolResultMessage(tool_call_id="c0", tool_name="abcd", content="x" * 4)
    assert estimate.message_tokens(result) == 4 + 1 + 8
