"""The run's context window, consulted before every model call (``driver.run_round``).

It keeps the model's view of the transcript (the stored messages as the session's latest
compaction shows them, extended as the run adds messages), measures the next request
(:class:`~culm.context.budget.PromptMeter`), emits ``token_budget_updated`` and
``context_pressure``, compacts when the request would pass the trigger (or when asked: the
``compact_context`` tool, an overflow), stores each compaction and emits ``context_compacted``.

The summarizer's model call is one of the run's model calls: it runs in the run's task (a
cancel reaches it), its usage is added to the run's and reported in a ``round_completed``
marked ``compaction`` (the metrics count it from there).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Literal

from culm.context.budget import ContextLimits, PromptMeter
from culm.context.compaction import CompactionRequest, compact
from culm.context.estimate import CHARS_PER_TOKEN, text_tokens
from culm.context.view import model_view, shown
from culm.domain.compaction import Compaction, CompactionTrigger
from culm.domain.events import (
    ContextCompacted,
    ContextPressure,
    RoundCompleted,
    TokenBudget,
    TokenBudgetUpdated,
)
from culm.domain.models import Message, Usage, UserMessage
from culm.errors import ContextOverflowError
from culm.loop.context import LoopContext, LoopState
from culm.loop.model_call import UsageMeter, call_model
from culm.loop.plan import build_request
from culm.providers.base import ModelRequest, ToolSpec

DEFAULT_WINDOW = 128_000
_LEVELS: tuple[tuple[float, Literal["warning", "critical"]], ...] = (
    (70.0, "warning"),
    (90.0, "critical"),
)
SUMMARY_SYSTEM_PROMPT = (
    "You compact the conversation of an AI agent so that it can go on within its context "
    "window. Write a summary that keeps everything the agent needs to continue: the user's "
    "goals and instructions, decisions taken, facts learned (file paths, names, numbers, "
    "errors), what was done and what remains. If a previous summary is given, fold it in: "
    "your summary replaces it. Plain text, no preamble, at most {words} words."
)


class ContextWindow:
    def __init__(self, ctx: LoopContext, state: LoopState, compaction: Compaction | None) -> None:
        self._ctx = ctx
        self._state = state
        self.limits = ctx.context.limits or default_limits(ctx.model.max_context_tokens)
        self.compaction = compaction
        self.meter = PromptMeter()
        self.compact_requested = False
        self._version = 0  # bumped by each compaction: the meter's reports are per view
        self._levels: set[str] = set()
        self._view: list[Message] = []
        self._seen = 0  # stored messages already in ``_view``

    @classmethod
    async def open(cls, ctx: LoopContext, state: LoopState) -> ContextWindow:
        return cls(ctx, state, await ctx.context.load())

    # Before and after each model call

    async def prepare(self) -> ModelRequest:
        """The next request, compacted first when it would pass the trigger."""
        request = self._request()
        tokens, estimated = self.meter.measure(request, self._version)
        auto = self.limits.auto_compact and tokens > self.limits.trigger
        if self.compact_requested or auto:
            trigger: CompactionTrigger = "manual" if self.compact_requested else "auto"
            self.compact_requested = False
            await self.compact(trigger)
            request = self._request()
            tokens, estimated = self.meter.measure(request, self._version)
        self._announce(tokens, estimated)
        return request

    def reported(self, request: ModelRequest, usage: Usage) -> None:
        """The provider's usage for ``request``: emit the exact budget, calibrate the meter."""
        self.meter.reported(request, self._version, usage)
        budget = self._budget(usage.prompt_tokens, estimated=False)
        budget = budget.model_copy(
            update={
                "completion_tokens": usage.completion_tokens,
                "total_tokens": usage.total_tokens,
            }
        )
        self._ctx.emit(TokenBudgetUpdated(usage=budget))

    async def recover(self, request: ModelRequest, error: BaseException) -> ModelRequest:
        """The provider refused ``request`` as too long: compact (``overflow``) and return the
        request to retry once; ``ContextOverflowError`` when nothing could be compacted."""
        tokens, _ = self.meter.measure(request, self._version)
        self.meter.underestimated()
        done = await self.compact("overflow")
        if done.messages_compacted == 0:
            raise ContextOverflowError(
                f"the model refused the request as too long ({error}); the request was about "
                f"{tokens} tokens for a {self.limits.window}-token window, and compaction found "
                "nothing left to compact (the last rounds and user turns are kept verbatim)"
            )
        retry = self._request()
        self._announce(*self.meter.measure(retry, self._version))
        return retry

    def overflowed_again(self, request: ModelRequest, error: BaseException) -> ContextOverflowError:
        tokens, _ = self.meter.measure(request, self._version)
        return ContextOverflowError(
            f"the model refused the request as too long ({error}); it was compacted "
            f"(tool outputs elided, older turns summarized) to about {tokens} tokens for a "
            f"{self.limits.window}-token window and retried once, and was refused again"
        )

    # Compaction

    async def compact(self, trigger: CompactionTrigger) -> Compaction:
        messages = self._state.messages
        ratio = self.meter.ratio
        summary_tokens = text_tokens(self.compaction.summary or "") if self.compaction else 0
        budget = max(256, self.limits.target - 2 * summary_tokens - self._summary_max_tokens())
        result = await compact(
            CompactionRequest(
                session_id=self._ctx.session.session_id,
                run_id=self._ctx.run_id or None,
                trigger=trigger,
                messages=list(messages),
                previous=self.compaction,
                limits=self.limits,
                # Asked for (the tool, engine.compact): compact all that may be, not just enough.
                target=0 if trigger == "manual" else self.limits.target,
                size=self._size,
                summarize=self._summarize,
                summary_chars=int(budget * CHARS_PER_TOKEN / ratio),
            )
        )
        if result.messages_compacted:
            if result.summary != (self.compaction.summary if self.compaction else None):
                summarizer = self._ctx.context.summarizer or self._ctx.model
                result = result.model_copy(update={"summary_model": summarizer.name})
            elif self.compaction is not None:
                result = result.model_copy(update={"summary_model": self.compaction.summary_model})
            result = self.compaction = await self._ctx.context.save(result)
            self._version += 1
            self._view, self._seen = [], 0
        if result.messages_compacted or trigger == "manual":
            self._ctx.emit(
                ContextCompacted(
                    trigger=trigger,
                    strategy=result.strategy,
                    messages_compacted=result.messages_compacted,
                    tokens_before=result.tokens_before,
                    tokens_after=result.tokens_after,
                    summary_usage=result.summary_usage,
                )
            )
        return result

    def _size(self, view: Sequence[Message]) -> int:
        request = build_request(self._ctx.session.system_prompt, view, self._tool_specs())
        return self.meter.measure(request, -1)[0]  # a whole estimate: no report is for it

    def _summary_max_tokens(self) -> int:
        return max(128, min(self.limits.output_reserve, self.limits.target // 4, 2048))

    async def _summarize(self, previous: str | None, text: str) -> tuple[str, Usage]:
        ctx = self._ctx
        model = ctx.context.summarizer or ctx.model
        max_tokens = self._summary_max_tokens()
        parts = [f"Previous summary:\n{previous}\n"] if previous else []
        parts.append(f"Conversation to summarize:\n{text}")
        request = ModelRequest(
            system_prompt=SUMMARY_SYSTEM_PROMPT.format(words=int(max_tokens * 0.6)),
            messages=[UserMessage(content="\n".join(parts))],
            max_output_tokens=max_tokens,
        )
        meter = UsageMeter()
        started = time.monotonic()
        try:
            response = await call_model(ctx, request, meter, model=model, live=False)
        except BaseException as exc:
            if meter.reported:
                self._metered(model.name, meter.total, started, error=str(exc) or "cancelled")
            raise
        self._metered(model.name, meter.total, started)
        return response.message.content.strip(), meter.total

    def _metered(self, model: str, usage: Usage, started: float, error: str | None = None) -> None:
        self._state.usage += usage
        self._ctx.emit(
            RoundCompleted(
                round=self._state.round,
                usage=usage,
                latency_ms=int((time.monotonic() - started) * 1000),
                model=model,
                partial=error is not None,
                error=error,
                compaction=True,
                cost_usd=self._ctx.price(model, usage),
            )
        )

    # The view and the events

    def view(self) -> list[Message]:
        """The model's view of the stored messages, extended with those added since."""
        messages = self._state.messages
        if self._seen == 0 or self._seen > len(messages):
            self._view = model_view(messages, self.compaction)
        else:
            self._view.extend(
                shown(messages[i], i, self.compaction) for i in range(self._seen, len(messages))
            )
        self._seen = len(messages)
        return self._view

    def _request(self) -> ModelRequest:
        return build_request(self._ctx.session.system_prompt, self.view(), self._tool_specs())

    def _tool_specs(self) -> list[ToolSpec]:
        return [tool.spec() for tool in self._ctx.tools.values()]

    def _budget(self, tokens: int, *, estimated: bool) -> TokenBudget:
        budget, spend = self._ctx.budget, self._state.spend
        spent = budget.limited  # the spend fields only for a run with a budget
        return TokenBudget(
            prompt_tokens=tokens,
            max_context_tokens=self.limits.window,
            budget_limit=self._ctx.budget_limit,
            percent=self.limits.percent(tokens),
            estimated=estimated,
            max_tokens=budget.max_tokens,
            max_cost_usd=budget.max_cost_usd,
            spent_tokens=spend.tokens if spent else None,
            spent_cost_usd=spend.cost_usd if spent else None,
        )

    def _announce(self, tokens: int, estimated: bool) -> None:
        self._ctx.emit(TokenBudgetUpdated(usage=self._budget(tokens, estimated=estimated)))
        percent = self.limits.percent(tokens)
        for threshold, level in _LEVELS:
            if percent >= threshold and level not in self._levels:
                self._levels.add(level)
                self._ctx.emit(ContextPressure(percent=percent, level=level))


def default_limits(window: int | None) -> ContextLimits:
    size = window or DEFAULT_WINDOW
    return ContextLimits(
        window=size, output_reserve=min(8192, size // 4), working_reserve=min(2048, size // 8)
    )
