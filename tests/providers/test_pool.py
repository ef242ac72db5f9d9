"""The model client's connection pool (`CULM_MODEL_MAX_CONNECTIONS`): sized for the runs a process
executes at once, every connection kept alive for the next model call, none beyond the limit."""

from __future__ import annotations

import asyncio
from pathlib import Path

import culm
from culm.settings import Settings
from tests.providers.fakes import FakeUpstream, Recorded, Reply, openai_events


class GatedUpstream(FakeUpstream):
    """Answers every request with a short text stream, once ``gate`` is open; counts the
    requests waiting at the gate."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.waiting = 0
        self.most_waiting = 0

    def next_reply(self, request: Recorded) -> Reply:
        chunk = {"choices": [{"index": 0, "delta": {"content": "ok"}, "finish_reason": "stop"}]}
        return Reply(chunks=openai_events(chunk, "[DONE]"))

    async def _send(
        self, reply: Reply, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        self.waiting += 1
        self.most_waiting = max(self.most_waiting, self.waiting)
        await self.gate.wait()
        self.waiting -= 1
        return await super()._send(reply, reader, writer)


def _settings(upstream: FakeUpstream, home: Path, **overrides: object) -> Settings:
    return Settings(
        home=home,
        openai_api_key="sk-test",
        openai_base_url=f"{upstream.url}/v1",
        **overrides,  # type: ignore[arg-type]
    )


async def _runs(engine: culm.Engine, count: int) -> list[str]:
    runs = [await engine.run("go", model="openai:gpt-4o-mini") for _ in range(count)]
    return [run.run_id for run in runs]


async def _until(condition: object) -> None:
    async with asyncio.timeout(20):
        while not condition():  # type: ignore[operator]
            await asyncio.sleep(0.01)


def test_the_pool_defaults_to_the_runs_a_process_executes_at_once() -> None:
    assert Settings().resolved_model_max_connections == 100
    assert Settings(worker_concurrency=500).resolved_model_max_connections == 500
    assert Settings(worker_concurrency=500, model_max_connections=7).model_max_connections == 7
    assert Settings(model_max_connections=7).resolved_model_max_connections == 7


async def test_every_connection_of_a_burst_is_kept_for_the_next_calls(tmp_path: Path) -> None:
    """30 model calls at once open 30 connections; the next 30 reuse them all (the library's
    default pool keeps only 20 idle, so 10 would be opened again)."""
    async with GatedUpstream() as upstream, culm.Engine(_settings(upstream, tmp_path)) as engine:
        for wave in range(2):
            upstream.gate.clear()
            run_ids = await _runs(engine, 30)
            await _until(lambda: upstream.waiting == 30)
            upstream.gate.set()
            for run_id in run_ids:
                done = await engine.wait(run_id, timeout=20)
                assert done.status is culm.RunStatus.COMPLETED, (wave, done.error)
        assert len(upstream.requests) == 60
        assert upstream.connections == 30


async def test_no_more_calls_are_on_the_wire_than_the_setting(tmp_path: Path) -> None:
    async with GatedUpstream() as upstream:
        settings = _settings(upstream, tmp_path, model_max_connections=2)
        async with culm.Engine(settings) as engine:
            run_ids = await _runs(engine, 5)
            await _until(lambda: upstream.waiting == 2)
            # Every run is in its model call (its round began); 3 of them wait for the pool.
            runners = [engine.registry.get(run_id) for run_id in run_ids]
            await _until(lambda: all(r is not None and r.last_seq >= 2 for r in runners))
            await asyncio.sleep(0.2)  # a chance to go past the limit, were there none
            assert upstream.connections == 2 and len(upstream.requests) == 2
            upstream.gate.set()
            for run_id in run_ids:
                assert (await engine.wait(run_id, timeout=20)).status is culm.RunStatus.COMPLETED
            assert upstream.most_waiting == 2 and upstream.connections == 2
