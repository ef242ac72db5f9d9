"""wait() for a run executing in another process, once its terminal event passed on the bus
but its status is not terminal yet (a finish_run being retried), reads the store with a
backoff up to 2 s, not 50 times a second (review finding 9)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import culm
from culm.bus.link import RedisLink
from culm.bus.redis import RedisBus
from culm.domain.events import Complete
from culm.domain.models import Run, RunStatus, Usage
from culm.domain.time import utc_now
from culm.storage.sql import SqlStore
from tests.bus.conftest import reachable_redis, unique_prefix
from tests.support import settings


class CountingStore(SqlStore):
    reads = 0

    async def get_run(self, run_id: str) -> Run | None:
        self.reads += 1
        return await super().get_run(run_id)


async def test_wait_backs_off_after_the_terminal_event(tmp_path: Path, database_url: str) -> None:
    url = await reachable_redis()
    prefix = unique_prefix()
    store = CountingStore(database_url)
    config = settings(
        tmp_path / "home",
        database_url=database_url,
        redis_url=url,
        redis_prefix=prefix,
        scheduler=False,
    )
    publisher = RedisBus(RedisLink(url, prefix=prefix))
    await publisher.start()
    try:
        async with culm.Engine(config, store=store) as engine:
            session = await engine.create_session(model="scripted:echo")
            run = Run(run_id="remote", session_id=session.session_id, model="scripted:echo")
            reserved = await store.reserve_run(
                run, queue=False, owner="elsewhere", lease_seconds=60
            )
            waiting = asyncio.create_task(engine.wait(run.run_id, timeout=30))
            await asyncio.sleep(0.5)  # following the run on the bus by now
            end = Complete(usage=Usage(), final_message="ok").stamped(
                seq=1, run_id=run.run_id, session_id=session.session_id, ts=utc_now()
            )
            publisher.publish([end])
            await asyncio.sleep(0.3)
            before = store.reads
            await asyncio.sleep(2.0)
            reads = store.reads - before
            await store.finish_run(
                run.run_id,
                fence=("elsewhere", reserved.run.epoch),
                status=RunStatus.COMPLETED,
                error=None,
                usage=Usage(),
            )
            assert (await waiting).status is RunStatus.COMPLETED
    finally:
        await publisher.aclose()
    # 20 ms doubling: at most a handful of reads in those 2 s (at a fixed 20 ms: ~100).
    assert reads <= 10, reads
