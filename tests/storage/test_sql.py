"""``SqlStore`` on every backend, where the conformance tests leave it ambiguous: deleting a
session leaves every other session's rows alone, and the runs' list filters and pages."""

from __future__ import annotations

from datetime import timedelta

from culm.domain.models import Run, RunStatus, RunTrigger, Usage, UserMessage
from culm.storage.sql import SqlStore
from tests.storage.queue_support import T0, a_run, new_session


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
