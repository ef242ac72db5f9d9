"""Recognising a provider's "the request is too long" answer.

The patterns are data: each is a case-insensitive regular expression matched against the
provider's error text (culm keeps the provider's own message in the exception). More can be
added with ``CULM_CONTEXT_OVERFLOW_PATTERNS`` for a server that words it its own way.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Final

from culm.errors import ModelError, ModelHTTPError

OVERFLOW_PATTERNS: Final[tuple[str, ...]] = (
    r"context_length_exceeded",  # OpenAI's error code
    r"maximum context length",  # OpenAI, vLLM: "This model's maximum context length is …"
    r"prompt is too long",  # Anthropic: "prompt is too long: 210000 tokens > 200000 maximum"
    r"input is too long",  # Anthropic (Bedrock, Vertex)
    r"context window",  # "exceeds the context window" (OpenAI Responses, others)
    r"exceeds? (?:the )?(?:available )?context size",  # llama.cpp server
    r"too many tokens",  # LM Studio, Together
    r"context length",  # Ollama, TGI: "input length exceeds context length"
    r"reduce the length of the (?:messages|prompt)",  # OpenAI's suggestion, older servers
)

# Only a refused request can be an overflow (never a 5xx, a 429 or an auth error).
_STATUSES: Final = frozenset({400, 413, 422})


class OverflowMatcher:
    def __init__(self, extra: Iterable[str] = ()) -> None:
        self._pattern = re.compile("|".join([*OVERFLOW_PATTERNS, *extra]), re.IGNORECASE)

    def is_overflow(self, exc: BaseException) -> bool:
        if not isinstance(exc, ModelError):
            return False
        if isinstance(exc, ModelHTTPError) and exc.status not in _STATUSES:
            return False
        return self._pattern.search(str(exc)) is not None
