"""Prices: what a model's usage costs, in US dollars.

A model (``provider:model``) is priced by, in order: its override (config.toml
``[models."provider:model".price]``, USD per million tokens of each usage kind), then the
offline price table of ``genai-prices`` (bundled data; nothing is downloaded). A model found in
neither is *unpriced*: its cost is ``None``, never 0, and a sum that includes it is ``None``.

Cost by usage kind: uncached input (``prompt_tokens`` less the cache reads and writes), cache
reads, cache writes and output (``completion_tokens``, reasoning included) each at their own
rate; an override may price reasoning tokens apart (then they are taken out of the output).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from functools import lru_cache

from pydantic import BaseModel, ConfigDict, Field

from culm.domain.models import Usage

PER_TOKEN = 1 / 1_000_000


class ModelPrice(BaseModel):
    """A model's price override, in USD per million tokens of each kind (a kind not given costs
    what ``input`` / ``output`` cost)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    input: float = Field(ge=0)
    output: float = Field(ge=0)
    cache_read: float | None = Field(default=None, ge=0)
    cache_write: float | None = Field(default=None, ge=0)
    reasoning: float | None = Field(default=None, ge=0)

    def cost(self, usage: Usage) -> float:
        cached = usage.cache_read_tokens + usage.cache_write_tokens
        uncached = max(0, usage.prompt_tokens - cached)
        output, reasoning = usage.completion_tokens, 0
        if self.reasoning is not None:
            reasoning = min(usage.reasoning_tokens, output)
            output -= reasoning
        total = (
            uncached * self.input
            + usage.cache_read_tokens * _or(self.cache_read, self.input)
            + usage.cache_write_tokens * _or(self.cache_write, self.input)
            + output * self.output
            + reasoning * _or(self.reasoning, self.output)
        )
        return total * PER_TOKEN


class Pricer:
    """Prices usage of ``provider:model`` names: overrides first, then the offline table."""

    def __init__(self, overrides: Mapping[str, ModelPrice] | None = None) -> None:
        self._overrides = dict(overrides or {})

    def cost(self, model: str | None, usage: Usage) -> float | None:
        """The cost of ``usage`` on ``model`` in USD, or None if the model is unpriced."""
        if model is None:
            return None
        override = self._overrides.get(model)
        if override is not None:
            return override.cost(usage)
        if not _has_usage(usage):
            return 0.0 if _table_knows(model) else None
        return _table_cost(model, usage)

    def priced(self, model: str | None) -> bool:
        return model is not None and (model in self._overrides or _table_knows(model))


def add_costs(costs: Iterable[float | None]) -> float | None:
    """The sum of costs, or None if any of them is unknown (an unpriced part is not free)."""
    total = 0.0
    for cost in costs:
        if cost is None:
            return None
        total += cost
    return total


def _or(value: float | None, default: float) -> float:
    return default if value is None else value


def _has_usage(usage: Usage) -> bool:
    return bool(usage.prompt_tokens or usage.completion_tokens)


def _split(model: str) -> tuple[str | None, str]:
    provider, sep, name = model.partition(":")
    return (provider, name) if sep else (None, model)


@lru_cache(maxsize=1024)
def _table_knows(model: str) -> bool:
    return _table_cost(model, Usage(prompt_tokens=1, completion_tokens=1)) is not None


def _table_cost(model: str, usage: Usage) -> float | None:
    from genai_prices import Usage as TableUsage
    from genai_prices import calc_price

    provider, name = _split(model)
    if provider == "scripted":
        return None  # culm's own demo models: no price, and no lookup by a similar name
    table_usage = TableUsage(
        input_tokens=usage.prompt_tokens,
        cache_read_tokens=usage.cache_read_tokens or None,
        cache_write_tokens=usage.cache_write_tokens or None,
        output_tokens=usage.completion_tokens,
    )
    try:
        price = calc_price(table_usage, model_ref=name, provider_id=provider)
    except LookupError:
        return None
    return float(price.total_price)
