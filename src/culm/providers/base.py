"""The model seam: a request, the parts a model streams back, and the ``Model`` protocol.

A provider adapter turns a :class:`ModelRequest` into its wire format, streams the response and
yields :data:`StreamPart` values. It raises the ``Model*Error`` classes of :mod:`culm.errors`;
retrying is the loop's job, not the adapter's.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from culm.domain.models import Message, Usage


@dataclass(frozen=True, kw_only=True, slots=True)
class ToolSpec:
    """A tool as offered to the model."""

    name: str
    description: str
    parameters: dict[str, Any]


@dataclass(frozen=True, kw_only=True, slots=True)
class ModelRequest:
    system_prompt: str | None
    messages: Sequence[Message]
    tools: Sequence[ToolSpec] = ()
    max_output_tokens: int | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class TextDelta:
    text: str


@dataclass(frozen=True, kw_only=True, slots=True)
class ReasoningDelta:
    text: str
    signature: str | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class ToolCallDelta:
    """A piece of a tool call. ``index`` identifies the call within the response; ``id`` and
    ``name`` come with the first piece, ``arguments`` fragments are concatenated in order."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""


@dataclass(frozen=True, kw_only=True, slots=True)
class UsageReport:
    """Usage as reported so far. A later report replaces an earlier one (cumulative).
    ``model``: the model that answered, as the provider names it (when it says)."""

    usage: Usage
    model: str | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class Finish:
    reason: str


StreamPart = TextDelta | ReasoningDelta | ToolCallDelta | UsageReport | Finish


class Model(Protocol):
    """One model of one provider, ready to be called (credentials resolved)."""

    @property
    def name(self) -> str:
        """The full ``provider:model`` name."""
        ...

    @property
    def max_context_tokens(self) -> int | None: ...

    def stream(self, request: ModelRequest) -> AsyncIterator[StreamPart]:
        """Stream one response. Must be an async generator that cleans up when closed."""
        ...


@dataclass(kw_only=True, slots=True)
class ModelInfo:
    """Model quirks as data (context sizes, output limits), keyed by model-name prefix."""

    max_context_tokens: int | None = None
    max_output_tokens: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)
