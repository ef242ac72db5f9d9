"""A session subscriber that joins a run already under way in another process gets its replay
cache, then what the run does from then on: what the run did before the subscriber came is not
read back from the store (only a run followed live has holes to fill)."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import pytest

import culm
from culm.domain.events import CRITICAL_EVENT_TYPES, RunEvent, is_terminal
from culm.runtime.roles import Role
from tests.bus.conftest import drop_keys, unique_prefix
from tests.conftest import reachable_redis
from tests.support import settings

pytestmark = pytest.mark.timeout(120)

IDLE = {"turns": [[{"text": "thinking"}, {"delay": 60}, {"text": "done"}]]}


async def test_a_session_subscriber_joining_a_remote_run_gets_its_cache_then_what_follows(
    tmp_path: Path,
) -> None:
    url, prefix = await reachable_redis(), unique_prefix()
    common = {"heartbeat_seconds": 0.2, "claim_poll_seconds": 0.2, "redis_url": url}
    api = culm.Engine(
        settings(tmp_path, scheduler=False, redis_prefix=prefix, **common), role=Role.API
    )
    worker = culm.Engine(
        settings(tmp_path, scheduler=False, redis_prefix=prefix, **common), role=Role.WORKER
    )
    try:
        async with api, worker:
            for engine in (api, worker):
                engine.scripts.register("idle", IDLE)
            session = await api.create_session(model="scripted:idle")
            run = await api.start_run(session.session_id, "go")
            async with asyncio.timeout(30):
                while not any(e.type == "token" for e in await api.store.read_events(run.run_id)):
                    await asyncio.sleep(0.02)
            before = await api.store.read_events(run.run_id)  # the run now idles for a minute
            got: list[RunEvent] = []
            events = api.subscribe_session(session.session_id)
            async with contextlib.aclosing(events), asyncio.timeout(60):
                got.append(await anext(events))  # subscribed, the cache begins
                await api.cancel(run.run_id)
                async for event in events:
                    got.append(event)
                    if is_terminal(event):
                        break
            stored = await api.store.read_events(run.run_id)
    finally:
        await drop_keys(url, prefix)
    budget = [e.seq for e in before if e.type == "token_budget_updated"][-1:]
    cache = sorted([e.seq for e in before if e.type in CRITICAL_EVENT_TYPES] + budget)
    after = [e.seq for e in stored if e.seq > before[-1].seq]
    assert [e.seq for e in got] == cache + after
    assert "token" not in {e.type for e in got}  # from before the subscriber came
