"""Turn a model name (``provider:model``) into a ready :class:`~culm.providers.base.Model`."""

from __future__ import annotations

import httpx2

from culm.errors import UnknownModelError
from culm.providers.base import Model
from culm.providers.catalog import HTTP_PROVIDERS
from culm.providers.remote import build_http_model
from culm.providers.scripted import ScriptedModel, ScriptLibrary
from culm.settings import Settings

EXAMPLES = "openai:gpt-4o-mini, anthropic:claude-sonnet-4-5, scripted:demo"


class ModelResolver:
    def __init__(
        self, settings: Settings, client: httpx2.AsyncClient, scripts: ScriptLibrary
    ) -> None:
        self._settings = settings
        self._client = client
        self.scripts = scripts

    def resolve(self, name: str) -> Model:
        """A fresh model for one run. Raises UnknownModelError or ConfigError (missing key)."""
        provider, sep, model = name.partition(":")
        if not sep or not provider or not model:
            raise UnknownModelError(
                f"model {name!r} must be written provider:model (e.g. {EXAMPLES})"
            )
        if provider == "scripted":
            return ScriptedModel(name, self.scripts.get(model))
        if provider not in HTTP_PROVIDERS:
            known = ", ".join(sorted([*HTTP_PROVIDERS, "scripted"]))
            raise UnknownModelError(
                f"unknown model provider {provider!r} in {name!r} (known: {known})"
            )
        return build_http_model(provider, model, self._settings, self._client)
