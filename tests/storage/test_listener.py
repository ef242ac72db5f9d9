"""The PostgreSQL wake-up listener against a server that goes silent: a black-holed TCP proxy
(:mod:`tests.blackhole`) in front of the shared PostgreSQL stands for the network, and the
listener's waits are shortened (:class:`ListenTimes`) so that what takes seconds in production
takes a fraction of one here. What is asserted is what a worker and ``/health`` see: whether
the listener listens (``problem``), whether it wakes its waiters, and with which hints."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable

import pytest
import sqlalchemy as sa

from culm.storage.sql import SqlStore
from culm.storage.wakeups import ListenTimes, PostgresWakeups, Signal, listen_connect_args
from tests.blackhole import BlackHoleProxy
from tests.storage.queue_support import ready_run

pytestmark = pytest.mark.timeout(60)

NOT_LISTENING = "not listening, polling instead"


@pytest.fixture
async def proxy(postgres_head_url: str) -> AsyncIterator[BlackHoleProxy]:
    url = sa.make_url(postgres_head_url)
    proxy = BlackHoleProxy(url.host or "127.0.0.1", url.port or 5432)
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.aclose()


def _through(proxy: BlackHoleProxy, database_url: str) -> dict[str, object]:
    """The listener's connect arguments for ``database_url``, reaching it through ``proxy``."""
    url = sa.make_url(database_url).set(host="127.0.0.1", port=proxy.port)
    return listen_connect_args(url)


async def _until(check: Callable[[], bool], timeout: float = 30) -> None:
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.01)


async def _hears_a_run(store: SqlStore, listener: PostgresWakeups) -> None:
    """The listener hears the reservation of a new ready run (its hint names the run)."""
    while await listener.wait(0):
        pass
    listener.take_hints()
    run = await ready_run(store)
    assert await listener.wait(10) is True
    assert listener.take_hints() == [run.run_id]


def test_the_listeners_waits_are_those_of_the_contract() -> None:
    # A probe every 30 s, answered within 5 s; 5 s to connect, 1 s to close, 1 s between tries,
    # and while it cannot listen, a log line a minute.
    assert ListenTimes() == ListenTimes(
        connect=5, close=1, probe_every=30, probe=5, reconnect=1, remind=60
    )


def _logged(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "culm.storage.wakeups"]


async def test_a_listener_gives_up_on_a_silent_server_and_listens_once_it_answers(
    postgres_store: SqlStore,
    postgres_head_url: str,
    proxy: BlackHoleProxy,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="culm.storage.wakeups")
    proxy.holed = True  # it accepts the connection, then never answers the login
    times = ListenTimes(connect=0.3, reconnect=0.05)
    listener = PostgresWakeups(Signal(), _through(proxy, postgres_head_url), times)
    try:
        await _until(lambda: listener.problem is not None and listener.problem != "connecting")
        assert listener.problem is not None
        assert listener.problem.startswith(f"{NOT_LISTENING}: TimeoutError")
        await _until(lambda: proxy.connections >= 3)  # it keeps trying
        proxy.holed = False
        # What an operator reads: the outage once, with the error's type (a timeout has no
        # text), not a line per attempt; then that it is over.
        await _until(lambda: listener.problem is None)
        cannot, again = _logged(caplog)
        assert cannot == "wake-up listener cannot connect; polling instead error=TimeoutError: "
        assert again.startswith("wake-up listener listening again attempts=")
        # Every connection through the proxy but the last was a failed attempt.
        assert int(again.split("attempts=")[1].split()[0]) == proxy.connections - 1
        # Its first connection: no notification was missed, so nobody is woken for it.
        assert await listener.wait(0) is False
        assert listener.take_hints() == []
        await _hears_a_run(postgres_store, listener)
    finally:
        await listener.aclose()


async def test_while_a_listener_cannot_listen_it_reminds_every_remind_seconds(
    postgres_head_url: str, proxy: BlackHoleProxy, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="culm.storage.wakeups")
    proxy.holed = True
    times = ListenTimes(connect=0.2, reconnect=0.02, remind=0)  # a reminder at every attempt
    listener = PostgresWakeups(Signal(), _through(proxy, postgres_head_url), times)
    try:
        await _until(lambda: proxy.connections >= 4)
    finally:
        await listener.aclose()
    first, *reminders = _logged(caplog)
    assert first == "wake-up listener cannot connect; polling instead error=TimeoutError: "
    assert len(reminders) >= 2
    for attempt, line in enumerate(reminders, start=2):
        assert line.startswith(
            f"wake-up listener still not listening error=TimeoutError:  attempts={attempt} "
        ), line


async def test_a_listener_whose_server_goes_silent_reconnects_once_it_answers(
    postgres_store: SqlStore,
    postgres_head_url: str,
    proxy: BlackHoleProxy,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="culm.storage.wakeups")
    times = ListenTimes(connect=1, close=0.3, probe_every=0.1, probe=0.5, reconnect=0.05)
    listener = PostgresWakeups(Signal(), _through(proxy, postgres_head_url), times)
    try:
        await _until(lambda: listener.problem is None)
        await _hears_a_run(postgres_store, listener)
        proxy.holed = True  # no RST, no FIN: only an unanswered probe tells
        await _until(lambda: listener.problem is not None)
        assert listener.problem is not None
        assert listener.problem.startswith(f"{NOT_LISTENING}: TimeoutError")
        connections = proxy.connections
        proxy.holed = False
        # Back: its wake-up says notifications may have been missed (a hint that names no run).
        assert await listener.wait(30) is True
        assert listener.take_hints() == [""]
        assert listener.problem is None
        assert proxy.connections > connections
        lost, again = _logged(caplog)
        assert lost == "wake-up listener lost its connection; polling instead error=TimeoutError: "
        assert again.startswith("wake-up listener listening again attempts=")
        await _hears_a_run(postgres_store, listener)
    finally:
        await listener.aclose()


async def test_a_listener_of_a_quiet_server_keeps_its_connection_across_probes(
    postgres_store: SqlStore, postgres_head_url: str, proxy: BlackHoleProxy
) -> None:
    times = ListenTimes(probe_every=0.05)
    listener = PostgresWakeups(Signal(), _through(proxy, postgres_head_url), times)
    try:
        await _until(lambda: listener.problem is None)
        for _ in range(6):  # nothing else uses the connection: what passes is probes and answers
            forwarded = proxy.forwarded
            await _until(lambda: proxy.forwarded > forwarded)  # noqa: B023
        assert listener.problem is None
        assert proxy.connections == 1
        assert await listener.wait(0) is False  # no reconnect's wake-up
        await _hears_a_run(postgres_store, listener)
    finally:
        await listener.aclose()
