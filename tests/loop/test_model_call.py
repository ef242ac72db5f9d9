"""The stall guard of a model stream: one idle deadline per stream, re-armed lazily."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from culm.domain.events import Token
from culm.domain.models import Session, Usage
from culm.domain.time import utc_now
from culm.errors import ModelHTTPError, ModelRequestError, ModelStallError
from culm.loop.context import LoopContext, LoopLimits
from culm.loop.model_call import UsageMeter, _stall_guard, call_model, retry_delay
from culm.providers.base import ModelRequest, StreamPart, TextDelta, UsageReport
from tests.clock import run_virtual
from tests.loop.fakes import Harness, PlayedModel


async def parts(*delays: float) -> AsyncIterator[StreamPart]:
    """A part after each delay."""
    for i, delay in enumerate(delays):
        await asyncio.sleep(delay)
        yield TextDelta(text=str(i))


async def texts(stream: AsyncIterator[StreamPart]) -> list[str]:
    return [part.text for part in [p async for p in stream] if isinstance(part, TextDelta)]


def test_parts_each_in_time_never_stall_however_long_the_stream() -> None:
    async def check() -> None:
        loop = asyncio.get_running_loop()
        # 5 s in all, but never 1.5 s without a part.
        received = await texts(_stall_guard(parts(*[0.5] * 10), 1.5))
        assert received == [str(i) for i in range(10)]
        assert loop.time() == pytest.approx(5)

    run_virtual(check())


def test_a_wait_longer_than_the_limit_stalls_after_the_parts_so_far() -> None:
    async def check() -> None:
        received: list[str] = []
        loop = asyncio.get_running_loop()
        with pytest.raises(ModelStallError, match="1 s"):
            async for part in _stall_guard(parts(0, 0.5, 0.5, 30), 1):
                assert isinstance(part, TextDelta)
                received.append(part.text)
        assert received == ["0", "1", "2"]
        assert loop.time() == pytest.approx(2)  # 1 s after the last part, not from the start

    run_virtual(check())


def test_time_spent_by_the_consumer_does_not_count() -> None:
    """The timer goes off between waits (the consumer is slow) and does nothing, quietly."""

    async def check() -> None:
        failures: list[dict[str, object]] = []
        asyncio.get_running_loop().set_exception_handler(
            lambda _, context: failures.append(context)
        )
        received = []
        async for part in _stall_guard(parts(0, 0, 0), 1):
            await asyncio.sleep(10)
            received.append(part)
        assert len(received) == 3
        assert failures == []  # no timer callback raised

    run_virtual(check())


def test_a_cancel_from_outside_stays_a_cancel() -> None:
    async def check() -> None:
        task = asyncio.create_task(texts(_stall_guard(parts(0, 30), 1)))
        await asyncio.sleep(0.5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    run_virtual(check())


def test_a_cancel_from_outside_in_the_first_wait_stays_a_cancel() -> None:
    async def check() -> None:
        task = asyncio.create_task(texts(_stall_guard(parts(30), 1)))
        await asyncio.sleep(0.5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    run_virtual(check())


def test_a_cancel_from_outside_racing_the_deadline_stays_a_cancel() -> None:
    async def check() -> None:
        task = asyncio.create_task(texts(_stall_guard(parts(0, 30), 1)))
        await asyncio.sleep(1)  # the deadline is due in this very iteration
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert task.cancelling() == 1

    run_virtual(check())


class EndlessModel:
    """Streams text until closed, and notes when it was."""

    name = "test:endless"
    max_context_tokens = None

    def __init__(self) -> None:
        self.closed = False

    async def stream(self, request: ModelRequest) -> AsyncIterator[StreamPart]:
        try:
            while True:
                yield TextDelta(text="x")
        finally:
            self.closed = True


async def test_a_cancel_while_waiting_for_the_store_closes_the_model_stream_at_once(
    tmp_path: Path,
) -> None:
    model = EndlessModel()
    waiting = asyncio.Event()

    async def room() -> None:
        waiting.set()
        await asyncio.Event().wait()  # the store never catches up

    ctx = LoopContext(
        session=Session(session_id="s", model=model.name, workspace=str(tmp_path)),
        model=model,
        tools={},
        workspace=tmp_path,
        limits=LoopLimits(),
        emit=lambda payload: payload.stamped(seq=1, run_id="r", session_id="s", ts=utc_now()),
        append_messages=lambda messages: asyncio.sleep(0),
        congested=lambda: True,
        room=room,
    )
    call = asyncio.create_task(call_model(ctx, ModelRequest(system_prompt=None, messages=[])))
    async with asyncio.timeout(5):
        await waiting.wait()
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    assert model.closed  # closed by the call itself, not later by the garbage collector


def test_a_stall_in_the_last_wait_is_caught_after_the_timer_re_arms() -> None:
    """The timer set at the first wait goes off while a later wait is still young: it re-arms
    for when that wait will be too old, and the stall is caught then."""

    async def check() -> None:
        received: list[str] = []
        loop = asyncio.get_running_loop()
        with pytest.raises(ModelStallError):
            async for part in _stall_guard(parts(0, 0.5, 30), 1):
                assert isinstance(part, TextDelta)
                received.append(part.text)
        assert received == ["0", "1"]
        assert loop.time() == pytest.approx(1.5)

    run_virtual(check())


LIMITS = LoopLimits(model_max_attempts=5, retry_base_delay=0.5, retry_max_delay=30.0)


@pytest.mark.parametrize("attempt", [1, 2, 3, 4])
def test_backoff_doubles_with_each_attempt_with_jitter_down_to_half(attempt: int) -> None:
    full = 0.5 * 2 ** (attempt - 1)
    delays = [
        retry_delay(ModelHTTPError("busy", status=503), attempt, LIMITS, streamed=False)
        for _ in range(200)
    ]
    assert all(d is not None and full / 2 <= d <= full for d in delays)
    assert max(d for d in delays if d is not None) > full * 0.9  # the jitter spans the range
    assert min(d for d in delays if d is not None) < full * 0.6


def test_backoff_stops_at_the_max_delay_and_after_the_last_attempt() -> None:
    limits = LoopLimits(model_max_attempts=12, retry_base_delay=0.5, retry_max_delay=30.0)
    error = ModelHTTPError("busy", status=503)
    assert retry_delay(error, 11, limits, streamed=False) == 30.0  # 0.5 × 1024 capped
    assert retry_delay(error, 12, limits, streamed=False) is None
    assert retry_delay(error, 1, limits, streamed=True) is None  # output already went out
    assert retry_delay(ModelHTTPError("no", status=400), 1, limits, streamed=False) is None


@pytest.mark.parametrize(
    ("retry_after", "delay"), [(29.5, 29.5), (30.0, 30.0), (30.5, None), (0.0, 0.0)]
)
def test_retry_after_is_honoured_up_to_the_max_delay(
    retry_after: float, delay: float | None
) -> None:
    error = ModelHTTPError("slow down", status=429, retry_after=retry_after)
    assert retry_delay(error, 1, LIMITS, streamed=False) == delay


def test_a_meter_adds_what_each_attempt_reported_and_notes_that_one_did() -> None:
    meter = UsageMeter()
    meter.add(None)
    assert (meter.total, meter.reported) == (Usage(), False)
    meter.add(Usage(prompt_tokens=3, total_tokens=3))
    meter.add(Usage(prompt_tokens=4, completion_tokens=1, total_tokens=5))
    assert (meter.total, meter.reported) == (
        Usage(prompt_tokens=7, completion_tokens=1, total_tokens=8),
        True,
    )


FIRST = Usage(prompt_tokens=10, total_tokens=10)
SECOND = Usage(prompt_tokens=20, completion_tokens=1, total_tokens=21)


def test_usage_of_a_failed_attempt_counts_with_the_retry_s(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The first attempt reports usage and fails (a 429 saying when to retry); the second
    answers. The meter has both attempts' usage; the retry waited as asked and logged the delay
    rounded to the millisecond."""
    busy = ModelHTTPError("busy", status=429, retry_after=1.23456)
    model = PlayedModel(
        ([UsageReport(usage=FIRST)], busy),
        ([TextDelta(text="ok"), UsageReport(usage=SECOND, model="m-1")], None),
    )
    harness = Harness()
    ctx = harness.context(model, tmp_path)

    async def check() -> None:
        meter = UsageMeter(total=Usage(prompt_tokens=1, total_tokens=1), reported=True)
        loop = asyncio.get_running_loop()
        with caplog.at_level(logging.WARNING, logger="culm.loop.model_call"):
            response = await call_model(ctx, ModelRequest(system_prompt=None, messages=[]), meter)
        assert loop.time() == 1.23456
        assert response.message.content == "ok"
        assert meter.total == Usage(prompt_tokens=31, completion_tokens=1, total_tokens=32)
        assert (meter.reported, meter.response_model) == (True, "m-1")

    run_virtual(check())
    [record] = [r for r in caplog.records if r.name == "culm.loop.model_call"]
    assert record.getMessage() == (
        "model call failed; retrying model=fake:played attempt=1 delay=1.235 error=busy"
    )
    assert [e.content for e in harness.of(Token)] == ["ok"]


@pytest.mark.parametrize("error", [ModelRequestError("no", status=400), RuntimeError("bug")])
def test_usage_of_a_call_that_fails_is_in_the_meter(tmp_path: Path, error: Exception) -> None:
    model = PlayedModel(([UsageReport(usage=FIRST)], error))
    ctx = Harness().context(model, tmp_path)
    meter = UsageMeter()

    async def check() -> None:
        with pytest.raises(type(error)):
            await call_model(ctx, ModelRequest(system_prompt=None, messages=[]), meter)

    run_virtual(check())
    assert (meter.total, meter.reported) == (FIRST, True)
    assert model.attempts == []


def test_a_call_that_reported_nothing_leaves_the_meter_unreported(tmp_path: Path) -> None:
    model = PlayedModel(([TextDelta(text="x")], ModelRequestError("no", status=400)))
    ctx = Harness().context(model, tmp_path)
    meter = UsageMeter()

    async def check() -> None:
        with pytest.raises(ModelRequestError):
            await call_model(ctx, ModelRequest(system_prompt=None, messages=[]), meter)

    run_virtual(check())
    assert (meter.total, meter.reported) == (Usage(), False)


def test_a_call_that_is_not_live_emits_no_tokens_and_may_retry_after_text(
    tmp_path: Path,
) -> None:
    """A summarizer's call: its text is no output, so a failure after some is retried."""
    lost = ModelHTTPError("busy", status=503)
    model = PlayedModel(
        ([TextDelta(text="draft")], lost), ([TextDelta(text="summary")], None), name="fake:sum"
    )
    harness = Harness()
    ctx = harness.context(PlayedModel(), tmp_path)

    async def check() -> None:
        request = ModelRequest(system_prompt=None, messages=[])
        response = await call_model(ctx, request, model=model, live=False)
        assert response.message.content == "summary"

    run_virtual(check())
    assert harness.events == []
    assert len(model.requests) == 2


def test_a_failing_call_is_tried_model_max_attempts_times(tmp_path: Path) -> None:
    busy = ModelHTTPError("busy", status=503)
    model = PlayedModel(*[([], busy)] * 4)
    limits = LoopLimits(model_max_attempts=3, retry_base_delay=0.5)
    ctx = Harness().context(model, tmp_path, limits=limits)

    async def check() -> None:
        with pytest.raises(ModelHTTPError, match="busy"):
            await call_model(ctx, ModelRequest(system_prompt=None, messages=[]))

    run_virtual(check())
    assert len(model.requests) == 3


def test_a_live_call_that_streamed_text_is_not_retried(tmp_path: Path) -> None:
    lost = ModelHTTPError("busy", status=503)
    model = PlayedModel(([TextDelta(text="partial")], lost), ([TextDelta(text="again")], None))
    harness = Harness()
    ctx = harness.context(model, tmp_path)

    async def check() -> None:
        with pytest.raises(ModelHTTPError):
            await call_model(ctx, ModelRequest(system_prompt=None, messages=[]))

    run_virtual(check())
    assert len(model.requests) == 1
    assert [e.content for e in harness.of(Token)] == ["partial"]
