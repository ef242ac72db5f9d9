"""Compaction as a pure function of the transcript (a fake summarizer, no model)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from culm.context import estimate
from culm.context.budget import ContextLimits
from culm.context.compaction import (
    CompactionRequest,
    compact,
    kept_user_turns,
    protected_start,
    render,
)
from culm.context.view import SUMMARY_HEADER, elide, model_view, shown, summary_message
from culm.domain.compaction import Compaction
from culm.domain.models import (
    AssistantMessage,
    Message,
    ToolCall,
    ToolResultMessage,
    Usage,
    UserMessage,
)

LIMITS = ContextLimits(window=4096, output_reserve=1024, working_reserve=512)


def _size(view: Sequence[Message]) -> int:
    return estimate.messages_tokens(view)


class FakeSummarizer:
    def __init__(self) -> None:
        self.calls: list[tuple[str | None, str]] = []

    async def __call__(self, previous: str | None, text: str) -> tuple[str, Usage]:
        self.calls.append((previous, text))
        return f"summary {len(self.calls)}", Usage(prompt_tokens=7, completion_tokens=3)


def _request(
    messages: Sequence[Message],
    previous: Compaction | None = None,
    *,
    target: int = 0,
    summarizer: FakeSummarizer | None = None,
) -> CompactionRequest:
    return CompactionRequest(
        session_id="s",
        run_id=None,
        trigger="manual",
        messages=messages,
        previous=previous,
        limits=LIMITS,
        target=target,
        size=_size,
        summarize=summarizer,
        summary_chars=4000,
    )


def _round(n: int, calls: int, size: int) -> list[Message]:
    ids = [f"c{n}_{i}" for i in range(calls)]
    assistant = AssistantMessage(
        content=f"round {n}", tool_calls=tuple(ToolCall(id=i, name="t") for i in ids)
    )
    results = [ToolResultMessage(tool_call_id=i, tool_name="t", content="r" * size) for i in ids]
    return [assistant, *results]


def _transcript(shape: list[tuple[bool, int, int]], start: int = 0) -> list[Message]:
    """``shape``: per step, (a user turn first?, tool calls in the round, output size)."""
    messages: list[Message] = []
    for n, (user, calls, size) in enumerate(shape, start=start):
        if user or not messages:
            messages.append(UserMessage(content=f"user {n}"))
        messages += _round(n, calls, size)
    return messages


def _pairs_intact(view: Sequence[Message]) -> bool:
    """Every tool result directly follows its call's message (with the other results)."""
    open_calls: set[str] = set()
    for message in view:
        if isinstance(message, ToolResultMessage):
            if message.tool_call_id not in open_calls:
                return False
            open_calls.discard(message.tool_call_id)
            continue
        if open_calls:
            return False
        if isinstance(message, AssistantMessage):
            open_calls = {call.id for call in message.tool_calls}
    return not open_calls


shapes = st.lists(
    st.tuples(st.booleans(), st.integers(0, 3), st.integers(0, 3000)), min_size=1, max_size=25
)


@settings(max_examples=150, deadline=None)
@given(shape=shapes, rounds=st.integers(1, 12), target=st.integers(0, 3000))
def test_tool_calls_and_results_are_never_separated(
    shape: list[tuple[bool, int, int]], rounds: int, target: int
) -> None:
    """Over random transcripts and repeated compactions, the view keeps every pair whole and
    the last rounds verbatim."""

    async def main() -> None:
        messages = _transcript(shape)
        previous = None
        summarizer = FakeSummarizer()
        for cut in sorted({len(messages) * k // rounds for k in range(1, rounds + 1)}):
            part = messages[:cut]
            if part and isinstance(part[-1], AssistantMessage) and part[-1].tool_calls:
                continue  # a round is stored with its results, never without
            if part and isinstance(part[-1], ToolResultMessage):
                following = messages[cut] if cut < len(messages) else None
                if isinstance(following, ToolResultMessage):
                    continue
            previous = await compact(_request(part, previous, target=target, summarizer=summarizer))
            view = model_view(part, previous)
            assert _pairs_intact(view)
            keep = protected_start(part, LIMITS.keep_rounds)
            assert view[len(view) - (len(part) - keep) :] == list(part[keep:]) or keep == len(part)

    asyncio.run(main())


async def test_old_outputs_are_elided_first_with_a_marker_and_the_last_rounds_kept() -> None:
    messages = _transcript([(True, 1, 5000), (True, 1, 5000), (True, 1, 5000), (True, 1, 5000)])
    result = await compact(_request(messages, target=3000))
    assert result.strategy == "elide"
    view = model_view(messages, result)
    assert len(view) == len(messages)
    assert "characters of this tool output elided" in view[2].content
    assert "elided" in view[5].content  # the last round before the 2 kept ones is elided too
    assert view[7:] == messages[7:]  # the last 2 rounds (from their model message) as stored
    assert view[2].content.startswith("r" * 600) and view[2].content.endswith("r" * 300)
    assert view[-1] == messages[-1] and view[-4] == messages[-4]  # the last 2 rounds as stored
    assert result.tokens_after < result.tokens_before


async def test_summaries_fold_and_keep_the_last_user_turns_verbatim() -> None:
    summarizer = FakeSummarizer()
    messages = _transcript([(True, 1, 100)] * 6)
    first = await compact(_request(messages, summarizer=summarizer))
    messages += _transcript([(True, 1, 100)] * 3, start=6)
    second = await compact(_request(messages, first, summarizer=summarizer))
    assert first.summary == "summary 1" and second.summary == "summary 2"
    assert summarizer.calls[1][0] == "summary 1"  # the previous summary is folded in
    assert "user 0" not in summarizer.calls[1][1]  # only what the first did not cover
    view = model_view(messages, second)
    assert view[0] == UserMessage(content=SUMMARY_HEADER + "summary 2")
    users = [m for m in messages if isinstance(m, UserMessage)]
    assert [m for m in view if m in users[-2:]] == users[-2:]
    assert second.summary_usage == Usage(prompt_tokens=7, completion_tokens=3)


async def test_nothing_to_compact_changes_nothing() -> None:
    messages = _transcript([(True, 1, 100)])
    result = await compact(_request(messages, summarizer=FakeSummarizer()))
    assert (result.strategy, result.messages_compacted) == ("none", 0)
    assert model_view(messages, result) == messages


def test_the_last_user_turns_before_the_end_are_kept() -> None:
    messages = _transcript([(True, 0, 0)] * 5)  # user, assistant, user, assistant, …
    assert kept_user_turns(messages, 10, 2) == (6, 8)
    assert kept_user_turns(messages, 8, 2) == (6,)  # the turn at the end itself is not before it
    assert kept_user_turns(messages, 10, 1) == (8,)
    assert kept_user_turns(messages, 10, 0) == ()


def test_the_summarizer_reads_each_message_with_its_own_elision() -> None:
    messages: list[Message] = [
        UserMessage(content="hello"),
        AssistantMessage(content="", tool_calls=(ToolCall(id="c", name="t"),)),
        ToolResultMessage(tool_call_id="c", tool_name="t", content="a" * 2000),
    ]
    text = render(messages, 0, 3, {2: (3, 2)}, LIMITS)
    marker = "\n[… 1995 characters of this tool output elided to save context …]\n"
    assert text == f"User: hello\n\nAssistant called t({{}})\n\nTool t result: aaa{marker}aa"


def test_the_summarizer_reads_every_kind_of_message_as_a_line_of_its_own() -> None:
    calls = (ToolCall(id="a", name="read", arguments="b" * 1000), ToolCall(id="b", name="ls"))
    messages: list[Message] = [
        AssistantMessage(content="let me look", tool_calls=calls),
        ToolResultMessage(tool_call_id="a", tool_name="read", content="no", is_error=True),
        ToolResultMessage(tool_call_id="b", tool_name="ls", content="x"),
        AssistantMessage(content=""),
    ]
    cut = "\n[… 600 characters of this tool output elided to save context …]\n"
    assert render(messages, 0, 4, {}, LIMITS).split("\n\n") == [
        f"Assistant: let me look\nAssistant called read({'b' * 300}{cut}{'b' * 100})\n"
        "Assistant called ls({})",
        "Tool read error: no",
        "Tool ls result: x",
        "Assistant: (no text)",
    ]


async def test_summaries_are_made_part_by_part_each_ending_at_a_turn_eight_at_most() -> None:
    summarizer = FakeSummarizer()
    messages = _transcript([(True, 0, 0)] * 11)  # user n, assistant "round n": 12 + 18 chars
    # 30 characters a call: one turn each; the last 2 rounds (from index 19) are protected
    request = replace(_request(messages, summarizer=summarizer), run_id="r", summary_chars=30)
    first = await compact(request)
    assert summarizer.calls == [
        (f"summary {n}" if n else None, f"User: user {n}\n\nAssistant: round {n}") for n in range(8)
    ]
    assert (first.run_id, first.strategy, first.summary, first.summary_end) == (
        "r",
        "summarize",
        "summary 8",
        16,
    )
    assert first.messages_compacted == 16
    assert first.summary_usage == Usage(prompt_tokens=8 * 7, completion_tokens=8 * 3)

    second = await compact(replace(request, previous=first))
    assert summarizer.calls[8:] == [
        ("summary 8", "User: user 8\n\nAssistant: round 8"),
        ("summary 9", "User: user 9"),  # up to the protected rounds
    ]
    assert (second.summary_end, second.messages_compacted) == (19, 3)
    # the whole rest fits exactly (12 + 18 + 12 characters): one part up to the protected rounds
    whole = await compact(replace(request, previous=first, summary_chars=42))
    assert summarizer.calls[10:] == [
        ("summary 8", "User: user 8\n\nAssistant: round 8\n\nUser: user 9")
    ]
    assert whole.summary_end == 19


async def test_a_part_holds_one_message_at_least_when_one_is_over_the_limit() -> None:
    summarizer = FakeSummarizer()
    messages = _transcript([(True, 0, 0)] * 3)  # protected from index 3
    request = replace(_request(messages, summarizer=summarizer), summary_chars=5)
    result = await compact(request)
    assert [text for _, text in summarizer.calls] == [
        "User: user 0",
        "Assistant: round 0",
        "User: user 1",
    ]
    assert result.summary_end == 3


async def test_outputs_elided_then_summarized_are_named_both_and_leave_no_elision() -> None:
    messages = _transcript([(True, 1, 5000)] * 6)  # user, assistant, result: 3 a turn
    request = replace(_request(messages, summarizer=FakeSummarizer()), summary_chars=4000)
    result = await compact(request)
    assert result.strategy == "elide+summarize"
    # the outputs at 2, 5, 8 and 11 were elided, then summarized up to the protected rounds
    assert (result.summary_end, result.elided, result.messages_compacted) == (13, {}, 13)


def test_the_view_of_edges_elisions_summaries_and_kept_turns() -> None:
    assert elide("abcdefghij", 3, 2) == (
        "abc\n[… 5 characters of this tool output elided to save context …]\nij"
    )
    assert elide("abcde", 3, 2) == "abcde"  # nothing to cut
    assert "[… 1 characters" in elide("abcdef", 3, 2)
    result = ToolResultMessage(tool_call_id="c", tool_name="t", content="r" * 10)
    assert shown(result, 0, None) == result
    messages = _transcript([(True, 0, 0)] * 3)  # U0 A0 U1 A1 U2 A2
    folded = Compaction(
        session_id="s",
        trigger="manual",
        strategy="summarize",
        summary="s",
        summary_end=1,
        message_count=6,
        tokens_before=0,
        tokens_after=0,
    )
    assert model_view(messages, folded) == [summary_message("s"), *messages[1:]]
    assert model_view([], folded) == []  # nothing stored: no summary either
    kept = folded.model_copy(update={"summary_end": 2, "kept": (0, 2)})
    assert model_view(messages, kept) == [summary_message("s"), messages[0], *messages[2:]]


def test_protected_rounds_are_counted_from_the_last_message() -> None:
    messages = _transcript([(True, 0, 0)] * 3)  # U0 A0 U1 A1 U2 A2: ends with a model message
    assert [protected_start(messages, k) for k in (0, 1, 2, 3, 4)] == [6, 5, 3, 1, 0]


def _outputs(*sizes: int) -> list[Message]:
    """A user turn, a round with one output per size, then two protected rounds."""
    return [
        UserMessage(content="u" * 5000),  # a user's text is never elided
        *_round(0, len(sizes), 0)[:1],
        *(
            ToolResultMessage(tool_call_id=f"c0_{i}", tool_name="t", content="r" * size)
            for i, size in enumerate(sizes)
        ),
        *_round(1, 1, 5000),
        *_round(2, 1, 5000),
    ]


async def test_elision_skips_small_outputs_and_stops_once_the_view_fits() -> None:
    # 1099 characters save 199 (< 200: kept); 1100 save exactly 200 (elided)
    messages = _outputs(1099, 1100, 5000, 5000)
    before = _size(messages)
    everything = await compact(_request(messages, target=0))
    assert everything.elided == {3: (600, 300), 4: (600, 300), 5: (600, 300)}
    assert everything.messages_compacted == 3
    assert everything.tokens_after == _size(model_view(messages, everything))

    one = await compact(_request(_outputs(5000, 5000), target=before))
    assert one.strategy == "none"
    two = _outputs(5000, 5000)
    # the first elision saves ~1,010 tokens: 500 short is one, 1,200 short is both
    single = await compact(_request(two, target=_size(two) - 500))
    assert single.elided == {2: (600, 300)}
    assert single.tokens_after == _size(model_view(two, single))
    both = await compact(_request(two, target=_size(two) - 1200))
    assert (both.elided, both.tokens_before) == ({2: (600, 300), 3: (600, 300)}, _size(two))

    again = await compact(_request(two, both, target=0))  # nothing more to elide
    assert (again.elided, again.messages_compacted) == (both.elided, 0)
    assert again.tokens_before == _size(model_view(two, both))
    summarized = both.model_copy(
        update={"summary": "s", "summary_end": 3, "elided": {}, "kept": (0,)}
    )
    after = await compact(_request(two, summarized, target=0))
    assert after.elided == {3: (600, 300)}  # not the summarized output at 2
    assert (after.summary, after.kept) == ("s", (0,))  # the previous summary carried on
