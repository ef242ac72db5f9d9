"""Building HTTP models from settings: provider configuration and the model table."""

from __future__ import annotations

from pathlib import Path

import httpx2
import pytest

from culm.errors import ConfigError, UnknownModelError
from culm.providers.anthropic import AnthropicMessagesModel
from culm.providers.base import ModelInfo
from culm.providers.catalog import default_max_output_tokens, model_info, provider_config
from culm.providers.openai import OpenAIChatModel
from culm.providers.remote import build_http_model
from culm.settings import Settings


@pytest.fixture
def make_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> type[Settings]:
    monkeypatch.setenv("CULM_HOME", str(tmp_path))
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(f"CULM_{name}", raising=False)
    return Settings


async def test_adapters_by_provider(make_settings: type[Settings]) -> None:
    settings = make_settings(openai_api_key="sk", anthropic_api_key="ak")
    async with httpx2.AsyncClient() as client:
        openai = build_http_model("openai", "gpt-4o-2024-08-06", settings, client)
        anthropic = build_http_model("anthropic", "claude-opus-4-1", settings, client)
    assert isinstance(openai, OpenAIChatModel)
    assert (openai.name, openai.max_context_tokens) == ("openai:gpt-4o-2024-08-06", 128_000)
    assert isinstance(anthropic, AnthropicMessagesModel)
    assert (anthropic.name, anthropic.max_context_tokens) == ("anthropic:claude-opus-4-1", 200_000)


async def test_missing_keys(make_settings: type[Settings]) -> None:
    async with httpx2.AsyncClient() as client:
        with pytest.raises(ConfigError) as caught:
            build_http_model("openai", "gpt-4o", make_settings(), client)
        assert str(caught.value) == "OPENAI_API_KEY is not set (needed for model 'openai:gpt-4o')"

        local = make_settings(openai_base_url="http://localhost:11434/v1/")
        model = build_http_model("openai", "llama3.2", local, client)
        assert model.name == "openai:llama3.2"

        with pytest.raises(ConfigError, match="ANTHROPIC_API_KEY is not set"):
            build_http_model("anthropic", "claude-sonnet-4", local, client)
        anthropic_local = make_settings(anthropic_base_url="http://127.0.0.1:8000")
        model = build_http_model("anthropic", "claude-sonnet-4", anthropic_local, client)
        assert model.name == "anthropic:claude-sonnet-4"
        empty = make_settings(anthropic_api_key="")
        with pytest.raises(ConfigError, match="ANTHROPIC_API_KEY is not set"):
            build_http_model("anthropic", "claude-sonnet-4", empty, client)


async def test_unknown_providers_and_bad_urls(make_settings: type[Settings]) -> None:
    async with httpx2.AsyncClient() as client:
        with pytest.raises(UnknownModelError, match="'scripted'"):
            build_http_model("scripted", "demo", make_settings(), client)
        with pytest.raises(UnknownModelError, match="model name missing"):
            build_http_model("openai", "", make_settings(openai_api_key="sk"), client)
        bad = make_settings(openai_base_url="localhost:8000/v1")
        with pytest.raises(ConfigError, match="OPENAI_BASE_URL must be an http"):
            build_http_model("openai", "llama3", bad, client)


def test_provider_config(make_settings: type[Settings]) -> None:
    public = provider_config("openai", make_settings())
    assert (public.key_required, public.output_limit_field) == (True, "max_completion_tokens")
    local = provider_config("openai", make_settings(openai_base_url="http://127.0.0.1:8000/v1/"))
    assert (local.key_required, local.output_limit_field) == (False, "max_tokens")
    assert local.base_url == "http://127.0.0.1:8000/v1"
    assert "sk-secret" not in repr(
        provider_config("openai", make_settings(openai_api_key="sk-secret"))
    )


@pytest.mark.parametrize(
    ("provider", "model", "context", "output"),
    [
        ("openai", "gpt-4o", 128_000, 16_384),
        ("openai", "gpt-4o-mini-2024-07-18", 128_000, 16_384),
        ("openai", "gpt-4", 8_192, 8_192),
        ("openai", "gpt-4-0613", 8_192, 8_192),
        ("openai", "gpt-4.1-nano", 1_047_576, 32_768),
        ("openai", "o1-mini", 128_000, 65_536),
        ("openai", "o1-2024-12-17", 200_000, 100_000),
        ("anthropic", "claude-3-haiku-20240307", 200_000, 4_096),
        ("anthropic", "claude-opus-4-5-20251101", 200_000, 64_000),
        ("anthropic", "claude-opus-4-1-20250805", 200_000, 32_000),
        ("openai", "llama3.2", None, None),
        ("openai", "gpt-4omega", None, None),
        ("anthropic", "gpt-4o", None, None),
    ],
)
def test_model_info(provider: str, model: str, context: int | None, output: int | None) -> None:
    info = model_info(provider, model)
    assert (info.max_context_tokens, info.max_output_tokens) == (context, output)


def test_default_max_output_tokens() -> None:
    assert default_max_output_tokens(ModelInfo()) == 8192
    assert default_max_output_tokens(ModelInfo(max_output_tokens=4096)) == 4096
    assert default_max_output_tokens(ModelInfo(max_output_tokens=64_000)) == 8192
