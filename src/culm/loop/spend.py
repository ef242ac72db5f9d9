"""What a run spends (tokens and dollars, its sub-agents' included) and its budget.

The spend is read off the events the run emits: its own ``round_completed`` events (the
summarizer's too) and, inside ``sub_agent_event`` copies, those of every descendant, so a
sub-agent's rounds count toward its parent's (and grandparent's) budget as they happen.
A round of a model with no known price adds no dollars; ``unpriced`` says one happened.

After a round, a run past its ``max_tokens`` or ``max_cost_usd`` ends: ``budget_exceeded``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from culm.domain.events import RoundCompleted, RunEventBase, SubAgentEvent
from culm.domain.models import Run, Session, Usage
from culm.errors import BudgetExceededError


@dataclass(frozen=True, kw_only=True, slots=True)
class RunBudget:
    """A run's limits on spend (None: no limit)."""

    max_tokens: int | None = None
    max_cost_usd: float | None = None

    @property
    def limited(self) -> bool:
        return self.max_tokens is not None or self.max_cost_usd is not None


def run_budget(run: Run, session: Session) -> RunBudget:
    """The run's own limits, else its session's."""
    return RunBudget(
        max_tokens=run.max_tokens if run.max_tokens is not None else session.max_tokens,
        max_cost_usd=run.max_cost_usd if run.max_cost_usd is not None else session.max_cost_usd,
    )


@dataclass(kw_only=True, slots=True)
class Spend:
    tokens: int = 0
    cost_usd: float = 0.0
    unpriced: bool = False

    def add(self, usage: Usage | Mapping[str, Any], cost_usd: float | None) -> None:
        if isinstance(usage, Usage):
            usage = usage.model_dump()
        total = int(usage.get("total_tokens") or 0)
        self.tokens += total or int(usage.get("prompt_tokens") or 0) + int(
            usage.get("completion_tokens") or 0
        )
        if cost_usd is None:
            self.unpriced |= bool(total or usage.get("prompt_tokens"))
        else:
            self.cost_usd += cost_usd

    def observe(self, event: RunEventBase) -> None:
        if isinstance(event, RoundCompleted):
            self.add(event.usage, event.cost_usd)
        elif isinstance(event, SubAgentEvent):
            self._descendant(event.event)

    def _descendant(self, event: Mapping[str, Any]) -> None:
        while event.get("type") == "sub_agent_event":  # a grandchild's, wrapped once per level
            event = event.get("event") or {}
        if event.get("type") == "round_completed":
            self.add(event.get("usage") or {}, event.get("cost_usd"))

    def check(self, budget: RunBudget) -> None:
        """Raise :class:`BudgetExceededError` if the spend passed a limit of ``budget``."""
        if budget.max_tokens is not None and self.tokens > budget.max_tokens:
            raise BudgetExceededError(
                f"the run used {self.tokens} tokens, past its max_tokens ({budget.max_tokens})"
            )
        if budget.max_cost_usd is not None and self.cost_usd > budget.max_cost_usd:
            raise BudgetExceededError(
                f"the run spent ${self.cost_usd:.6f}, past its max_cost_usd "
                f"(${budget.max_cost_usd:g})"
            )
