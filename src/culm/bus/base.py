"""The event bus seam: publish stored run events, follow runs and sessions that run elsewhere,
and carry control notices (cancel) to the process that owns a run.

PostgreSQL (or SQLite) is the truth; the bus only makes things fast. Whatever it loses, the
subscribers read back from the store: so every method is best-effort and never raises for a
broken bus (``publish`` never blocks either). What the bus receives from other processes it hands
to one *sink* (the runner registry), which feeds the same fan-out, ring and replay cache that
in-process runs use: a backend serializes and transports, nothing more.
"""

from __future__ import annotations

import asyncio
import contextlib
from abc import ABC, abstractmethod
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from culm.domain.events import RunEvent, is_terminal

BusState = Literal["ok", "degraded", "disabled"]
# Where received events go: called on the event loop with each batch, in order per stream.
Sink = Callable[[Sequence[RunEvent]], None]
# A cancel notice for a run this process owns: (run_id, reason).
CancelHandler = Callable[[str, str], None]


@dataclass(frozen=True, slots=True)
class Topic:
    """A stream the bus carries: every event of one run, or of every run of one session."""

    kind: Literal["run", "session"]
    id: str

    @classmethod
    def run(cls, run_id: str) -> Topic:
        return cls("run", run_id)

    @classmethod
    def session(cls, session_id: str) -> Topic:
        return cls("session", session_id)


@dataclass(frozen=True, slots=True)
class BusStats:
    """What ``/metrics`` shows of the bus (counts since the process started)."""

    state: BusState
    reconnects: int = 0  # outages recovered from
    published: int = 0  # events sent to other processes
    dropped: int = 0  # events not sent (queue full, or the bus down): read from the store
    received: int = 0  # events received from other processes
    followed: int = 0  # topics followed now
    publish_queue: int = 0  # event batches waiting to be published now


def _ignore(_events: Sequence[RunEvent]) -> None:
    return None


def _nothing() -> None:
    return None


class EventBus(ABC):
    """Lifecycle: ``start`` once, ``aclose`` once. Everything else is safe before, between and
    after, and while the backend is down (then it does nothing, or says False)."""

    def __init__(self) -> None:
        self._sink: Sink = _ignore
        self._on_change: Callable[[], None] = _nothing
        self._terminal: defaultdict[str, set[asyncio.Event]] = defaultdict(set)
        self._state_change = asyncio.Event()

    async def start(self) -> None:  # noqa: B027 (a backend with nothing to start keeps it)
        """Connect and start the background tasks."""

    async def aclose(self) -> None:  # noqa: B027
        """Stop the background tasks and close the connection. Pending publishes are sent first,
        for a bounded time (what is still left then is stored: its followers read it there)."""

    @property
    @abstractmethod
    def state(self) -> BusState:
        """``ok``, ``degraded`` (Redis unreachable: everyone falls back to the store) or
        ``disabled`` (no bus across processes: in-process only)."""

    @property
    def crosses_processes(self) -> bool:
        """Whether events of runs in other processes arrive here (False: follow the store)."""
        return False

    def stats(self) -> BusStats:
        return BusStats(state=self.state)

    def bind(self, sink: Sink, on_change: Callable[[], None] = _nothing) -> None:
        """Where the events received from other processes go, and whom to tell when
        :attr:`state` changes (its followers read the store for what the bus lost)."""
        self._sink = sink
        self._on_change = on_change

    # Events

    @abstractmethod
    def publish(self, events: Sequence[RunEvent]) -> None:
        """Carry a batch of *stored* events to other processes. Never blocks, never raises."""

    @abstractmethod
    def follow(self, topic: Topic) -> contextlib.AbstractAsyncContextManager[None]:
        """Receive ``topic``'s events in the sink while inside. Entering returns once the bus
        reads the topic: every event published from then on reaches the sink (while the bus is
        ``ok``); what was published before is in the store."""

    def watch_state(self) -> asyncio.Event:
        """An event set at the next change of :attr:`state` (a follower then reads the store
        for what the bus may have lost, and knows whether to poll it)."""
        return self._state_change

    def _state_changed(self) -> None:
        event, self._state_change = self._state_change, asyncio.Event()
        event.set()
        self._on_change()

    # Terminal notices

    async def wait_terminal(self, run_id: str, timeout: float) -> bool:
        """True once a terminal event of ``run_id`` passes through the bus (published here or
        received), False after ``timeout`` seconds. A run that ended before is not announced
        again: callers that must not miss it use :meth:`terminal_notice` and look at the store
        after entering it."""
        async with self.terminal_notice(run_id) as ended:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await ended.wait()
            return ended.is_set()

    @contextlib.asynccontextmanager
    async def terminal_notice(self, run_id: str) -> AsyncIterator[asyncio.Event]:
        """An event set when a terminal event of ``run_id`` passes through the bus while
        inside (entering returns once the bus follows the run)."""
        waiter = asyncio.Event()
        self._terminal[run_id].add(waiter)
        try:
            async with self.follow(Topic.run(run_id)):
                yield waiter
        finally:
            waiters = self._terminal.get(run_id)
            if waiters is not None:
                waiters.discard(waiter)
                if not waiters:
                    del self._terminal[run_id]

    def _seen(self, events: Sequence[RunEvent]) -> None:
        """Every batch that passes through the bus, either way: wake terminal waiters."""
        if not self._terminal:
            return
        for event in events:
            if is_terminal(event):
                for waiter in self._terminal.get(event.run_id, ()):
                    waiter.set()

    # Control (cancel): delivered to the handler the owning process registered

    @abstractmethod
    async def send_cancel(self, owner: str, run_id: str, reason: str) -> bool:
        """Tell ``owner`` to cancel ``run_id`` now; True if the notice was delivered (the DB flag,
        written before, stays the truth and the owner's heartbeat the fallback)."""

    @abstractmethod
    def on_cancel(self, owner: str, handler: CancelHandler) -> None:
        """Call ``handler(run_id, reason)`` for every cancel notice sent to ``owner`` (this
        process's owner id)."""
