"""A run's cost: its own rounds', and with every sub-agent run below it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

from culm.cost.prices import Pricer, add_costs
from culm.domain.models import Run

Children = Callable[[str], Awaitable[Sequence[Run]]]


def priced(run: Run, pricer: Pricer) -> Run:
    """``run`` with ``cost_usd``: its usage at its model's price (None: unpriced)."""
    return run.model_copy(update={"cost_usd": pricer.cost(run.model, run.usage)})


async def with_descendants(run: Run, pricer: Pricer, children: Children) -> Run:
    """``run`` priced, with ``cost_usd_with_descendants``: its cost plus that of every run
    below it (None if any of them is unpriced)."""
    run = priced(run, pricer)
    costs: list[float | None] = [run.cost_usd]
    frontier = [run.run_id]
    while frontier:
        below = [child for parent in frontier for child in await children(parent)]
        costs.extend(pricer.cost(child.model, child.usage) for child in below)
        frontier = [child.run_id for child in below]
    return run.model_copy(update={"cost_usd_with_descendants": add_costs(costs)})
