"""Providers and model quirks as data.

A provider is an endpoint plus credentials (:class:`ProviderConfig`) speaking one wire format;
an OpenAI-compatible server (vLLM, Ollama, llama.cpp, LM Studio) is the ``openai`` provider with
another ``OPENAI_BASE_URL``, not a new adapter. Model limits come from a table of name prefixes
(:func:`model_info`), never from ``if model.startswith(...)`` in an adapter.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal
from urllib.parse import urlsplit

from pydantic import SecretStr

from culm.errors import ConfigError, UnknownModelError
from culm.providers.base import ModelInfo
from culm.settings import Settings

WireFormat = Literal["chat_completions", "messages"]

# Anthropic requires ``max_tokens``; without one in the request we send this (capped by the model).
DEFAULT_MAX_OUTPUT_TOKENS: Final = 8192


@dataclass(frozen=True, kw_only=True, slots=True)
class ProviderConfig:
    """Where and how to reach one provider.

    ``output_limit_field`` is the request key that carries the output limit: the public OpenAI
    API wants ``max_completion_tokens`` (its reasoning models refuse ``max_tokens``), compatible
    servers know ``max_tokens``.
    """

    name: str
    wire_format: WireFormat
    base_url: str
    api_key: SecretStr | None
    key_env: str
    key_required: bool
    output_limit_field: str = "max_tokens"

    @property
    def key(self) -> str | None:
        """The API key in clear, or ``None`` when unset or empty."""
        if self.api_key is None:
            return None
        return self.api_key.get_secret_value() or None

    def check_credentials(self, model_name: str) -> None:
        """Raise :class:`ConfigError` when a required key is missing."""
        if self.key_required and self.key is None:
            raise ConfigError(f"{self.key_env} is not set (needed for model {model_name!r})")


@dataclass(frozen=True, kw_only=True, slots=True)
class _ProviderSpec:
    wire_format: WireFormat
    key_env: str
    base_url_env: str
    # The key is required for the provider's public host only: a local or compatible server
    # (``*_BASE_URL``) may need none.
    key_required_host: str
    public_limit_field: str
    compatible_limit_field: str


_PROVIDERS: Final[dict[str, _ProviderSpec]] = {
    "openai": _ProviderSpec(
        wire_format="chat_completions",
        key_env="OPENAI_API_KEY",
        base_url_env="OPENAI_BASE_URL",
        key_required_host="api.openai.com",
        public_limit_field="max_completion_tokens",
        compatible_limit_field="max_tokens",
    ),
    "anthropic": _ProviderSpec(
        wire_format="messages",
        key_env="ANTHROPIC_API_KEY",
        base_url_env="ANTHROPIC_BASE_URL",
        key_required_host="api.anthropic.com",
        public_limit_field="max_tokens",
        compatible_limit_field="max_tokens",
    ),
}

# (provider, model-name prefix, max context tokens, max output tokens). A prefix matches the
# name itself or the name followed by ``-`` (``gpt-4o`` matches ``gpt-4o-2024-08-06`` but not
# ``gpt-4o-mini`` when that has its own row); the longest matching prefix wins.
_MODELS: Final[tuple[tuple[str, str, int, int], ...]] = (
    ("openai", "gpt-3.5-turbo", 16_385, 4_096),
    ("openai", "gpt-4", 8_192, 8_192),
    ("openai", "gpt-4-turbo", 128_000, 4_096),
    ("openai", "gpt-4o", 128_000, 16_384),
    ("openai", "gpt-4o-mini", 128_000, 16_384),
    ("openai", "gpt-4.1", 1_047_576, 32_768),
    ("openai", "gpt-5", 400_000, 128_000),
    ("openai", "o1", 200_000, 100_000),
    ("openai", "o1-mini", 128_000, 65_536),
    ("openai", "o3", 200_000, 100_000),
    ("openai", "o3-mini", 200_000, 100_000),
    ("openai", "o4-mini", 200_000, 100_000),
    ("anthropic", "claude-3-haiku", 200_000, 4_096),
    ("anthropic", "claude-3-opus", 200_000, 4_096),
    ("anthropic", "claude-3-5-haiku", 200_000, 8_192),
    ("anthropic", "claude-3-5-sonnet", 200_000, 8_192),
    ("anthropic", "claude-3-7-sonnet", 200_000, 64_000),
    ("anthropic", "claude-sonnet-4", 200_000, 64_000),
    ("anthropic", "claude-opus-4", 200_000, 32_000),
    ("anthropic", "claude-opus-4-5", 200_000, 64_000),
    ("anthropic", "claude-haiku-4-5", 200_000, 64_000),
)


HTTP_PROVIDERS = frozenset(_PROVIDERS)


def provider_config(provider: str, settings: Settings) -> ProviderConfig:
    """The configuration of a built-in HTTP provider, read from ``settings``."""
    spec = _PROVIDERS.get(provider)
    if spec is None:
        known = ", ".join(sorted(_PROVIDERS))
        raise UnknownModelError(f"unknown model provider {provider!r} (known: {known})")
    base_url: str = getattr(settings, f"{provider}_base_url").rstrip("/")
    parts = urlsplit(base_url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{spec.base_url_env} must be an http(s) URL, got {base_url!r}")
    public = parts.hostname == spec.key_required_host
    return ProviderConfig(
        name=provider,
        wire_format=spec.wire_format,
        base_url=base_url,
        api_key=getattr(settings, f"{provider}_api_key"),
        key_env=spec.key_env,
        key_required=public,
        output_limit_field=spec.public_limit_field if public else spec.compatible_limit_field,
    )


def model_info(provider: str, model: str) -> ModelInfo:
    """Known limits of a model; unknown models (and unknown limits) get ``None``."""
    best: tuple[str, int, int] | None = None
    for row_provider, prefix, context, output in _MODELS:
        matches = model == prefix or model.startswith(prefix + "-")
        if row_provider == provider and matches and (best is None or len(prefix) > len(best[0])):
            best = (prefix, context, output)
    if best is None:
        return ModelInfo()
    return ModelInfo(max_context_tokens=best[1], max_output_tokens=best[2])


def default_max_output_tokens(info: ModelInfo) -> int:
    """The output limit to send when the request sets none and the API requires one."""
    return min(DEFAULT_MAX_OUTPUT_TOKENS, info.max_output_tokens or DEFAULT_MAX_OUTPUT_TOKENS)
