"""Cost in the metrics reports: priced when read, from the token sums per model.

Every query groups its token sums by model too, prices each model's sums (``Price``: the
engine's :class:`culm.cost.Pricer`) and adds them up. A model with no price makes its own
row's cost, and every total that includes it, ``None`` (its name is listed as unpriced):
never 0. Prices are per token, so pricing a sum equals summing the rounds' prices.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from culm.domain.models import Usage
from culm.metrics.tables import USAGE_KINDS

Price = Callable[[str, Usage], float | None]


def unpriced(model: str, usage: Usage) -> float | None:
    return None


def usage_of(row: Any) -> Usage:
    return Usage(**{kind: int(getattr(row, kind) or 0) for kind in USAGE_KINDS})


def forward_model(endpoint: str | None, model: str | None) -> str | None:
    """A proxied request's model as ``provider:model`` (the endpoint names the provider:
    ``openai.chat_completions`` → ``openai``)."""
    if model is None or endpoint is None:
        return None
    return f"{endpoint.split('.', 1)[0]}:{model}"


class CostSum:
    """Adds up the cost of usage per model; ``None`` once an unpriced model with usage is in."""

    __slots__ = ("_price", "cost", "unpriced")

    def __init__(self, price: Price) -> None:
        self._price = price
        self.cost: float | None = 0.0
        self.unpriced: set[str] = set()

    def add(self, model: str | None, usage: Usage) -> float | None:
        """Add ``usage`` of ``model``; returns its own cost."""
        if not (usage.prompt_tokens or usage.completion_tokens or usage.total_tokens):
            return 0.0 if model is not None and self._price(model, usage) is not None else None
        cost = self._price(model, usage) if model is not None else None
        if cost is None:
            self.unpriced.add(model or "unknown")
            self.cost = None
        elif self.cost is not None:
            self.cost += cost
        return cost

    def merge(self, others: Iterable[CostSum]) -> CostSum:
        for other in others:
            self.unpriced |= other.unpriced
            self.cost = None if self.cost is None or other.cost is None else self.cost + other.cost
        return self

    def add_all(self, pairs: Iterable[tuple[str | None, Usage]]) -> CostSum:
        for model, usage in pairs:
            self.add(model, usage)
        return self
