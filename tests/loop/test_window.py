"""The context window's default limits for a run without a session budget
(``loop/window.py``; found by mutation testing, issue #22)."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from culm.context.budget import ContextLimits
from culm.context.view import SUMMARY_HEADER, model_view
from culm.domain.compaction import Compaction
from culm.domain.models import (
    Message,
    Session,
    Usage,
    UserMessage,
)
from culm.errors import ContextOverflowError, ModelRequestError
from culm.loop.context import ContextSettings, LoopState
from culm.loop.spend import RunBudget
from culm.loop.window import (
    DEFAULT_WINDOW,
    SUMMARY_SYSTEM_PROMPT,
    ContextWindow,
    default_limits,
)
from culm.providers.base import ModelRequest
from culm.providers.scripted import Script, ScriptedModel
from tests.loop.harness import (
    SUMMARY_USAGE,
    Emitted,
    SavedCompactions,
    Summarizer,
    loop_context,
    tool_round,
    transcript,
)
from tests.support import RecordingTool


def test_the_default_reserves_are_a_quarter_and_an_eighth_of_the_window_capped() -> None:
    assert DEFAULT_WINDOW == 128_000
    found = [
        (limits.window, limits.output_reserve, limits.working_reserve)
        for limits in map(default_limits, (None, 10_001, 20_000, 80_000))
    ]
    assert found == [
        (128_000, 8192, 2048),  # no window known: 128k, both reserves at their caps
        (10_001, 2500, 1250),  # whole tokens
        (20_000, 5000, 2048),
        (80_000, 8192, 2048),
    ]
    assert all(type(value) is int for row in found for value in row)


# The window itself, on a loop context built by hand (the engine's tests in tests/context reach
# it too, through a server that enforces a window: minutes per mutant).


async def _window(
    tmp_path: Path,
    messages: list[Message],
    limits: ContextLimits | None,
    summarizer: Summarizer | None = None,
    saved: SavedCompactions | None = None,
    **fields: Any,
) -> tuple[ContextWindow, LoopState, Emitted, SavedCompactions]:
    saved = saved or SavedCompactions()
    settings = ContextSettings(
        limits=limits, summarizer=summarizer, load=saved.load, save=saved.save
    )
    ctx, emitted = loop_context(tmp_path, context=settings, **fields)
    state = LoopState(messages=messages)
    return await ContextWindow.open(ctx, state), state, emitted, saved


def _anchor(window: ContextWindow, prompt_tokens: int) -> None:
    """The provider reports ``prompt_tokens`` for the request of the view as it is now."""
    window.reported(
        ModelRequest(system_prompt=None, messages=window.view()), Usage(prompt_tokens=prompt_tokens)
    )


async def test_the_budget_is_announced_before_each_call_and_each_pressure_level_once(
    tmp_path: Path,
) -> None:
    limits = ContextLimits(window=1000, output_reserve=0, working_reserve=0, auto_compact=False)
    window, _, emitted, _ = await _window(tmp_path, [UserMessage(content="hi")], limits)
    levels: list[tuple[int, list[tuple[float, str]]]] = []
    for reported in (None, 699, 700, 899, 900, 1200, 700):
        if reported is not None:
            _anchor(window, reported)
        emitted.clear()
        await window.prepare()
        budget = emitted.of("token_budget_updated")[-1].usage
        levels.append(
            (budget.prompt_tokens, [(e.percent, e.level) for e in emitted.of("context_pressure")])
        )
    first = levels[0][0]
    assert 0 < first < 50
    assert levels == [
        (first, []),
        (699, []),
        (700, [(70.0, "warning")]),  # the warning at 70 %,
        (899, []),
        (900, [(90.0, "critical")]),  # the critical level at 90 %,
        (1200, []),
        (700, []),  # each once a run
    ]


async def test_the_budget_says_whether_it_is_estimated_and_what_the_run_spent(
    tmp_path: Path,
) -> None:
    limits = ContextLimits(window=1000, output_reserve=0, working_reserve=0)
    budget = RunBudget(max_tokens=5000, max_cost_usd=2.5)
    window, state, emitted, _ = await _window(
        tmp_path, [UserMessage(content="hi")], limits, budget=budget, budget_limit=777
    )
    state.spend.add(Usage(total_tokens=120), 0.5)
    request = await window.prepare()
    usage = Usage(prompt_tokens=300, completion_tokens=20, total_tokens=320)
    window.reported(request, usage)
    estimated, exact = (e.usage for e in emitted.of("token_budget_updated"))
    assert estimated.estimated and not exact.estimated
    assert (exact.prompt_tokens, exact.completion_tokens, exact.total_tokens) == (300, 20, 320)
    assert (estimated.completion_tokens, estimated.total_tokens) == (0, 0)
    for shown in (estimated, exact):
        assert shown.max_context_tokens == 1000
        assert shown.budget_limit == 777
        assert shown.percent == round(shown.prompt_tokens / 10, 1)
        assert (shown.max_tokens, shown.max_cost_usd) == (5000, 2.5)
        assert (shown.spent_tokens, shown.spent_cost_usd) == (120, 0.5)
    assert exact.percent == 30.0
    await window.prepare()  # the same view as reported: the provider's count
    assert emitted.of("token_budget_updated")[-1].usage.prompt_tokens == 300

    unlimited, state, emitted, _ = await _window(tmp_path, [UserMessage(content="hi")], limits)
    state.spend.add(Usage(total_tokens=120), 0.5)
    await unlimited.prepare()
    shown = emitted.of("token_budget_updated")[-1].usage
    assert (shown.max_tokens, shown.max_cost_usd, shown.spent_tokens, shown.spent_cost_usd) == (
        None,
        None,
        None,
        None,
    )
    assert shown.budget_limit is None


SMALL = ContextLimits(window=1000, output_reserve=100, working_reserve=100, trigger_percent=80)


def _priced(model: str, usage: Usage) -> float | None:
    return usage.total_tokens / 360 if model == "test:summarizer" else None


async def test_a_request_past_the_trigger_is_compacted_first_and_the_compaction_stored(
    tmp_path: Path,
) -> None:
    summarizer = Summarizer("  the summary \n")
    window, state, emitted, saved = await _window(
        tmp_path, transcript(4), SMALL, summarizer, run_id="r1", price=_priced
    )
    state.round = 3
    state.usage = Usage(prompt_tokens=1000, total_tokens=1000)  # the run's rounds so far
    _anchor(window, 800)  # at the trigger (80 % of 1000): not past it
    await window.prepare()
    assert summarizer.requests == [] and saved.saved == []
    _anchor(window, 801)
    emitted.clear()
    request = await window.prepare()

    assert [e.type for e in emitted] == [
        "round_completed",
        "context_compacted",
        "token_budget_updated",
        "context_pressure",
    ]
    metered, compacted, budget, _ = emitted
    assert (metered.round, metered.usage, metered.model, metered.cost_usd) == (
        3,
        SUMMARY_USAGE,
        "test:summarizer",
        0.125,
    )
    assert metered.compaction and not metered.partial and metered.error is None
    assert 0 <= metered.latency_ms < 60_000
    assert state.usage == Usage(prompt_tokens=1040, completion_tokens=5, total_tokens=1045)
    [stored] = saved.saved
    assert window.compaction == stored and stored.seq == 1
    assert (stored.session_id, stored.run_id, stored.trigger) == ("s", "r1", "auto")
    assert (stored.summary, stored.summary_model) == ("the summary", "test:summarizer")
    assert (compacted.trigger, compacted.strategy) == ("auto", stored.strategy)
    assert (compacted.messages_compacted, compacted.summary_usage) == (5, SUMMARY_USAGE)
    assert (compacted.tokens_before, compacted.tokens_after) == (
        stored.tokens_before,
        stored.tokens_after,
    )
    assert compacted.tokens_after < compacted.tokens_before
    # the request is made on the new view, measured afresh (a new view has no report yet)
    assert list(request.messages) == model_view(state.messages, stored) == window.view()
    assert request.messages[0].content == SUMMARY_HEADER + "the summary"
    assert budget.usage.prompt_tokens == compacted.tokens_after and budget.usage.estimated


async def test_the_summarizer_is_the_runs_model_unless_one_is_set(tmp_path: Path) -> None:
    model = Summarizer("by the run's model", name="test:agent")
    window, _, emitted, saved = await _window(tmp_path, transcript(4), SMALL, model=model)
    await window.compact("manual")
    assert model.requests and saved.saved[0].summary_model == "test:agent"
    rounds = emitted.of("round_completed")
    assert [(e.model, e.cost_usd) for e in rounds] == [("test:agent", None)] * len(model.requests)


async def test_a_manual_compaction_compacts_all_it_may_and_is_announced_even_when_empty(
    tmp_path: Path,
) -> None:
    summarizer = Summarizer("first", "second")
    messages = transcript(4, "x" * 400)
    window, state, emitted, saved = await _window(tmp_path, messages, SMALL, summarizer)
    window.compact_requested = True
    await window.prepare()  # far below the trigger: compacted because asked
    assert not window.compact_requested
    assert [(e.trigger, e.messages_compacted) for e in emitted.of("context_compacted")] == [
        ("manual", 5)
    ]
    [request] = summarizer.requests
    assert request.messages[0].content.startswith("Conversation to summarize:\nUser: read the")

    emitted.clear()
    await window.prepare()  # not asked again: no compaction
    assert emitted.of("context_compacted") == []
    window.compact_requested = True
    await window.prepare()  # nothing left to compact: said so all the same
    [empty] = emitted.of("context_compacted")
    assert (empty.trigger, empty.messages_compacted, empty.strategy) == ("manual", 0, "none")
    assert len(saved.saved) == 1 and len(summarizer.requests) == 1

    state.messages += tool_round(4, "y" * 4000) + tool_round(5, "z" * 4000)
    emitted.clear()
    window.compact_requested = True
    await window.prepare()
    second = summarizer.requests[1].messages[0].content
    assert second.startswith("Previous summary:\nfirst\n\nConversation to summarize:\n")
    assert saved.saved[-1].summary == "second" and len(saved.saved) == 2
    assert window.view() == model_view(state.messages, saved.saved[-1])


@pytest.mark.parametrize(
    ("limits", "max_tokens", "parts"),
    [
        (SMALL, 128, 6),  # at least 128 tokens; 372 tokens of conversation a part: a round
        (ContextLimits(window=4000, output_reserve=300, working_reserve=0), 300, 1),
        # target 2001 tokens: a quarter is 500 whole tokens
        (ContextLimits(window=4002, output_reserve=1000, working_reserve=0), 500, 2),
        (ContextLimits(window=40000, output_reserve=8000, working_reserve=2000), 2048, 1),
    ],
)
async def test_a_summary_may_take_the_output_reserve_a_quarter_of_the_target_or_2048_tokens(
    tmp_path: Path, limits: ContextLimits, max_tokens: int, parts: int
) -> None:
    """The summarizer may write min(output reserve, target / 4, 2048) tokens, at least 128, in
    0.6 words a token; what is left of the target is the conversation one call is given."""
    summarizer = Summarizer("summary")
    window, _, _, _ = await _window(tmp_path, transcript(8), limits, summarizer)
    await window.compact("manual")
    assert len(summarizer.requests) == parts
    request = summarizer.requests[0]
    assert request.max_output_tokens == max_tokens
    assert request.system_prompt == SUMMARY_SYSTEM_PROMPT.format(words=int(max_tokens * 0.6))
    assert f"at most {int(max_tokens * 0.6)} words." in request.system_prompt


@pytest.mark.parametrize(("previous", "rounds"), [(None, [5, 1]), ("p" * 1000, [3, 3])])
async def test_a_previous_summary_is_taken_twice_from_what_one_summarizer_call_is_given(
    tmp_path: Path, previous: str | None, rounds: list[int]
) -> None:
    """Target 2000 tokens, less 500 for the summary written, less twice the previous summary
    (read and rewritten): 1500 tokens (6000 characters, five rounds of about 1070) without
    one, 1000 (4000 characters, three rounds) with a 250-token one."""
    limits = ContextLimits(window=4000, output_reserve=1000, working_reserve=0)
    earlier = Compaction(
        session_id="s",
        seq=1,
        trigger="auto",
        strategy="summarize",
        summary=previous,
        message_count=0,
        tokens_before=0,
        tokens_after=0,
    )
    summarizer = Summarizer("summary")
    window, _, _, _ = await _window(
        tmp_path, transcript(8), limits, summarizer, SavedCompactions(earlier)
    )
    await window.compact("manual")
    given = [r.messages[0].content.count("Assistant called") for r in summarizer.requests]
    assert given == rounds


WHOLE = replace(SMALL, elide_head_chars=5000)  # no output elided: each is shown whole
TINY = replace(WHOLE, window=600)  # target 300 tokens: the summary's 128 leave too little


@pytest.mark.parametrize(
    ("limits", "earlier", "output", "rounds"),
    [
        # 500 - 128 = 372 tokens, 1488 characters; a round shows as 73 + its output's
        (WHOLE, None, 1415, 1),  # 1488: it fits
        (WHOLE, None, 1416, 0),  # 1489: it does not (the part is the user's message alone)
        (
            WHOLE,
            Compaction(
                session_id="s",
                trigger="auto",
                strategy="elide",
                message_count=0,
                tokens_before=0,
                tokens_after=0,
            ),
            1412,
            1,
        ),  # no summary: no tokens
        (TINY, None, 951, 1),  # at least 256 tokens, 1024 characters
        (TINY, None, 952, 0),
    ],
)
async def test_one_summarizer_call_is_given_what_fits_the_summary_budget_exactly(
    tmp_path: Path, limits: ContextLimits, earlier: Compaction | None, output: int, rounds: int
) -> None:
    summarizer = Summarizer("summary")
    window, _, _, _ = await _window(
        tmp_path, transcript(4, "o" * output), limits, summarizer, SavedCompactions(earlier)
    )
    await window.compact("manual")
    assert summarizer.requests[0].messages[0].content.count("Assistant called") == rounds


async def test_a_compaction_measures_the_request_as_it_is_sent(tmp_path: Path) -> None:
    """The system prompt and the tools' specs are part of every request, so of the measure
    before and after a compaction: with no report yet, it is the estimate of the request."""
    session = Session(
        session_id="s", model="m", workspace=str(tmp_path), system_prompt="Be brief. " * 300
    )
    limits = replace(SMALL, auto_compact=False)
    window, _, emitted, _ = await _window(
        tmp_path, transcript(4), limits, Summarizer("s"), session=session, tools=[RecordingTool()]
    )
    await window.prepare()
    estimate = emitted.of("token_budget_updated")[0].usage.prompt_tokens
    done = await window.compact("manual")
    assert done.tokens_before == estimate
    emitted.clear()
    await window.prepare()
    assert emitted.of("token_budget_updated")[0].usage.prompt_tokens == done.tokens_after


async def test_a_report_holds_for_the_view_it_was_made_on_only(tmp_path: Path) -> None:
    """Each compaction makes a new view: a report on an earlier one says nothing of it."""
    summarizer = Summarizer("one", "two")
    window, state, emitted, saved = await _window(tmp_path, transcript(4), SMALL, summarizer)
    await window.compact("manual")
    _anchor(window, 9000)  # far from any estimate (more than 3x)
    reported = len(window.view())
    state.messages += tool_round(4, "y" * 400) + tool_round(5, "z" * 400)
    done = await window.compact("manual")
    assert done.messages_compacted > 0 and len(window.view()) == reported
    assert done.tokens_before < 9000
    emitted.clear()
    await window.prepare()
    budget = emitted.of("token_budget_updated")[0].usage
    assert budget.estimated and budget.prompt_tokens == done.tokens_after


async def test_an_elision_alone_keeps_the_summary_and_its_summarizer(tmp_path: Path) -> None:
    limits = ContextLimits(
        window=4000,
        output_reserve=1000,
        working_reserve=0,
        elide_head_chars=100,
        elide_tail_chars=100,
    )
    earlier = Compaction(
        session_id="s",
        seq=1,
        trigger="auto",
        strategy="summarize",
        summary="earlier",
        message_count=0,
        tokens_before=0,
        tokens_after=0,
        summary_model="test:old",
    )
    for first, summarizer in ((earlier, "test:old"), (None, None)):
        messages = transcript(5, "w" * 2800)
        model = Summarizer("unused")
        window, _, _, saved = await _window(
            tmp_path, messages, limits, model, SavedCompactions(first)
        )
        assert window.compaction == first
        done = await window.compact("auto")
        assert model.requests == []
        assert (done.strategy, done.messages_compacted) == ("elide", 3)
        assert (done.summary, done.summary_model) == (first and first.summary, summarizer)
        assert saved.saved == [done]


async def test_a_failed_summarizer_call_is_metered_when_it_reported_usage(
    tmp_path: Path,
) -> None:
    failure = ModelRequestError("no summaries today", status=400)
    metered: list[list[Any]] = []
    for usage in (SUMMARY_USAGE, None):
        summarizer = Summarizer("cut", usage=usage, fail=failure)
        window, state, emitted, saved = await _window(tmp_path, transcript(4), SMALL, summarizer)
        with pytest.raises(ModelRequestError):
            await window.compact("manual")
        assert saved.saved == [] and state.usage == (usage or Usage())
        metered.append(emitted.of("round_completed"))
    [cut], unreported = metered
    assert unreported == []  # nothing reported: nothing to meter
    assert (cut.partial, cut.error, cut.compaction) == (True, str(failure), True)
    assert cut.usage == SUMMARY_USAGE


async def test_a_cancelled_summarizer_call_is_metered_as_cancelled(tmp_path: Path) -> None:
    streaming = asyncio.Event()
    summarizer = Summarizer("cut", hang=streaming)
    window, state, emitted, _ = await _window(tmp_path, transcript(4), SMALL, summarizer)
    task = asyncio.create_task(window.compact("manual"))
    await streaming.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    [cut] = emitted.of("round_completed")
    assert (cut.partial, cut.error, cut.usage) == (True, "cancelled", SUMMARY_USAGE)
    assert state.usage == SUMMARY_USAGE


async def test_an_overflow_is_compacted_and_retried_or_said_to_be_hopeless(
    tmp_path: Path,
) -> None:
    refused = ModelRequestError("prompt is too long", status=400)
    window, _, emitted, _ = await _window(tmp_path, [UserMessage(content="hi")], SMALL)
    request = await window.prepare()
    _anchor(window, 1500)
    ratio = window.meter.ratio
    with pytest.raises(ContextOverflowError) as hopeless:
        await window.recover(request, refused)
    assert str(hopeless.value) == (
        "the model refused the request as too long (prompt is too long); the request was "
        "about 1500 tokens for a 1000-token window, and compaction found nothing left to "
        "compact (the last rounds and user turns are kept verbatim)"
    )
    assert window.meter.ratio == min(3.0, ratio * 1.25)  # estimates are raised from now on

    summarizer = Summarizer("summary")
    manual_only = replace(SMALL, auto_compact=False)
    window, state, emitted, saved = await _window(tmp_path, transcript(4), manual_only, summarizer)
    request = await window.prepare()
    assert saved.saved == []
    _anchor(window, 900)
    emitted.clear()
    retry = await window.recover(request, refused)
    assert [e.type for e in emitted][1:3] == ["context_compacted", "token_budget_updated"]
    assert emitted.of("context_compacted")[0].trigger == "overflow"
    assert saved.saved[0].trigger == "overflow"
    assert list(retry.messages) == window.view() == model_view(state.messages, saved.saved[0])
    announced = emitted.of("token_budget_updated")[0].usage
    assert announced.prompt_tokens == window.meter.measure(retry, 1)[0] and announced.estimated

    _anchor(window, 9000)  # past what calibration allows (3x our 2087): only a report says it
    again = window.overflowed_again(retry, refused)
    assert str(again) == (
        "the model refused the request as too long (prompt is too long); it was compacted "
        "(tool outputs elided, older turns summarized) to about 9000 tokens for a "
        "1000-token window and retried once, and was refused again"
    )


async def test_the_view_follows_the_transcript_and_its_compaction(tmp_path: Path) -> None:
    messages = transcript(4)
    window, state, _, _ = await _window(tmp_path, messages, SMALL, Summarizer("s"))
    assert window.view() == messages
    state.messages = [*messages, UserMessage(content="more")]
    assert window.view() == state.messages
    await window.compact("manual")
    assert window.view() == model_view(state.messages, window.compaction)
    state.messages += tool_round(9, "v" * 4000)
    assert window.view() == model_view(state.messages, window.compaction)
    state.messages = state.messages[:3]  # shorter than what the view saw: made afresh
    assert window.view() == model_view(state.messages, window.compaction)


async def test_without_limits_the_window_is_the_models_own(tmp_path: Path) -> None:
    model = ScriptedModel("scripted:w", Script(turns=[], max_context_tokens=5000))
    window, _, emitted, _ = await _window(tmp_path, [UserMessage(content="hi")], None, model=model)
    assert (window.limits.window, window.limits.output_reserve) == (5000, 1250)
    await window.prepare()
    assert emitted.of("token_budget_updated")[0].usage.max_context_tokens == 5000
