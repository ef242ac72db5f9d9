"""A run's spend counts its descendants' rounds, however deeply wrapped (``loop/spend.py``;
found by mutation testing, issue #22)."""

from __future__ import annotations

from typing import Any

from culm.domain.events import SubAgentEvent
from culm.loop.spend import Spend


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
