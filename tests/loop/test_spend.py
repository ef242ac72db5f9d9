"""A run's spend counts its descendants' rounds, however deeply wrapped (``loop/spend.py``;
found by mutation testing, issue #22)."""

from __future__ import annotations

from typing import Any

import pytest

from culm.domain.events import RoundCompleted, SubAgentEvent
from culm.domain.models import Run, Session, Usage
from culm.errors import BudgetExceededError
from culm.loop.spend import RunBudget, Spend, run_budget


def _from_child(event: dict[str, Any]) -> SubAgentEvent:
    return SubAgentEvent(child_session_id="c", child_run_id="r", event=event)


def test_descendants_rounds_count_and_their_other_events_do_not() -> None:
    spend = Spend()
    round_ = {"type": "round_completed", "usage": {"total_tokens": 30}, "cost_usd": 0.5}
    spend.observe(_from_child(round_))
    grandchild = {"type": "sub_agent_event", "event": round_ | {"usage": {"total_tokens": 7}}}
    spend.observe(_from_child(grandchild))
    assert (spend.tokens, spend.cost_usd, spend.unpriced) == (37, 1.0, False)

    spend.observe(_from_child({"type": "text_delta", "usage": {"total_tokens": 1000}}))
    spend.observe(_from_child({"type": "sub_agent_event"}))  # nothing inside
    spend.observe(_from_child({"type": "round_completed"}))  # no usage: nothing spent
    assert (spend.tokens, spend.cost_usd, spend.unpriced) == (37, 1.0, False)

    unpriced = {"type": "round_completed", "usage": {"prompt_tokens": 5, "completion_tokens": 2}}
    spend.observe(_from_child(unpriced))
    assert (spend.tokens, spend.cost_usd, spend.unpriced) == (44, 1.0, True)


def test_a_round_adds_its_total_or_else_its_prompt_and_completion_and_its_price() -> None:
    spend = Spend()
    usage = Usage(total_tokens=100)
    spend.observe(RoundCompleted(round=1, usage=usage, latency_ms=1, model="m", cost_usd=0.25))
    assert (spend.tokens, spend.cost_usd, spend.unpriced) == (100, 0.25, False)
    spend.observe(RoundCompleted(round=2, usage=usage, latency_ms=1, model="m"))
    assert (spend.tokens, spend.cost_usd, spend.unpriced) == (200, 0.25, True)
    spend = Spend()
    spend.add(Usage(prompt_tokens=30, completion_tokens=12, total_tokens=50), 0.25)
    spend.add(Usage(prompt_tokens=30, completion_tokens=12), 0.5)  # no total: the sum
    spend.add({"prompt_tokens": 7, "completion_tokens": 1, "total_tokens": None}, 0.0)
    assert (spend.tokens, spend.cost_usd, spend.unpriced) == (50 + 42 + 8, 0.75, False)
    spend.add(Usage(), None)  # nothing used: no price was missing
    spend.add({"completion_tokens": 3}, None)  # nothing read: not counted as unpriced
    assert (spend.tokens, spend.unpriced) == (103, False)
    spend.add({"prompt_tokens": 2}, None)
    assert (spend.tokens, spend.unpriced) == (105, True)
    spend.add(Usage(total_tokens=1), 1.0)  # a later priced round does not clear it
    assert (spend.tokens, spend.cost_usd, spend.unpriced) == (106, 1.75, True)
    spend.add(Usage(), None)  # nor does a later empty one
    assert spend.unpriced


def test_a_run_ends_only_past_its_limits() -> None:
    budget = RunBudget(max_tokens=100, max_cost_usd=0.5)
    Spend(tokens=100, cost_usd=0.5).check(budget)  # at the limits: not past them
    Spend(tokens=10**9, cost_usd=10.0).check(RunBudget())
    with pytest.raises(BudgetExceededError) as tokens:
        Spend(tokens=101, cost_usd=0.5).check(budget)
    assert str(tokens.value) == "the run used 101 tokens, past its max_tokens (100)"
    with pytest.raises(BudgetExceededError) as cost:
        Spend(tokens=100, cost_usd=0.5000001).check(budget)
    assert str(cost.value) == "the run spent $0.500000, past its max_cost_usd ($0.5)"
    with pytest.raises(BudgetExceededError, match="max_cost_usd"):
        Spend(cost_usd=0.01).check(RunBudget(max_cost_usd=0.0))
    with pytest.raises(BudgetExceededError, match="max_tokens"):
        Spend(tokens=1).check(RunBudget(max_tokens=0))


def test_a_runs_own_limits_come_before_its_sessions() -> None:
    session = Session(session_id="s", model="m", workspace="/w", max_tokens=10, max_cost_usd=1.5)
    own = Run(run_id="r", session_id="s", model="m", max_tokens=20, max_cost_usd=0.0)
    assert run_budget(own, session) == RunBudget(max_tokens=20, max_cost_usd=0.0)
    inherited = Run(run_id="r", session_id="s", model="m")
    assert run_budget(inherited, session) == RunBudget(max_tokens=10, max_cost_usd=1.5)
    bare = Session(session_id="s", model="m", workspace="/w")
    assert run_budget(inherited, bare) == RunBudget()
    assert not RunBudget().limited
    assert RunBudget(max_tokens=0).limited and RunBudget(max_cost_usd=0.0).limited
