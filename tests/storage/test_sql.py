"""``SqlStore`` on every backend, where the conformance tests leave it ambiguous: deleting a
session leaves every other session's rows alone, and the runs' list filters, orders (ties by
id) and pages (a hundred by default)."""

from __future__ import annotations

from datetime import timedelta

from culm.domain.models import Run, RunStatus, RunTrigger, Usage, UserMessage
from culm.storage.sql import SqlStore
from tests.storage.queue_support import T0, a_run, new_session
from tests.storage.test_compactions import a_compaction
from tests.storage.test_inputs import _park


async def test_deleting_a_session_leaves_the_others_rows(store: SqlStore) -> None:
    kept, gone = await new_session(store), await new_session(store)
    for session in (kept, gone):
        run = a_run(session.session_id)
        await store.reserve_run(run, queue=False, owner="w1", lease_seconds=60)
        await store.append_messages(session.session_id, [UserMessage(content="hi")], run_id=None)
        await store.finish_run(
            run.run_id, fence=("w1", 1), status=RunStatus.COMPLETED, error=None, usage=Usage()
        )

    assert await store.delete_session(gone.session_id) is True

    assert await store.get_session(gone.session_id) is None
    assert await store.list_runs(session_id=gone.session_id) == []
    assert len(await store.list_runs(session_id=kept.session_id)) == 1
    assert await store.get_messages(kept.session_id) == [UserMessage(content="hi")]


async def test_deleting_a_session_leaves_the_others_input_requests_and_compactions(
    store: SqlStore,
) -> None:
    gone = await new_session(store)
    await store.add_compaction(a_compaction(gone.session_id))
    waiting, request_id, _ = await _park(store, "w1", 1)  # on a session of its own
    parked = await store.get_run(waiting)
    assert parked is not None
    kept = await store.add_compaction(a_compaction(parked.session_id))

    assert await store.delete_session(gone.session_id) is True

    assert [r.request_id for r in await store.list_input([waiting])] == [request_id]
    assert await store.list_compactions(parked.session_id) == [kept]
    assert await store.list_compactions(gone.session_id) == []


async def test_runs_are_listed_newest_first_filtered_and_paged(store: SqlStore) -> None:
    session = await new_session(store)
    made = []
    for i, (trigger, model) in enumerate(
        [
            (RunTrigger.API, "m1"),
            (RunTrigger.SCHEDULE, "m1"),
            (RunTrigger.API, "m2"),
            (RunTrigger.SCHEDULE, "m2"),
        ]
    ):
        run = a_run(
            session.session_id,
            created_at=T0 + timedelta(seconds=i),
            trigger=trigger,
            model=model,
        )
        await store.reserve_run(run, queue=i > 0)
        made.append(run.run_id)

    def ids(found: list[Run]) -> list[str]:
        return [run.run_id for run in found]

    assert ids(await store.list_runs()) == made[::-1]
    assert ids(await store.list_runs(trigger=RunTrigger.API)) == [made[2], made[0]]
    assert ids(await store.list_runs(model="m2")) == [made[3], made[2]]
    assert ids(await store.list_runs(limit=2, offset=1)) == [made[2], made[1]]


async def test_runs_created_at_the_same_moment_are_listed_by_id(store: SqlStore) -> None:
    session = await new_session(store)
    for run_id in ("run-b", "run-c", "run-a"):
        await store.reserve_run(a_run(session.session_id, run_id=run_id, created_at=T0), queue=True)

    assert [run.run_id for run in await store.list_runs()] == ["run-a", "run-b", "run-c"]


async def test_runs_are_listed_a_hundred_at_most_by_default(store: SqlStore) -> None:
    session = await new_session(store)
    for _ in range(101):
        await store.reserve_run(a_run(session.session_id), queue=True)

    assert len(await store.list_runs()) == 100
