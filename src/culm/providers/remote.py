"""Building the HTTP-backed models (``openai:…``, ``anthropic:…``) from settings."""

from __future__ import annotations

from typing import Final

import httpx2

from culm.errors import UnknownModelError
from culm.providers.anthropic import AnthropicMessagesModel
from culm.providers.base import Model
from culm.providers.catalog import WireFormat, model_info, provider_config
from culm.providers.openai import OpenAIChatModel
from culm.settings import Settings

_ADAPTERS: Final[dict[WireFormat, type[OpenAIChatModel] | type[AnthropicMessagesModel]]] = {
    "chat_completions": OpenAIChatModel,
    "messages": AnthropicMessagesModel,
}


def build_http_model(
    provider: str, model: str, settings: Settings, client: httpx2.AsyncClient
) -> Model:
    """The model ``provider:model``, streaming through the shared ``client``.

    Raises :class:`~culm.errors.UnknownModelError` for a provider that is not served over HTTP
    (or an empty model name) and :class:`~culm.errors.ConfigError` when a required API key or a
    valid base URL is missing.
    """
    config = provider_config(provider, settings)
    if not model:
        raise UnknownModelError(f"model name missing in {provider + ':'!r}")
    config.check_credentials(f"{provider}:{model}")
    adapter = _ADAPTERS[config.wire_format]
    return adapter(
        model=model,
        config=config,
        client=client,
        info=model_info(provider, model),
        timeout=httpx2.Timeout(None, connect=settings.model_connect_timeout),
    )
