"""What one run of the agent loop works with, and the values its steps return."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from culm.context.budget import ContextLimits
from culm.context.overflow import OverflowMatcher
from culm.domain.compaction import Compaction
from culm.domain.events import RunEvent, RunEventBase
from culm.domain.models import Message, Session, Usage
from culm.loop.spend import RunBudget, Spend
from culm.providers.base import Model
from culm.tools.base import Tool
from culm.tracing.spans import RunTracing


async def _no_wait() -> None:
    return None


async def _append_only(messages: Sequence[Message], request_ids: Sequence[str]) -> None:
    return None


async def _no_compaction() -> Compaction | None:
    return None


async def _keep(compaction: Compaction) -> Compaction:
    return compaction


def _unpriced(model: str, usage: Usage) -> float | None:
    return None


@dataclass(frozen=True, kw_only=True, slots=True)
class ContextSettings:
    """How the run manages its context window (see ``culm.context``).

    ``limits`` None: the model's known window or 128k, with the default reserves.
    ``summarizer``: the model that writes compaction summaries (None: the run's).
    ``load``/``save``: the session's latest compaction, and storing a new one.
    """

    limits: ContextLimits | None = None
    summarizer: Model | None = None
    overflow: OverflowMatcher = field(default_factory=OverflowMatcher)
    load: Callable[[], Awaitable[Compaction | None]] = _no_compaction
    save: Callable[[Compaction], Awaitable[Compaction]] = _keep


@dataclass(frozen=True, kw_only=True, slots=True)
class LoopLimits:
    max_rounds: int = 50
    max_tool_calls_per_round: int = 32
    tool_timeout: float = 120.0
    model_max_attempts: int = 3
    retry_base_delay: float = 0.5
    retry_max_delay: float = 30.0
    stream_idle_timeout: float = 120.0


@dataclass(frozen=True, kw_only=True, slots=True)
class LoopContext:
    session: Session
    model: Model
    tools: Mapping[str, Tool]
    workspace: Path
    limits: LoopLimits
    emit: Callable[[RunEventBase], RunEvent]
    append_messages: Callable[[Sequence[Message]], Awaitable[None]]
    budget_limit: int | None = None
    run_id: str = ""
    # Flow control: ``congested()`` is true while the engine's events await storage faster
    # than they are stored; a producer then awaits ``room()`` (see EventBatcher).
    congested: Callable[[], bool] = lambda: False
    room: Callable[[], Awaitable[None]] = _no_wait
    context: ContextSettings = field(default_factory=ContextSettings)
    # A resumed run stores the results of its waiting calls and marks their requests applied
    # (``culm.input``), in one write.
    resolve_input: Callable[[Sequence[Message], Sequence[str]], Awaitable[None]] = _append_only
    # The cost in USD of a model's usage (None: unpriced; see culm.cost), and the run's budget.
    price: Callable[[str, Usage], float | None] = _unpriced
    budget: RunBudget = field(default_factory=RunBudget)
    tracing: RunTracing = field(default_factory=RunTracing)  # no-op unless exporting


@dataclass(kw_only=True, slots=True)
class LoopState:
    """Mutable progress of a run; the runtime reads ``usage`` whatever the outcome."""

    messages: list[Message]
    usage: Usage = field(default_factory=Usage)
    round: int = 0
    spend: Spend = field(default_factory=Spend)  # sub-agents' included (culm.loop.spend)


@dataclass(frozen=True, slots=True)
class FinalAnswer:
    """The run's answer. Its last ``messages`` are not stored yet: the runtime stores them in
    the transaction that ends the run (with its terminal event), one write less at its end."""

    text: str
    messages: tuple[Message, ...] = ()


@dataclass(frozen=True, slots=True)
class RunAgain:
    pass


NextStep = FinalAnswer | RunAgain
