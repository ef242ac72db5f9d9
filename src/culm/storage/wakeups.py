"""Wake-ups: "a run became ready", for the workers waiting to claim.

A transaction that makes a run ready (reserved unowned, promoted from its session's queue,
re-queued, released) calls its :class:`Wake`. On PostgreSQL that sends ``NOTIFY culm_runs`` in
the transaction (delivered at commit to every listening process); on both backends the store
also fires its in-process :class:`Signal` after the commit, which is all SQLite has. A lost
wake-up (a listener reconnecting, another process on one SQLite file) is covered by the
caller's safety poll. A reservation's notification names its run (the payload), so that one
worker, not all, claims it at once (``runtime/dispatch.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import weakref
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from culm.logs import get_logger
from culm.storage.base import Wakeups

CHANNEL = "culm_runs"
_NOTIFY = sa.text(f"SELECT pg_notify('{CHANNEL}', '')")
_MAX_HINTS = 1024  # the claimer reads them at every wake-up; past this, one "" says "claim"
log = get_logger(__name__)


class Wake:
    """Per write transaction: whether it made a run ready (and, on PostgreSQL, the NOTIFY)."""

    __slots__ = ("notify", "sent")

    def __init__(self, *, notify: bool) -> None:
        self.notify = notify
        self.sent = False

    def __call__(self, conn: sa.Connection) -> None:
        if self.notify and not self.sent:
            conn.execute(_NOTIFY)
        self.sent = True

    def sent_by(self, statement: sa.Insert, run_id: str) -> sa.Insert:
        """``statement`` made to send the wake-up itself (``RETURNING pg_notify(…)``, on
        PostgreSQL), naming the run it makes ready: one round trip less than a ``SELECT
        pg_notify`` after it, on the path between a run's reservation and its claim. The
        caller executes it."""
        notify = self.notify and not self.sent
        self.sent = True
        return statement.returning(sa.func.pg_notify(CHANNEL, run_id)) if notify else statement

    def sent_if_inserted(
        self, conn: sa.Connection, statement: sa.Insert, values: dict[str, Any], run_id: str
    ) -> bool:
        """Execute ``statement``, an insert that may insert nothing (``ON CONFLICT DO
        NOTHING``), sending the wake-up in it as :meth:`sent_by` does; whether it inserted
        (only then is the wake-up sent)."""
        notify = self.notify and not self.sent
        returned = sa.func.pg_notify(CHANNEL, run_id) if notify else sa.literal(1)
        inserted = conn.execute(statement.returning(returned), values).first() is not None
        self.sent = self.sent or inserted
        return inserted


class Signal:
    """The in-process wake-up: sets the event of every open subscription."""

    def __init__(self) -> None:
        self._events: weakref.WeakSet[_Subscription] = weakref.WeakSet()

    def fire(self) -> None:
        for subscription in list(self._events):
            subscription.event.set()

    def subscribe(self) -> _Subscription:
        subscription = _Subscription(self)
        self._events.add(subscription)
        return subscription

    def discard(self, subscription: _Subscription) -> None:
        self._events.discard(subscription)


class _Subscription(Wakeups):
    def __init__(self, signal: Signal) -> None:
        self.event = asyncio.Event()
        self._signal = signal

    async def wait(self, timeout: float) -> bool:
        try:
            async with asyncio.timeout(timeout):
                await self.event.wait()
        except TimeoutError:
            return False
        self.event.clear()
        return True

    async def aclose(self) -> None:
        self._signal.discard(self)


# Parameters of a SQLAlchemy asyncpg URL that are SQLAlchemy's own, not asyncpg's: passed on to
# asyncpg (which sends what it does not know to the server as settings) the server refuses
# the connection, and the listener would never connect.
_SQLALCHEMY_ONLY = ("prepared_statement_cache_size", "prepared_statement_name_func")


def listen_connect_args(url: sa.URL) -> dict[str, Any]:
    """``asyncpg.connect`` keyword arguments for ``url`` (a ``postgresql+asyncpg`` URL), as the
    store's own engine connects, without SQLAlchemy's own parameters."""
    _args, kwargs = url.get_dialect()().create_connect_args(url)
    return {key: value for key, value in kwargs.items() if key not in _SQLALCHEMY_ONLY}


@dataclass(frozen=True, slots=True)
class ListenTimes:
    """The listener's waits, in seconds. Only they find a server that accepts a connection and
    then says nothing (a black-holed host, a stopped VM), so tests shorten them."""

    connect: float = 5.0  # to connect and log in
    close: float = 1.0  # to close a lost connection politely before dropping it
    probe_every: float = 30.0  # a quiet connection is probed this often
    probe: float = 5.0  # for the probe's answer
    reconnect: float = 1.0  # between two attempts
    remind: float = 60.0  # while it cannot listen, a log line this often (not every attempt)


LISTEN_TIMES = ListenTimes()


class _Outage:
    """What the listener logs of an outage: its start once, a reminder every ``remind``
    seconds while it lasts (not a line a second), and its end with how long it took."""

    __slots__ = ("_attempts", "_listened", "_logged", "_remind", "_since")

    def __init__(self, remind: float) -> None:
        self._remind = remind
        self._listened = False
        self._since: float | None = None  # monotonic start of the outage under way
        self._logged = 0.0
        self._attempts = 0

    def failed(self, why: str) -> None:
        now = time.monotonic()
        self._attempts += 1
        if self._since is None:
            self._since = self._logged = now
            if self._listened:
                log.warning("wake-up listener lost its connection; polling instead", error=why)
            else:
                log.warning("wake-up listener cannot connect; polling instead", error=why)
        elif now - self._logged >= self._remind:
            self._logged = now
            seconds = round(now - self._since, 1)
            log.warning(
                "wake-up listener still not listening",
                error=why, attempts=self._attempts, seconds=seconds,
            )  # fmt: skip

    def listening(self) -> bool:
        """Log the outage's end, if one was under way; whether it had listened before (then
        notifications may have been missed meanwhile)."""
        if self._since is not None:
            seconds = round(time.monotonic() - self._since, 1)
            log.warning(
                "wake-up listener listening again", attempts=self._attempts, seconds=seconds
            )
        listened, self._listened = self._listened, True
        self._since = None
        self._attempts = 0
        return listened


class PostgresWakeups(Wakeups):
    """The in-process signal, plus ``LISTEN culm_runs`` on a dedicated asyncpg connection
    (re-opened when lost; a reconnect counts as a wake-up, since notifications were missed).
    ``problem``: None while it listens, else why not (for the health check)."""

    def __init__(
        self, signal: Signal, connect_args: dict[str, Any], times: ListenTimes = LISTEN_TIMES
    ) -> None:
        self._local = signal.subscribe()
        self._connect_args = connect_args
        self._times = times
        self.problem: str | None = "connecting"
        self._lost = asyncio.Event()
        self._hints: list[str] = []
        self._task = asyncio.get_running_loop().create_task(self._listen())

    async def wait(self, timeout: float) -> bool:
        return await self._local.wait(timeout)

    def take_hints(self) -> list[str]:
        hints, self._hints = self._hints, []
        return hints

    async def _listen(self) -> None:
        import asyncpg  # type: ignore[import-untyped]

        outage = _Outage(self._times.remind)
        while True:
            conn: Any = None
            try:
                conn = await asyncpg.connect(**self._connect_args, timeout=self._times.connect)
                self._lost.clear()
                conn.add_termination_listener(lambda _conn: self._lost.set())
                await conn.add_listener(CHANNEL, self._notified)
                self.problem = None
                if outage.listening():
                    self._hints.append("")  # notifications were missed meanwhile
                    self._local.event.set()
                await self._watch(conn)
                why = "the connection closed"
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the database is away: try again shortly
                why = f"{type(exc).__name__}: {exc}"  # a timeout's text alone is empty
            finally:
                if conn is not None:
                    with contextlib.suppress(Exception):
                        await conn.close(timeout=self._times.close)
            self.problem = f"not listening, polling instead: {why}"
            outage.failed(why)
            await asyncio.sleep(self._times.reconnect)

    async def _watch(self, conn: Any) -> None:
        """Until the connection is lost: a closed socket says so at once, a silent one is found
        by a probe every ``probe_every`` seconds."""
        while True:
            try:
                async with asyncio.timeout(self._times.probe_every):
                    await self._lost.wait()
                return
            except TimeoutError:
                await conn.fetchval("SELECT 1", timeout=self._times.probe)

    def _notified(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        if len(self._hints) < _MAX_HINTS:
            self._hints.append(payload)
        else:
            self._hints[-1] = ""
        self._local.event.set()

    async def aclose(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self.problem = None  # closed: nothing to report
        await self._local.aclose()
