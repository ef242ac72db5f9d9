"""The proxied endpoints: where each route forwards to and how its usage is reported."""

from __future__ import annotations

from typing import Final

from culm.proxy.forward import Endpoint

CHAT_COMPLETIONS: Final = Endpoint(
    "openai.chat_completions", "openai", "POST", "chat/completions", "chat"
)
RESPONSES: Final = Endpoint("openai.responses", "openai", "POST", "responses", "responses")
OPENAI_MODELS: Final = Endpoint("openai.models", "openai", "GET", "models", "none")
MESSAGES: Final = Endpoint("anthropic.messages", "anthropic", "POST", "v1/messages", "messages")
ANTHROPIC_MODELS: Final = Endpoint("anthropic.models", "anthropic", "GET", "v1/models", "none")

# culm's route for each endpoint (``culm.api.routes.proxy`` serves them).
ROUTES: Final[dict[str, Endpoint]] = {
    "/openai/v1/chat/completions": CHAT_COMPLETIONS,
    "/openai/v1/responses": RESPONSES,
    "/openai/v1/models": OPENAI_MODELS,
    "/anthropic/v1/messages": MESSAGES,
    "/anthropic/v1/models": ANTHROPIC_MODELS,
}
