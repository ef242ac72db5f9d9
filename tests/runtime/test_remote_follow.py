"""A run stream of a run this process does not execute, with a bus across processes: the store
up to now, then the bus. The other process is the engine; this one is a second
:class:`Streams` over its store with a registry of its own and a bus that says it crosses
processes (:class:`CrossingBus`), so that the run is followed as a remote one."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import pytest

import culm
from culm.bus.base import BusState
from culm.domain.events import Token
from culm.errors import NotFoundError, StorageUnavailableError
from culm.runtime.registry import RunnerRegistry
from culm.runtime.streams import Streams
from tests.contract.gate import held_run
from tests.runtime.long_run import finished_long_run
from tests.runtime.test_safety import SettableBus
from tests.runtime.test_session_holes import CrossingBus
from tests.support import settings

pytestmark = pytest.mark.timeout(60)


class UpCrossingBus(SettableBus):
    """Across processes, and ``ok``: the safety check then waits its whole interval."""

    @property
    def crosses_processes(self) -> bool:
        return True


def _elsewhere(engine: culm.Engine) -> tuple[Streams, RunnerRegistry]:
    registry = RunnerRegistry()
    return Streams(engine.store, registry, engine.batcher, 100, bus=CrossingBus()), registry


async def _seqs(streams: Streams, run_id: str, after: int) -> list[int]:
    batches = streams.run_event_batches(run_id, after=after)
    async with contextlib.aclosing(batches):
        return [event.seq async for batch in batches for event in batch]


async def test_a_remote_run_resumed_from_a_cursor_gives_what_follows_it_and_lets_go(
    tmp_path: Path,
) -> None:
    async with culm.Engine(settings(tmp_path, scheduler=False)) as engine:
        run = await engine.run("hello", model="scripted:echo")
        await engine.wait(run.run_id)
        stored = [e.seq for e in await engine.store.read_events(run.run_id)]
        streams, registry = _elsewhere(engine)
        resumed = await _seqs(streams, run.run_id, after=3)
        assert run.run_id not in registry._remote_subscribers  # unregistered at the end
    assert resumed == [seq for seq in stored if seq > 3]


async def test_a_store_that_fails_a_moment_cuts_nothing_of_a_remote_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with culm.Engine(settings(tmp_path, scheduler=False)) as engine:
        run = await engine.run("hello", model="scripted:echo")
        await engine.wait(run.run_id)
        stored = [e.seq for e in await engine.store.read_events(run.run_id)]
        failures = [StorageUnavailableError("database unreachable")]
        get_run = engine.store.get_run

        async def flaky(run_id: str) -> culm.Run | None:
            if failures:
                raise failures.pop()
            return await get_run(run_id)

        monkeypatch.setattr(engine.store, "get_run", flaky)
        streams, _registry = _elsewhere(engine)
        seqs = await _seqs(streams, run.run_id, after=0)
    assert not failures
    assert seqs == stored


async def test_an_unknown_remote_run_says_which(tmp_path: Path) -> None:
    async with culm.Engine(settings(tmp_path, scheduler=False)) as engine:
        streams, _registry = _elsewhere(engine)
        with pytest.raises(NotFoundError) as raised:
            await _seqs(streams, "no-such-run", after=0)
    assert (raised.value.kind, raised.value.ident) == ("run", "no-such-run")


async def test_a_remote_run_longer_than_a_page_is_read_page_after_page(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A finished run: the bus (up, as Redis would be) brings nothing more, and no safety check
    # comes within the test. Each page cut by the limit is followed by the next, not by a wait
    # on the bus (two safety intervals per page, 10 s by default).
    async with finished_long_run(tmp_path, monkeypatch) as (engine, run_id, events):
        registry = RunnerRegistry()
        following = Streams(
            engine.store, registry, engine.batcher, 100, bus=UpCrossingBus(), safety_interval=3600
        )
        async with asyncio.timeout(20):
            seqs = await _seqs(following, run_id, after=0)
    assert seqs == [e.seq for e in events]


async def test_closing_ends_a_remote_runs_stream_between_two_pages(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with finished_long_run(tmp_path, monkeypatch) as (engine, run_id, events):
        stored = [e.seq for e in events]
        registry = RunnerRegistry()
        following = Streams(engine.store, registry, engine.batcher, 100, bus=UpCrossingBus())
        batches = following.run_event_batches(run_id, after=0)
        seqs: list[int] = []
        async with contextlib.aclosing(batches), asyncio.timeout(20):
            seqs += [event.seq for event in await anext(batches)]
            following.close()
            async for batch in batches:
                seqs += [event.seq for event in batch]
        assert run_id not in registry._remote_subscribers
    assert seqs == stored[: len(seqs)]  # in order, nothing skipped
    assert len(stored) - len(seqs) > 10  # ended pages before the run's end


@pytest.mark.parametrize("state", ["ok", "degraded"])
async def test_a_remote_runs_end_the_bus_never_brings_is_found_by_the_safety_check(
    tmp_path: Path, state: BusState
) -> None:
    # The bus here hears nothing of the engine's run: only the safety check (every 0.05 s while
    # the bus is ok; at the poll's pace while it is degraded) sees the run end in the store.
    bus = UpCrossingBus()
    bus.become(state)
    interval = 0.05 if state == "ok" else 3600.0
    async with held_run(settings(tmp_path)) as (engine, run, runner, gate):
        await engine.batcher.flush()
        following = Streams(
            engine.store, RunnerRegistry(), engine.batcher, 100, bus=bus, safety_interval=interval
        )
        batches = following.run_event_batches(run.run_id, after=0)
        seqs: list[int] = []
        async with contextlib.aclosing(batches), asyncio.timeout(20):
            seqs += [event.seq for event in await anext(batches)]
            gate.release.set()
            await engine.wait(run.run_id)
            async for batch in batches:
                seqs += [event.seq for event in batch]
        stored = [e.seq for e in await engine.store.read_events(run.run_id)]
    assert seqs == stored


async def test_a_lagging_remote_follower_reads_the_store_and_follows_the_bus_again(
    tmp_path: Path,
) -> None:
    # A queue of 2 here, and the bus (played by the test) brings the run's stored events: one,
    # then five at once (the follower lags), then one more, which only a follower registered
    # again receives (no safety check comes within the test).
    async with held_run(settings(tmp_path)) as (engine, run, runner, gate):
        await engine.batcher.flush()
        registry = RunnerRegistry()
        following = Streams(
            engine.store, registry, engine.batcher, 2, bus=UpCrossingBus(), safety_interval=3600
        )

        async def bring(count: int) -> int:
            for i in range(count):
                runner.emit(Token(content=str(i)))
            await engine.batcher.flush()
            registry.deliver(
                await engine.store.read_events(run.run_id, after=runner.last_seq - count)
            )
            return runner.last_seq

        batches = following.run_event_batches(run.run_id, after=0)
        got: list[int] = []
        async with contextlib.aclosing(batches), asyncio.timeout(20):
            got += [event.seq for event in await anext(batches)]  # stored so far
            for count in (1, 5, 1):
                last = await bring(count)
                while got[-1] < last:
                    got += [event.seq for event in await anext(batches)]
                subscribers = registry._remote_subscribers[run.run_id]
                assert len(subscribers) == 1 and not next(iter(subscribers)).lagged
        stored = [e.seq for e in await engine.store.read_events(run.run_id)]
    assert got == stored[: len(got)]
    assert got[-1] == last


async def test_a_finished_remote_run_resumed_after_its_end_gives_nothing_and_ends(
    tmp_path: Path,
) -> None:
    # Nothing past the terminal event: the store says the run is over, no safety check needed.
    async with culm.Engine(settings(tmp_path, scheduler=False)) as engine:
        run = await engine.run("hello", model="scripted:echo")
        await engine.wait(run.run_id)
        last = (await engine.store.read_events(run.run_id))[-1].seq
        following = Streams(
            engine.store,
            RunnerRegistry(),
            engine.batcher,
            100,
            bus=UpCrossingBus(),
            safety_interval=3600,
        )
        async with asyncio.timeout(20):
            assert await _seqs(following, run.run_id, after=last) == []
