"""The token budget: how big a model's window is, where compaction starts and stops, and how
big the next prompt is.

The window and the output reserve resolve, first found wins, from: the session's metadata
(``max_context_tokens``, ``max_output_tokens``) → ``config.toml`` ``[models."provider:model"]``
→ the shipped catalog (``providers/catalog.py``) → the defaults in the settings. The output
reserve is capped at a quarter of the window, so that a model with a huge output limit still
has room for its prompt.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from culm.context import estimate
from culm.domain.models import Message, Usage
from culm.providers.base import ModelRequest
from culm.settings import ModelLimits


@dataclass(frozen=True, kw_only=True, slots=True)
class ContextLimits:
    """The budget of one run's model calls (tokens unless named otherwise)."""

    window: int
    output_reserve: int
    working_reserve: int
    trigger_percent: float | None = None  # None: window - output_reserve - working_reserve
    target_percent: float = 50.0
    auto_compact: bool = True
    keep_rounds: int = 2
    keep_user_turns: int = 2
    elide_head_chars: int = 600
    elide_tail_chars: int = 300

    @property
    def trigger(self) -> int:
        """Compaction starts when the next request would pass this many tokens."""
        if self.trigger_percent is not None:
            return int(self.window * self.trigger_percent / 100)
        return max(1, self.window - self.output_reserve - self.working_reserve)

    @property
    def target(self) -> int:
        """Compaction stops as soon as the request fits under this many tokens."""
        return min(self.trigger, int(self.window * self.target_percent / 100))

    def percent(self, tokens: int) -> float:
        return round(100.0 * tokens / self.window, 1)


def resolve_window(
    model_name: str,
    metadata: Mapping[str, Any],
    configured: Mapping[str, ModelLimits],
    catalog: tuple[int | None, int | None],
    defaults: tuple[int, int],
) -> tuple[int, int]:
    """(window, output reserve) for ``model_name``, by the order in the module's docstring."""
    table = configured.get(model_name) or ModelLimits()
    window = _first(
        metadata.get("max_context_tokens"), table.max_context_tokens, catalog[0], defaults[0]
    )
    output = _first(
        metadata.get("max_output_tokens"), table.max_output_tokens, catalog[1], defaults[1]
    )
    return window, min(output, window // 4)


def _first(*values: Any) -> int:
    return next(int(value) for value in values if isinstance(value, int) and value > 0)


@dataclass(slots=True)
class _Anchor:
    view_version: int  # the view it was measured on (a compaction makes a new one)
    view_length: int
    reported: int  # prompt tokens the provider reported for the request


class PromptMeter:
    """The size of the next prompt: the provider's last reported ``prompt_tokens`` plus an
    estimate of what was added since; a full estimate when there is no report for this view
    (the run's first call, or after a compaction).

    The estimate is calibrated: each report gives the ratio of the provider's count to ours
    for the same request, and later estimates are scaled by it (clamped to 0.5–3).
    """

    def __init__(self) -> None:
        self._anchor: _Anchor | None = None
        self.ratio = 1.0

    def measure(self, request: ModelRequest, version: int) -> tuple[int, bool]:
        """(prompt tokens, estimated) for ``request`` on view ``version``."""
        anchor = self._anchor
        messages: Sequence[Message] = request.messages
        if anchor is not None and anchor.view_version == version:
            if len(messages) == anchor.view_length:
                return anchor.reported, False
            if len(messages) > anchor.view_length:
                added = estimate.messages_tokens(messages[anchor.view_length :])
                return anchor.reported + self._scaled(added), True
        whole = estimate.request_tokens(request.system_prompt, messages, request.tools)
        return self._scaled(whole), True

    def reported(self, request: ModelRequest, version: int, usage: Usage) -> None:
        """The provider reported ``usage`` for ``request`` (made on view ``version``)."""
        if usage.prompt_tokens <= 0:
            return
        ours = estimate.request_tokens(request.system_prompt, request.messages, request.tools)
        if ours > 0:
            self.ratio = min(3.0, max(0.5, usage.prompt_tokens / ours))
        self._anchor = _Anchor(version, len(request.messages), usage.prompt_tokens)

    def underestimated(self) -> None:
        """The provider refused a request our estimate said fits: estimate higher from now."""
        self.ratio = min(3.0, self.ratio * 1.25)
        self._anchor = None

    def _scaled(self, tokens: int) -> int:
        return int(tokens * self.ratio + 0.5)
