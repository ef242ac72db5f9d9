"""The ``workers`` table on every backend: heartbeats keep a worker alive, stopping stamps it,
the sweeper's upkeep retires silent workers once and prunes them a day after they stopped."""

from __future__ import annotations

from datetime import datetime, timedelta

import sqlalchemy as sa

from culm.domain.time import utc_now
from culm.storage import dbtime
from culm.storage.base import SweepPolicy
from culm.storage.schema import workers
from culm.storage.sql import SqlStore
from tests.storage.queue_support import a_run, new_session

REQUEUE = SweepPolicy(requeue=True, max_attempts=3, lease_seconds=10)


async def _register(store: SqlStore, *worker_ids: str) -> None:
    for worker_id in worker_ids:
        await store.register_worker(
            worker_id,
            host="h",
            pid=1,
            boot_id=None,
            pid_namespace=None,
            kind="worker",
            concurrency=1,
        )


async def _age(store: SqlStore, worker_id: str, **seconds_ago: float) -> None:
    """Move the row's named timestamps ``seconds_ago`` into the database's past."""
    name = store.dialect.name
    values = {column: dbtime.later(name, -ago) for column, ago in seconds_ago.items()}
    await store.write(
        lambda conn: conn.execute(
            workers.update().where(workers.c.worker_id == worker_id).values(**values)
        )
    )


async def _database_now(store: SqlStore) -> datetime:
    name = store.dialect.name
    return await store.write(lambda conn: dbtime.read_now(conn, name))


async def test_a_worker_registering_again_gets_a_fresh_row(store: SqlStore) -> None:
    await _register(store, "w", "other")
    await store.worker_heartbeat("w", active_runs=1, claims=2, takeovers=3, fenced_writes=4)
    await store.stop_worker("w")
    before = await _database_now(store)

    await _register(store, "w")

    again = await store.get_worker("w")
    assert again is not None and again.alive is True and again.stopped_at is None
    assert (again.active_runs, again.claims, again.takeovers, again.fenced_writes) == (0, 0, 0, 0)
    # Database time to the microsecond (a bare CURRENT_TIMESTAMP on SQLite drops the fraction).
    assert again.started_at >= before and again.last_heartbeat_at >= before
    assert await store.get_worker("other") is not None


async def test_workers_are_listed_in_the_order_they_started(store: SqlStore) -> None:
    await _register(store, "a", "b")
    # "b" started a second before "a" (set, not waited for: SQLite's time has milliseconds, and
    # two registrations one after the other may share one): first, whatever the ids say.
    a = await store.get_worker("a")
    assert a is not None
    earlier = workers.update().where(workers.c.worker_id == "b")
    earlier = earlier.values(started_at=a.started_at - timedelta(seconds=1))
    await store.write(lambda conn: conn.execute(earlier))
    listed = await store.list_workers(lease_seconds=10)
    assert [w.worker_id for w in listed] == ["b", "a"]

    # Started at the same moment: by id.
    same = workers.update().values(started_at=listed[0].started_at)
    await store.write(lambda conn: conn.execute(same))
    listed = await store.list_workers(lease_seconds=10)
    assert [w.worker_id for w in listed] == ["a", "b"]


async def test_a_run_created_ahead_of_the_databases_clock_has_waited_no_time(
    store: SqlStore,
) -> None:
    # A host whose clock runs ahead of the database's stamps runs in the database's future.
    session = await new_session(store)
    ahead = a_run(session.session_id, created_at=utc_now() + timedelta(hours=1))
    await store.reserve_run(ahead, queue=False)

    stats = await store.queue_stats()

    assert (stats.pending, stats.ready, stats.oldest_pending_age) == (1, 1, 0.0)


async def test_a_heartbeat_brings_a_silent_worker_back_to_life(store: SqlStore) -> None:
    await _register(store, "w")
    await _age(store, "w", last_heartbeat_at=60)
    silent = await store.get_worker("w", lease_seconds=10)
    assert silent is not None and silent.alive is False

    await store.worker_heartbeat("w", active_runs=1, claims=2, takeovers=0, fenced_writes=0)

    alive = await store.get_worker("w", lease_seconds=10)
    assert alive is not None and alive.alive is True
    assert alive.last_heartbeat_at > silent.last_heartbeat_at
    assert (alive.active_runs, alive.claims) == (1, 2)


async def test_a_worker_stops_after_it_started(store: SqlStore) -> None:
    # The database's time to the microsecond, as every stamp of the store (SQLite's bare
    # CURRENT_TIMESTAMP would drop the fraction and stop it before it started).
    await _register(store, "w")
    await store.stop_worker("w")

    stopped = await store.get_worker("w")
    assert stopped is not None and stopped.stopped_at is not None
    assert stopped.stopped_at >= stopped.started_at
    assert stopped.stopped_at >= stopped.last_heartbeat_at


async def test_a_stopped_worker_keeps_its_stop_time_through_sweeps(store: SqlStore) -> None:
    """A stopped worker is silent too: the sweep must not stamp it stopped again, or its row
    would never be a day old and never pruned."""
    await _register(store, "gone", "silent", "sweeper")
    await store.stop_worker("gone")
    await _age(store, "gone", last_heartbeat_at=3600, stopped_at=3000)
    await _age(store, "silent", last_heartbeat_at=3600)
    before = await store.get_worker("gone")
    assert before is not None and before.stopped_at is not None
    swept_at = await _database_now(store)

    assert await store.sweep("sweeper", REQUEUE) == []

    after = await store.get_worker("gone")
    assert after is not None and after.stopped_at == before.stopped_at
    silent = await store.get_worker("silent")
    assert silent is not None and silent.stopped_at is not None
    assert silent.stopped_at >= swept_at  # database time to the microsecond


async def test_a_silent_worker_stopped_a_day_ago_is_pruned(store: SqlStore) -> None:
    await _register(store, "long-gone", "recently-gone", "sweeper")
    await store.stop_worker("long-gone")
    await store.stop_worker("recently-gone")
    await _age(store, "long-gone", last_heartbeat_at=25 * 3600, stopped_at=24 * 3600 + 60)
    await _age(store, "recently-gone", last_heartbeat_at=25 * 3600, stopped_at=23 * 3600)

    assert await store.sweep("sweeper", REQUEUE) == []

    rows = await store.list_workers(lease_seconds=10, include_stopped=True)
    assert [w.worker_id for w in rows] == ["recently-gone", "sweeper"]
    count = sa.select(sa.func.count()).select_from(workers)
    assert await store.write(lambda conn: conn.scalar(count)) == 2


async def test_a_worker_is_alive_for_ten_seconds_after_its_heartbeat_by_default(
    store: SqlStore,
) -> None:
    await _register(store, "fresh", "stale")
    await _age(store, "fresh", last_heartbeat_at=5)
    await _age(store, "stale", last_heartbeat_at=10.3)  # read at once: well under 11 s old

    stale, fresh = await store.get_worker("stale"), await store.get_worker("fresh")

    assert fresh is not None and fresh.alive is True
    assert stale is not None and stale.alive is False
    assert await store.get_worker("never-registered") is None
    listed = await store.list_workers(lease_seconds=10)
    assert {w.worker_id: w.alive for w in listed} == {"fresh": True, "stale": False}


async def test_stopped_workers_are_listed_only_when_asked_for(store: SqlStore) -> None:
    await _register(store, "running", "stopped")
    await store.stop_worker("stopped")

    listed = await store.list_workers(lease_seconds=10)
    everyone = await store.list_workers(lease_seconds=10, include_stopped=True)

    assert [w.worker_id for w in listed] == ["running"]
    assert [w.worker_id for w in everyone] == ["running", "stopped"]
