"""Taking runs over, on every backend: the sweeper (expired leases, dead owners) and a
worker's release of its runs on a clean stop."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest
import sqlalchemy as sa

from culm.domain.events import (
    Cancelled,
    Complete,
    Error,
    ExecutionStarted,
    RoundCompleted,
    RunEventBase,
    RunRecovered,
)
from culm.domain.models import Run, RunStatus, Usage, UserMessage
from culm.storage.base import SweepPolicy
from culm.storage.schema import run_events
from culm.storage.sql import SqlStore
from tests.storage.queue_support import (
    T0,
    a_run,
    get,
    new_session,
    owned_run,
    raw_rows,
    ready_run,
    stamp,
    tokens,
)

REQUEUE = SweepPolicy(requeue=True, max_attempts=3, lease_seconds=10)
ERROR = SweepPolicy(requeue=False, max_attempts=3, lease_seconds=10)


async def child_of(store: SqlStore, parent: Run, owner: str, *, lease_seconds: float = 300) -> Run:
    return await owned_run(store, owner, lease_seconds=lease_seconds, parent_run_id=parent.run_id)


async def test_sweep_requeues_an_expired_run_after_its_last_event(store: SqlStore) -> None:
    run = await owned_run(store, "dead", lease_seconds=0)
    await store.append_events(tokens(run, 3), fences={run.run_id: ("dead", 1)})
    wakeups = store.wakeups()
    try:
        [swept] = await store.sweep("me", REQUEUE)
        assert await wakeups.wait(10) is True, "a re-queued run is ready: workers are woken"
    finally:
        await wakeups.aclose()

    assert swept == await get(store, run.run_id)
    assert (swept.status, swept.attempt, swept.epoch, swept.started_at) == (
        RunStatus.PENDING,
        2,
        2,
        None,
    )
    assert swept.last_seq == 4
    [recovered] = await store.read_events(run.run_id, after=3)
    assert isinstance(recovered, RunRecovered)
    assert (recovered.previous_attempt, recovered.action) == (1, "requeued")
    assert await store.get_active_run(run.session_id) == swept, "it keeps its slot"
    [claimed] = await store.claim_runs("w2", limit=5, lease_seconds=300)
    assert (claimed.run_id, claimed.epoch) == (run.run_id, 3)


@pytest.mark.parametrize(
    ("policy", "attempts"), [(ERROR, 1), (REQUEUE, 3)], ids=["policy-error", "max-attempts"]
)
async def test_sweep_ends_a_run_interrupted_by_policy_or_attempts(
    store: SqlStore, policy: SweepPolicy, attempts: int
) -> None:
    run = await owned_run(store, "dead", lease_seconds=0, attempt=attempts)
    await store.append_events(tokens(run, 2), fences={run.run_id: ("dead", 1)})
    queued = (await store.reserve_run(a_run(run.session_id), queue=True)).run

    [ended] = await store.sweep("me", policy)

    assert (ended.status, ended.error, ended.attempt) == (RunStatus.ERROR, "interrupted", attempts)
    assert ended.completed_at is not None and ended.epoch == 2
    recovered, error = await store.read_events(run.run_id, after=2)
    assert isinstance(recovered, RunRecovered) and recovered.action == "errored"
    assert isinstance(error, Error) and (error.code, error.seq) == ("interrupted", 4)
    # Its slot goes to the session's next queued run, now ready.
    [claimed] = await store.claim_runs("w2", limit=5, lease_seconds=300)
    assert claimed.run_id == queued.run_id


async def test_sweep_takes_the_runs_of_dead_owners_whatever_their_lease(store: SqlStore) -> None:
    dead = await owned_run(store, "dead", lease_seconds=3600)
    alive = await owned_run(store, "alive", lease_seconds=3600)

    swept = await store.sweep("me", REQUEUE, dead_owners=["dead"])

    assert [run.run_id for run in swept] == [dead.run_id]
    assert (await get(store, alive.run_id)).status is RunStatus.RUNNING


async def test_children_of_a_run_taken_over_end_parent_recovered(store: SqlStore) -> None:
    parent = await owned_run(store, "dead", lease_seconds=0)
    child = await child_of(store, parent, "dead", lease_seconds=3600)
    grandchild = await child_of(store, child, "dead", lease_seconds=3600)
    await store.append_events(tokens(child, 2), fences={child.run_id: ("dead", 1)})

    swept = await store.sweep("me", REQUEUE)

    by_id = {run.run_id: run for run in swept}
    assert set(by_id) == {parent.run_id, child.run_id, grandchild.run_id}
    assert by_id[parent.run_id].status is RunStatus.PENDING, "the parent is re-queued"
    for run_id in (child.run_id, grandchild.run_id):
        assert by_id[run_id].status is RunStatus.CANCELLED, "a child never runs twice"
        assert by_id[run_id].epoch == 2
    [cancel] = await store.read_events(child.run_id, after=2)
    assert isinstance(cancel, Cancelled) and (cancel.reason, cancel.seq) == ("parent recovered", 3)
    # Its owner's late writes are fenced out.
    late = await store.append_events(
        tokens(child, 1, first_seq=4), fences={child.run_id: ("dead", 1)}
    )
    assert late == {child.run_id}


async def test_an_expired_child_is_never_requeued(store: SqlStore) -> None:
    parent = await owned_run(store, "w1", lease_seconds=3600)
    child = await child_of(store, parent, "w1", lease_seconds=0)

    [swept] = await store.sweep("me", REQUEUE)

    assert (swept.run_id, swept.status) == (child.run_id, RunStatus.CANCELLED)
    assert (await get(store, parent.run_id)).status is RunStatus.RUNNING


async def test_a_run_with_a_cancel_request_ends_cancelled_when_swept(store: SqlStore) -> None:
    run = await owned_run(store, "dead", lease_seconds=0)
    await store.request_cancel(run.run_id, "user")

    [swept] = await store.sweep("me", REQUEUE)

    assert swept.status is RunStatus.CANCELLED, "a cancel request is never lost by a takeover"
    [cancel] = await store.read_events(run.run_id)
    assert isinstance(cancel, Cancelled) and cancel.reason == "user"


@pytest.mark.parametrize("policy", [ERROR, REQUEUE], ids=["error", "requeue"])
@pytest.mark.parametrize(
    ("terminal", "status", "error"),
    [
        (Error(message="boom", code="internal_error"), RunStatus.ERROR, "boom"),
        (Cancelled(reason="stop"), RunStatus.CANCELLED, None),
    ],
)
async def test_a_run_whose_terminal_event_is_stored_ends_as_that_says(
    store: SqlStore,
    policy: SweepPolicy,
    terminal: RunEventBase,
    status: RunStatus,
    error: str | None,
) -> None:
    run = await owned_run(store, "dead", lease_seconds=0)
    usage = Usage(prompt_tokens=3, completion_tokens=2, total_tokens=5)
    rounds = [
        RoundCompleted(round=1, usage=usage, latency_ms=1, model="m"),
        RoundCompleted(round=2, usage=usage, latency_ms=1, model="m"),
    ]
    events = stamp(run, [ExecutionStarted(started_at=T0, attempt=1), *rounds, terminal])
    await store.append_events(events, fences={run.run_id: ("dead", 1)})

    [ended] = await store.sweep("me", policy)

    assert (ended.status, ended.error, ended.attempt, ended.epoch) == (status, error, 1, 2)
    assert (ended.usage, ended.completed_at, ended.last_seq) == (usage + usage, events[-1].ts, 4)
    assert [e.seq for e in await store.read_events(run.run_id)] == [1, 2, 3, 4]  # nothing added
    assert await store.get_active_run(run.session_id) is None


async def test_a_completed_runs_usage_is_its_complete_event(store: SqlStore) -> None:
    run = await owned_run(store, "dead", lease_seconds=0)
    usage = Usage(prompt_tokens=7, completion_tokens=1, total_tokens=8)
    await store.append_events(stamp(run, [Complete(usage=usage, final_message="done")]))

    [ended] = await store.sweep("me", REQUEUE)

    assert (ended.status, ended.error, ended.usage) == (RunStatus.COMPLETED, None, usage)


async def test_an_ended_runs_usage_is_its_last_attempts_rounds(store: SqlStore) -> None:
    run = await owned_run(store, "dead", lease_seconds=0)
    spent = Usage(prompt_tokens=3, completion_tokens=2, total_tokens=5)
    last = Usage(prompt_tokens=7, completion_tokens=1, total_tokens=8)
    events = [
        ExecutionStarted(started_at=T0, attempt=1),
        RoundCompleted(round=1, usage=spent, latency_ms=1, model="m"),
        RunRecovered(previous_attempt=1, action="requeued"),
        ExecutionStarted(started_at=T0, attempt=2),
        RoundCompleted(round=1, usage=last, latency_ms=1, model="m"),
        Error(message="boom", code="internal_error"),
    ]
    await store.append_events(stamp(run, events))

    [ended] = await store.sweep("me", REQUEUE)

    assert (ended.status, ended.usage) == (RunStatus.ERROR, last)


async def test_two_sweepers_never_take_one_run_twice(
    two_stores: tuple[SqlStore, SqlStore],
) -> None:
    first, second = two_stores
    made = {(await owned_run(first, "dead", lease_seconds=0)).run_id for _ in range(30)}

    results = await asyncio.gather(
        *(store.sweep(f"s{i}", REQUEUE) for i, store in enumerate([first, second] * 3))
    )

    counts = Counter(run.run_id for swept in results for run in swept)
    assert set(counts) == made and set(counts.values()) == {1}
    for run_id in made:
        events = await first.read_events(run_id)
        assert [e.type for e in events] == ["run_recovered"], "one takeover, one event"
        assert (await get(first, run_id)).epoch == 2


# Release


async def test_release_hands_back_our_runs_and_ends_their_children(store: SqlStore) -> None:
    running = await owned_run(store, "w1")
    await store.append_events(tokens(running, 2), fences={running.run_id: ("w1", 1)})
    child = await child_of(store, running, "w1")
    session = await new_session(store)
    claimed_only = a_run(session.session_id)
    await store.reserve_run(claimed_only, queue=False, owner="w1", lease_seconds=300)
    other = await owned_run(store, "w2")
    stale = await owned_run(store, "w1")

    fences = {run.run_id: 1 for run in (running, child, other)}
    fences[claimed_only.run_id] = 1
    fences[stale.run_id] = 5  # not ours at that epoch: left alone
    released = await store.release_runs("w1", fences, clean=True)

    assert sorted(released) == sorted([running.run_id, child.run_id, claimed_only.run_id])
    for run_id, attempt in ((running.run_id, 2), (claimed_only.run_id, 1)):
        run = await get(store, run_id)
        assert (run.status, run.started_at, run.queued) == (RunStatus.PENDING, None, False)
        assert (run.attempt, run.epoch) == (attempt, 2), "never started: no attempt counted"
        assert await store.get_active_run(run.session_id) == run, "it keeps the slot"
    assert await store.read_events(claimed_only.run_id) == [], "nothing happened to it"
    [recovered] = await store.read_events(running.run_id, after=2)
    assert isinstance(recovered, RunRecovered) and recovered.action == "requeued"
    ended_child = await get(store, child.run_id)
    assert ended_child.status is RunStatus.CANCELLED
    assert (await get(store, other.run_id)).status is RunStatus.RUNNING
    assert (await get(store, stale.run_id)).status is RunStatus.RUNNING
    assert await store.release_runs("w1", {running.run_id: 1}, clean=True) == [], "no longer ours"
    # Released runs are ready: any worker claims them.
    claimed = await store.claim_runs("w3", limit=10, lease_seconds=300)
    assert {run.run_id for run in claimed} == {running.run_id, claimed_only.run_id}


async def test_releasing_a_claimed_run_that_never_executed_counts_no_attempt(
    store: SqlStore,
) -> None:
    # Started by its claim, but no event written under that claim (its launch failed, or it
    # was claimed while its worker was stopping): handed back as it was, however often.
    run = await ready_run(store, input="hi")
    for epoch in (1, 3, 5):
        [claimed] = await store.claim_runs("w1", limit=1, lease_seconds=300)
        assert (claimed.epoch, claimed.status) == (epoch, RunStatus.RUNNING)
        assert await store.release_runs("w1", {run.run_id: epoch}, clean=True) == [run.run_id]
        released = await get(store, run.run_id)
        assert (released.status, released.started_at) == (RunStatus.PENDING, None)
        assert (released.attempt, released.epoch) == (1, epoch + 1)
    assert await store.read_events(run.run_id) == []
    assert await store.get_messages(run.session_id) == [UserMessage(content="hi")], "once"
    # Once it wrote an event under a claim, a release counts that attempt.
    [claimed] = await store.claim_runs("w1", limit=1, lease_seconds=300)
    await store.append_events(tokens(claimed, 1), fences={run.run_id: ("w1", claimed.epoch)})
    assert await store.release_runs("w1", {run.run_id: claimed.epoch}, clean=True) == [run.run_id]
    assert (await get(store, run.run_id)).attempt == 2


async def test_a_zombie_writing_through_a_takeover_never_lands_a_stale_event(
    two_stores: tuple[SqlStore, SqlStore],
) -> None:
    zombie_store, live_store = two_stores
    made = [await owned_run(zombie_store, "zombie", lease_seconds=0) for _ in range(12)]
    fences = {run.run_id: ("zombie", 1) for run in made}
    stop = asyncio.Event()
    refused: set[str] = set()

    async def zombie() -> None:
        seq = 3
        while True:
            last = stop.is_set()  # one more batch once every run is taken over
            batch = [event for run in made for event in tokens(run, 2, first_seq=seq)]
            refused.update(await zombie_store.append_events(batch, fences=fences))
            seq += 2
            if last:
                return
            await asyncio.sleep(0)

    async def sweeper() -> set[str]:
        taken: set[str] = set()
        while len(taken) < len(made):
            taken.update(run.run_id for run in await live_store.sweep("sweeper", REQUEUE))
            await asyncio.sleep(0)
        stop.set()
        return taken

    first = [event for run in made for event in tokens(run, 2)]
    assert await zombie_store.append_events(first, fences=fences) == set()
    writing = asyncio.create_task(zombie())
    taken = await asyncio.wait_for(sweeper(), timeout=60)
    await asyncio.wait_for(writing, timeout=60)
    # The new owner writes after the takeover's event.
    for run in await live_store.claim_runs("w2", limit=len(made), lease_seconds=300):
        last = await live_store.last_event_seq(run.run_id)
        fence = {run.run_id: ("w2", run.epoch)}
        assert (
            await live_store.append_events(tokens(run, 1, first_seq=last + 1), fences=fence)
            == set()
        )

    assert taken == {run.run_id for run in made}
    assert refused == taken, "once taken over, every zombie write is refused"
    rows = await raw_rows(
        live_store,
        sa.select(
            run_events.c.run_id, run_events.c.seq, run_events.c.type, run_events.c.epoch
        ).order_by(run_events.c.run_id, run_events.c.seq),
    )
    for run in made:
        mine = [row for row in rows if row.run_id == run.run_id]
        assert [row.seq for row in mine] == list(range(1, len(mine) + 1)), "gapless"
        epochs = [row.epoch for row in mine]
        assert epochs == sorted(epochs), "along seq, epochs never decrease"
        recovered = [row.seq for row in mine if row.type == "run_recovered"]
        assert len(recovered) == 1
        assert all(row.epoch == 1 for row in mine if row.seq < recovered[0])
        assert all(row.epoch == 3 for row in mine if row.seq > recovered[0])
