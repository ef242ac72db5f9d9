"""The budget's resolution order, the prompt meter, and the overflow patterns."""

from __future__ import annotations

from pathlib import Path

import pytest

from culm.context.budget import PromptMeter, resolve_window
from culm.context.limits import limits_for
from culm.context.overflow import OverflowMatcher
from culm.domain.models import Usage, UserMessage
from culm.errors import ModelConnectionError, ModelHTTPError, ModelRequestError
from culm.providers.base import ModelRequest
from culm.settings import ModelLimits, Settings


def test_the_window_resolves_session_then_config_then_catalog_then_default() -> None:
    configured = {"openai:m": ModelLimits(max_context_tokens=50_000, max_output_tokens=2000)}
    defaults = (128_000, 8192)
    catalog = (200_000, 64_000)
    assert (
        resolve_window("openai:m", {"max_context_tokens": 9000}, configured, catalog, defaults)[0]
        == 9000
    )
    assert resolve_window("openai:m", {}, configured, catalog, defaults) == (50_000, 2000)
    assert resolve_window("openai:x", {}, configured, catalog, defaults) == (200_000, 50_000)
    assert resolve_window("openai:x", {}, configured, (None, None), defaults) == (128_000, 8192)


def test_limits_from_settings_use_the_shipped_catalog(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path)
    limits = limits_for(settings, "anthropic:claude-sonnet-4-5", 200_000, {})
    assert (limits.window, limits.output_reserve) == (200_000, 50_000)  # a quarter at most
    assert limits.trigger == 200_000 - 50_000 - 2048
    assert limits.target == 100_000
    gpt4 = limits_for(settings, "openai:gpt-4", 8192, {})
    assert (gpt4.window, gpt4.output_reserve, gpt4.working_reserve) == (8192, 2048, 1024)
    unknown = limits_for(settings, "openai:local-model", None, {"auto_compact": False})
    assert (unknown.window, unknown.auto_compact) == (128_000, False)
    pct = limits_for(Settings(home=tmp_path, context_trigger_percent=80), "openai:m", 10_000, {})
    assert (pct.trigger, pct.target) == (8000, 5000)


def test_the_meter_adds_an_estimate_to_the_last_report_and_calibrates() -> None:
    meter = PromptMeter()
    first = ModelRequest(system_prompt=None, messages=[UserMessage(content="x" * 400)])
    tokens, estimated = meter.measure(first, 0)
    assert (tokens, estimated) == (104, True)  # 400 / 4 + 4 framing
    meter.reported(first, 0, Usage(prompt_tokens=208))  # the provider counts twice ours
    assert meter.measure(first, 0) == (208, False)
    second = ModelRequest(
        system_prompt=None, messages=[*first.messages, UserMessage(content="y" * 400)]
    )
    assert meter.measure(second, 0) == (208 + 208, True)  # report + calibrated estimate
    assert meter.measure(second, 1) == (416, True)  # another view: a whole estimate
    meter.underestimated()
    assert meter.ratio == 2.5


@pytest.mark.parametrize(
    "error",
    [
        ModelRequestError(
            "openai API error (HTTP 400): This model's maximum context length is 4096 tokens.",
            status=400,
        ),
        ModelRequestError(
            "anthropic API error (HTTP 400): prompt is too long: 5000 tokens > 4096 maximum",
            status=400,
        ),
        ModelRequestError("openai API error (HTTP 400): context_length_exceeded", status=400),
        ModelRequestError(
            "openai API error (HTTP 400): the request exceeds the available context size, "
            "try increasing it",
            status=400,
        ),
        ModelHTTPError("openai API error (HTTP 413): too many tokens in the input", status=413),
    ],
)
def test_providers_too_long_answers_are_overflows(error: Exception) -> None:
    assert OverflowMatcher().is_overflow(error)


@pytest.mark.parametrize(
    "error",
    [
        ModelRequestError("openai API error (HTTP 400): invalid tool schema", status=400),
        ModelHTTPError("openai API error (HTTP 500): maximum context length", status=500),
        ModelHTTPError("anthropic API error (HTTP 429): prompt is too long", status=429),
        ModelConnectionError("connection reset"),
        ValueError("prompt is too long"),
    ],
)
def test_other_failures_are_not(error: Exception) -> None:
    assert not OverflowMatcher().is_overflow(error)


def test_patterns_are_data_extended_by_a_setting() -> None:
    error = ModelRequestError("local API error (HTTP 400): KV cache full", status=400)
    assert not OverflowMatcher().is_overflow(error)
    assert OverflowMatcher([r"kv cache full"]).is_overflow(error)


def test_the_sessions_output_limit_comes_first_and_a_limit_must_be_positive() -> None:
    defaults = (128_000, 8192)
    assert resolve_window("m", {"max_output_tokens": 1000}, {}, (None, 2000), defaults) == (
        128_000,
        1000,
    )
    assert resolve_window("m", {"max_output_tokens": 1}, {}, (None, None), defaults)[1] == 1
    zeros = {"max_context_tokens": 0, "max_output_tokens": 0}
    assert resolve_window("m", zeros, {}, (None, None), defaults) == (128_000, 8192)


def test_the_reserves_are_whole_tokens_of_any_window(tmp_path: Path) -> None:
    assert resolve_window("m", {}, {}, (10_001, 9000), (128_000, 8192)) == (10_001, 2500)
    limits = limits_for(Settings(home=tmp_path), "openai:local-model", 10_001, {})
    assert (limits.output_reserve, limits.working_reserve) == (2500, 1250)
    assert type(limits.output_reserve) is type(limits.working_reserve) is int


def test_limits_take_the_configured_model_and_every_setting(tmp_path: Path) -> None:
    settings = Settings(
        home=tmp_path,
        models={"openai:m": ModelLimits(max_context_tokens=50_000, max_output_tokens=3000)},
        context_target_percent=40,
        context_keep_rounds=3,
        context_keep_user_turns=4,
        context_elide_head_chars=100,
        context_elide_tail_chars=50,
    )
    limits = limits_for(settings, "openai:m", None, {})
    assert (limits.window, limits.output_reserve, limits.target) == (50_000, 3000, 20_000)
    assert (limits.keep_rounds, limits.keep_user_turns) == (3, 4)
    assert (limits.elide_head_chars, limits.elide_tail_chars) == (100, 50)
    assert limits.auto_compact is True  # the setting's, when the session says nothing


def test_a_model_name_is_split_at_its_first_colon(tmp_path: Path) -> None:
    # "gpt-4-turbo-…" is in the catalog with 4,096 output tokens; the default would be 8,192
    limits = limits_for(Settings(home=tmp_path), "openai:gpt-4-turbo-2024:ft", 128_000, {})
    assert limits.output_reserve == 4096
