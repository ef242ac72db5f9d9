"""Stream one model response, with retries for transient failures and a stall timeout.

Transient errors (429, 5xx, connection failures, a stall) are retried up to
``model_max_attempts`` times with exponential backoff, honouring ``Retry-After``, but only while
nothing of the response has been streamed to subscribers yet: a retry after output would
duplicate it. Authentication and request errors fail at once.

Usage is exact whatever happens: each attempt adds what the provider reported in it to the
caller's :class:`UsageMeter` (a failed attempt that reported usage counts too), also when the
call fails or is cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field

from culm.domain.models import Usage
from culm.errors import ModelError, ModelHTTPError, ModelStallError
from culm.logs import get_logger
from culm.loop.classify import ModelResponse, ResponseBuilder
from culm.loop.context import LoopContext, LoopLimits
from culm.providers.base import Model, ModelRequest, StreamPart
from culm.tracing.spans import ChatSpan

log = get_logger(__name__)


@dataclass(slots=True)
class UsageMeter:
    """The usage reported over the attempts of one model call."""

    total: Usage = field(default_factory=Usage)
    reported: bool = False
    first_chunk_ms: int | None = None  # the first call's, when it streamed anything
    response_model: str | None = None  # the model that answered, as the provider named it

    def add(self, usage: Usage | None) -> None:
        if usage is not None:
            self.total += usage
            self.reported = True


async def call_model(
    ctx: LoopContext,
    request: ModelRequest,
    meter: UsageMeter | None = None,
    *,
    model: Model | None = None,
    live: bool = True,
) -> ModelResponse:
    """Stream ``request`` to ``model`` (default: the run's), in a ``chat`` span. ``live``: its
    text goes out as ``token`` events (a compaction's summarizer call is not the agent's
    output)."""
    meter = meter if meter is not None else UsageMeter()
    model = model if model is not None else ctx.model
    call = UsageMeter()  # this call's, for its span
    with ctx.tracing.chat(model.name) as span:
        span.request(request.system_prompt, request.messages)
        try:
            response = await _call(ctx, request, call, model, live, span)
        finally:
            if call.reported:
                meter.add(call.total)
            if meter.first_chunk_ms is None:
                meter.first_chunk_ms = span.first_chunk_ms
            span.usage(call.total)  # as reported, also when the call failed
        span.answered(response.finish_reason, response.model, response.message)
        meter.response_model = response.model
        return response


async def _call(
    ctx: LoopContext,
    request: ModelRequest,
    meter: UsageMeter,
    model: Model,
    live: bool,
    span: ChatSpan,
) -> ModelResponse:
    attempt = 1
    while True:
        builder = ResponseBuilder()
        try:
            parts = _stall_guard(model.stream(request), ctx.limits.stream_idle_timeout)
            # Closed here whatever happens, also when a cancel arrives outside its waits
            # (while waiting for room): the provider's stream is closed at once.
            async with contextlib.aclosing(parts):
                async for part in parts:
                    span.chunk()
                    event = builder.add(part)
                    if event is not None and live:
                        ctx.emit(event)
                        if ctx.congested():  # a model faster than the store waits for it
                            await ctx.room()
        except ModelError as exc:
            meter.add(builder.usage)
            delay = retry_delay(exc, attempt, ctx.limits, streamed=builder.emitted and live)
            if delay is None:
                raise
            log.warning(
                "model call failed; retrying",
                model=model.name,
                attempt=attempt,
                delay=round(delay, 3),
                error=str(exc),
            )
            await asyncio.sleep(delay)
            attempt += 1
            continue
        except BaseException:  # cancelled, or an unexpected failure: still count the usage
            meter.add(builder.usage)
            raise
        meter.add(builder.usage)
        return builder.result()


def retry_delay(
    exc: ModelError, attempt: int, limits: LoopLimits, *, streamed: bool
) -> float | None:
    """Seconds to wait before the next attempt, or None to give up."""
    if not exc.retryable or streamed or attempt >= limits.model_max_attempts:
        return None
    if isinstance(exc, ModelHTTPError) and exc.retry_after is not None:
        if exc.retry_after > limits.retry_max_delay:
            return None  # the provider asks for a longer wait than we are allowed to take
        return exc.retry_after
    backoff = limits.retry_base_delay * 2.0 ** (attempt - 1)
    return min(backoff * (0.5 + random.random() / 2), limits.retry_max_delay)


async def _stall_guard(
    parts: AsyncIterator[StreamPart], idle_seconds: float
) -> AsyncGenerator[StreamPart, None]:
    """Yield ``parts``; raise ModelStallError when none arrives for ``idle_seconds``."""
    iterator = aiter(parts)
    deadline = _IdleDeadline(idle_seconds)
    try:
        while True:
            deadline.begin()
            try:
                part = await anext(iterator)
            except BaseException as exc:
                if deadline.end(exc):
                    raise ModelStallError(
                        f"the model sent nothing for {idle_seconds:g} s (stream_idle_timeout)"
                    ) from None
                if isinstance(exc, StopAsyncIteration):
                    return
                raise
            deadline.end(None)
            yield part
    finally:
        deadline.close()
        aclose = getattr(iterator, "aclose", None)
        if aclose is not None:
            await aclose()


class _IdleDeadline:
    """A limit on each wait for the next part, as ``asyncio.timeout`` around every wait would
    set it, but with one timer for the stream, re-armed lazily, instead of a timer per part.

    A wait only notes when it began. When the timer goes off, it finds the current wait
    ``seconds`` old and cancels the task (as the timeout would: the wait then ends with a
    ``CancelledError`` that :meth:`end` recognises as its own, unless someone else cancelled
    too), or it re-arms for the moment the current wait will be that old.
    """

    def __init__(self, seconds: float) -> None:
        task = asyncio.current_task()
        assert task is not None, "a stream is read in a task"
        self._task = task
        self._loop = asyncio.get_running_loop()
        self._seconds = seconds
        self._since: float | None = None  # when the current wait began; None between waits
        self._cancelling = 0
        self._expiring = False
        self._timer: asyncio.TimerHandle | None = None

    def begin(self) -> None:
        self._since = self._loop.time()
        self._cancelling = self._task.cancelling()
        if self._timer is None:
            self._timer = self._loop.call_at(self._since + self._seconds, self._check)

    def end(self, exc: BaseException | None) -> bool:
        """The wait ended (raising ``exc``); True if it was cut off for being too long."""
        self._since = None
        if not self._expiring:
            return False
        self._expiring = False
        ours = self._task.uncancel() <= self._cancelling
        return ours and isinstance(exc, asyncio.CancelledError)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _check(self) -> None:
        self._timer = None
        if self._since is None:
            return  # between waits: the next one re-arms
        due = self._since + self._seconds
        if self._loop.time() < due:
            self._timer = self._loop.call_at(due, self._check)
        else:
            self._expiring = True
            self._task.cancel()
