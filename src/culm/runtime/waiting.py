"""A run that waits for a person (``culm.input``): parking it, and picking its answers up when
it resumes.

Parking happens when the loop returns :class:`~culm.loop.approval.WaitForInput`: everything
the run emitted is stored first, then one fenced transaction stores the round's messages, the
requests, their ``input_requested`` events (stamped here, after the last seq stored) and makes
the run ``waiting`` and unowned (``Store.park_run``). The runner then ends like any other:
removed from the registry, its task done, its subscribers sent to the store. Nothing of the run
stays in this process.

Resuming: a claimed run that has done rounds and has answered requests not yet applied is a
resumed run. It goes on as the same attempt: no second ``execution_started``, its usage and
round count carried on from what parking stored, and its spend (its sub-agents' included)
read back from the rounds they stored, so a budget counts what was spent before the wait.
"""

from __future__ import annotations

from collections.abc import Sequence

from culm.domain.events import InputRequested, RunEvent
from culm.domain.input import InputRequest
from culm.domain.models import Run, RunStatus, Usage
from culm.loop.approval import PendingInput, WaitForInput
from culm.loop.spend import Spend
from culm.runtime.batcher import EventBatcher
from culm.runtime.registry import RunnerRegistry
from culm.runtime.runner import Runner
from culm.storage.base import Fence, Store

_ANSWERED = ("answered", "expired")
_ROUNDS = 1_000_000  # every round of a run
_CHILDREN = 10_000  # every sub-agent of a run (the engine-wide cap is far below)


async def park(
    store: Store,
    batcher: EventBatcher,
    registry: RunnerRegistry,
    runner: Runner,
    fence: Fence,
    wait: WaitForInput,
    *,
    usage: Usage,
    timeout: float | None,
) -> None:
    """Make the run wait (see the module's docstring). Raises ``LeaseLostError`` when the run
    is no longer this process's; sets ``runner.status`` to what the store made of it."""
    await batcher.flush()
    if batcher.isolated(runner.run_id, runner.epoch):
        return  # its writes were refused: no longer ours to park
    events = [runner.stamp_held(_requested(request)) for request in wait.requests]
    status = await store.park_run(
        runner.run_id,
        fence=fence,
        messages=wait.messages,
        requests=[_row(request) for request in wait.requests],
        events=events,
        usage=usage,
        timeout=timeout,
    )
    if status is RunStatus.WAITING:
        registry.publish(events)  # to the runner's subscribers, the bus and the metrics
    runner.status = status


def _requested(request: PendingInput) -> InputRequested:
    return InputRequested(
        request_id=request.request_id,
        kind=request.kind,
        tool_call_id=request.call.id,
        tool_name=request.call.name,
        arguments=request.arguments,
        question=request.question,
        choices=request.choices,
    )


def _row(request: PendingInput) -> dict[str, object]:
    return {
        "request_id": request.request_id,
        "kind": request.kind,
        "tool_call_id": request.call.id,
        "tool_name": request.call.name,
        "arguments": request.arguments,
        "question": request.question,
        "choices": request.choices,
    }


async def answered(store: Store, run: Run) -> list[InputRequest]:
    """The answered requests a resumed run applies first (none for a run that has done no
    round: a fresh run asks nothing of the store)."""
    if run.round_count == 0:
        return []
    return await store.list_input([run.run_id], statuses=_ANSWERED)


async def spent_before(store: Store, run: Run) -> Spend:
    """What ``run`` and every run below it spent: the ``round_completed`` events they stored
    (exact costs, whatever model each round used). A resumed run's spend goes on from here."""
    spend, pending = Spend(), [run.run_id]
    while pending:
        run_id = pending.pop()
        for event in await store.read_events_of_types(run_id, ["round_completed"], limit=_ROUNDS):
            spend.observe(event)
        children = await store.list_runs(parent_run_id=run_id, limit=_CHILDREN)
        pending.extend(child.run_id for child in children)
    return spend


def same_attempt(run: Run, requests: Sequence[InputRequest]) -> bool:
    """Whether ``run`` resumes the attempt that asked (else a recovery re-queued it since)."""
    return bool(requests) and all(request.attempt == run.attempt for request in requests)


def announce(registry: RunnerRegistry, events: Sequence[RunEvent], *, local_bus: bool) -> None:
    """Events the store wrote for a waiting run (an answer, a timeout): to the observers (the
    metrics, the bus to other processes) and, without a bus across processes, to this
    process's followers."""
    registry.publish(events)
    if local_bus:
        registry.deliver(events)
