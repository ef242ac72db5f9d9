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
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from culm.domain.models import Usage
from culm.errors import ModelError, ModelHTTPError, ModelStallError
from culm.logs import get_logger
from culm.loop.classify import ModelResponse, ResponseBuilder
from culm.loop.context import LoopContext, LoopLimits
from culm.providers.base import ModelRequest, StreamPart

log = get_logger(__name__)


@dataclass(slots=True)
class UsageMeter:
    """The usage reported over the attempts of one model call."""

    total: Usage = field(default_factory=Usage)
    reported: bool = False

    def add(self, usage: Usage | None) -> None:
        if usage is not None:
            self.total += usage
            self.reported = True


async def call_model(
    ctx: LoopContext, request: ModelRequest, meter: UsageMeter | None = None
) -> ModelResponse:
    meter = meter if meter is not None else UsageMeter()
    attempt = 1
    while True:
        builder = ResponseBuilder()
        try:
            parts = _stall_guard(ctx.model.stream(request), ctx.limits.stream_idle_timeout)
            async for part in parts:
                event = builder.add(part)
                if event is not None:
                    ctx.emit(event)
        except ModelError as exc:
            meter.add(builder.usage)
            delay = retry_delay(exc, attempt, ctx.limits, streamed=builder.emitted)
            if delay is None:
                raise
            log.warning(
                "model call failed; retrying",
                model=ctx.model.name,
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
) -> AsyncIterator[StreamPart]:
    """Yield ``parts``; raise ModelStallError when none arrives for ``idle_seconds``."""
    iterator = aiter(parts)
    try:
        while True:
            try:
                async with asyncio.timeout(idle_seconds):
                    part = await anext(iterator)
            except StopAsyncIteration:
                return
            except TimeoutError:
                raise ModelStallError(
                    f"the model sent nothing for {idle_seconds:g} s (stream_idle_timeout)"
                ) from None
            yield part
    finally:
        aclose = getattr(iterator, "aclose", None)
        if aclose is not None:
            await aclose()
