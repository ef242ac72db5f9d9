"""The :class:`ContextLimits` of a session's model, from the settings (see ``budget.py``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from culm.context.budget import ContextLimits, resolve_window
from culm.providers.catalog import HTTP_PROVIDERS, model_info
from culm.settings import Settings


def limits_for(
    settings: Settings, model_name: str, known_window: int | None, metadata: Mapping[str, Any]
) -> ContextLimits:
    """``known_window``: what the model itself says (the catalog's, or a script's)."""
    provider, _, model = model_name.partition(":")
    known_output = (
        model_info(provider, model).max_output_tokens if provider in HTTP_PROVIDERS else None
    )
    window, output = resolve_window(
        model_name,
        metadata,
        settings.models,
        (known_window, known_output),
        (settings.context_window, settings.context_output_reserve),
    )
    auto = metadata.get("auto_compact")
    return ContextLimits(
        window=window,
        output_reserve=output,
        working_reserve=min(settings.context_working_reserve, window // 8),
        trigger_percent=settings.context_trigger_percent,
        target_percent=settings.context_target_percent,
        auto_compact=settings.context_auto_compact if not isinstance(auto, bool) else auto,
        keep_rounds=settings.context_keep_rounds,
        keep_user_turns=settings.context_keep_user_turns,
        elide_head_chars=settings.context_elide_head_chars,
        elide_tail_chars=settings.context_elide_tail_chars,
    )
