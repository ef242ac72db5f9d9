"""Compaction: make the model's view of a transcript fit under a target, losing as little as
possible, in this order, stopping as soon as it fits:

1. elide old tool outputs (keep a head and a tail, with a marker saying how much was cut),
   oldest first, never in the last ``keep_rounds`` rounds;
2. summarize the oldest part of the conversation into one summary message that folds in the
   previous summary; the last ``keep_user_turns`` user turns stay verbatim, and a part always
   ends where a round or a user turn begins, so a tool call is never separated from its result.

The result is a new :class:`Compaction` (cumulative: it carries the earlier elisions forward);
the stored messages are never touched.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from culm.context import estimate
from culm.context.budget import ContextLimits
from culm.context.view import elide, model_view
from culm.domain.compaction import Compaction, CompactionTrigger
from culm.domain.models import AssistantMessage, Message, ToolResultMessage, Usage, UserMessage

# An output is elided only when that saves at least this many characters.
MIN_ELIDED_CHARS = 200
# Summarizer calls in one compaction at most (each folds a part of the conversation in).
MAX_SUMMARY_PARTS = 8

Summarize = Callable[[str | None, str], Awaitable[tuple[str, Usage]]]


@dataclass(kw_only=True, slots=True)
class CompactionRequest:
    session_id: str
    run_id: str | None
    trigger: CompactionTrigger
    messages: Sequence[Message]  # the stored transcript
    previous: Compaction | None
    limits: ContextLimits
    target: int
    size: Callable[[Sequence[Message]], int]  # a whole request's tokens, with this view
    summarize: Summarize | None  # None: elide only
    summary_chars: int  # how much conversation text one summarizer call may be given


@dataclass(slots=True)
class _Draft:
    summary: str | None
    summary_end: int
    kept: tuple[int, ...]
    elided: dict[int, tuple[int, int]]
    usage: Usage = field(default_factory=Usage)
    elided_now: int = 0
    summarized_now: int = 0
    parts: int = 0
    touched: set[int] = field(default_factory=set)  # messages this compaction changed

    def compaction(self, request: CompactionRequest, before: int, after: int) -> Compaction:
        strategy = "+".join(
            name
            for name, done in (("elide", self.elided_now), ("summarize", self.summarized_now))
            if done
        )
        return Compaction(
            session_id=request.session_id,
            run_id=request.run_id,
            trigger=request.trigger,
            strategy=strategy or "none",
            summary=self.summary,
            summary_end=self.summary_end,
            kept=self.kept,
            elided=self.elided,
            message_count=len(request.messages),
            messages_compacted=len(self.touched),
            tokens_before=before,
            tokens_after=after,
            summary_usage=self.usage,
        )


async def compact(request: CompactionRequest) -> Compaction:
    previous = request.previous
    draft = _Draft(
        summary=previous.summary if previous else None,
        summary_end=previous.summary_end if previous else 0,
        kept=previous.kept if previous else (),
        elided=dict(previous.elided) if previous else {},
    )
    messages = request.messages
    before = request.size(model_view(messages, previous))
    protected = protected_start(messages, request.limits.keep_rounds)
    after = _elide(request, draft, protected, before)
    while (
        after > request.target
        and request.summarize is not None
        and draft.parts < MAX_SUMMARY_PARTS
        and await _summarize_part(request, draft, protected)
    ):
        after = request.size(_view(messages, draft, request))
    return draft.compaction(request, before, after)


def protected_start(messages: Sequence[Message], keep_rounds: int) -> int:
    """Where the last ``keep_rounds`` rounds begin (each at a model's message): never compacted."""
    if keep_rounds <= 0:
        return len(messages)
    seen = 0
    for index in range(len(messages) - 1, -1, -1):
        if isinstance(messages[index], AssistantMessage):
            seen += 1
            if seen == keep_rounds:
                return index
    return 0


def _elide(request: CompactionRequest, draft: _Draft, protected: int, tokens: int) -> int:
    """Elide old tool outputs, oldest first, until the view fits; returns its new size."""
    head, tail = request.limits.elide_head_chars, request.limits.elide_tail_chars
    estimated = tokens
    for index in range(draft.summary_end, protected):
        if estimated <= request.target:
            break
        message = request.messages[index]
        if not isinstance(message, ToolResultMessage) or index in draft.elided:
            continue
        if len(message.content) - head - tail < MIN_ELIDED_CHARS:
            continue
        draft.elided[index] = (head, tail)
        draft.elided_now += 1
        draft.touched.add(index)
        saved = estimate.text_tokens(message.content) - estimate.text_tokens(
            elide(message.content, head, tail)
        )
        estimated -= saved
    if draft.elided_now == 0:
        return tokens
    return request.size(_view(request.messages, draft, request))


async def _summarize_part(request: CompactionRequest, draft: _Draft, protected: int) -> bool:
    """Fold the next part of the conversation into the summary; False when none is left."""
    messages = request.messages
    end = _part_end(request, draft, protected)
    if end is None:
        return False
    assert request.summarize is not None
    text = render(messages, draft.summary_end, end, draft.elided, request.limits)
    summary, usage = await request.summarize(draft.summary, text)
    draft.usage += usage
    draft.parts += 1
    draft.summarized_now += end - draft.summary_end
    draft.touched.update(range(draft.summary_end, end))
    draft.summary = summary
    draft.summary_end = end
    draft.elided = {i: cut for i, cut in draft.elided.items() if i >= end}
    draft.kept = kept_user_turns(messages, end, request.limits.keep_user_turns)
    return True


def _part_end(request: CompactionRequest, draft: _Draft, protected: int) -> int | None:
    """The end of the next part to summarize: the furthest boundary (a round's or a user
    turn's beginning, never a tool result) up to ``protected`` whose text fits one call."""
    messages = request.messages
    start = draft.summary_end
    best: int | None = None
    used = 0
    for index in range(start, protected):
        if index > start and not isinstance(messages[index], ToolResultMessage):
            if best is not None and used > request.summary_chars:
                break
            best = index
        used += len(_render_one(messages[index], index, draft.elided, request.limits))
    if protected > start and (best is None or used <= request.summary_chars):
        best = protected  # the whole rest up to the protected rounds fits (or is all there is)
    return best


def kept_user_turns(messages: Sequence[Message], end: int, keep: int) -> tuple[int, ...]:
    """The last ``keep`` user turns of the transcript that lie before ``end``."""
    if keep <= 0:
        return ()
    users = [i for i, message in enumerate(messages) if isinstance(message, UserMessage)]
    return tuple(i for i in users[-keep:] if i < end)


def render(
    messages: Sequence[Message],
    start: int,
    end: int,
    elided: dict[int, tuple[int, int]],
    limits: ContextLimits,
) -> str:
    """Messages ``[start, end)`` as plain text for the summarizer."""
    return "\n\n".join(_render_one(messages[i], i, elided, limits) for i in range(start, end))


def _render_one(
    message: Message, index: int, elided: dict[int, tuple[int, int]], limits: ContextLimits
) -> str:
    head, tail = elided.get(index, (limits.elide_head_chars, limits.elide_tail_chars))
    match message:
        case UserMessage(content=content):
            return "User: " + elide(content, head, tail)
        case AssistantMessage(content=content, tool_calls=calls):
            lines = [f"Assistant: {elide(content, head, tail)}"] if content else []
            lines += [f"Assistant called {c.name}({elide(c.arguments, 300, 100)})" for c in calls]
            return "\n".join(lines) or "Assistant: (no text)"
    assert isinstance(message, ToolResultMessage)
    status = "error" if message.is_error else "result"
    return f"Tool {message.tool_name} {status}: {elide(message.content, head, tail)}"


def _view(messages: Sequence[Message], draft: _Draft, request: CompactionRequest) -> list[Message]:
    return model_view(messages, draft.compaction(request, 0, 0))
