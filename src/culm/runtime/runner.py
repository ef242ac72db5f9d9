"""The runner: in-memory state of one active run (the seed's ``AgentRunner``).

It stamps every event the run emits, hands it to the batched store writer and delivers it: to
each subscriber's bounded queue, to the session's subscribers, into a ring of recent events (so
a subscriber can attach without a gap), and into the replay cache of the last 32 critical
events and the last ``token_budget_updated``.

Pre-commit delivery: an event is delivered at once, before it is stored, when its seq is within
the run's committed seq reservation (see :mod:`culm.domain.liveness`): the store holds a mark at
or above it, so after a crash recovery appends after what any client saw. An event beyond the
mark (the first events of an attempt, a run that outran its reservation) is held, its write made
urgent, and delivered once a write moves the mark past it; events are always delivered in seq
order. A terminal event is always held until it is itself stored: a store that refuses it (the
run was taken over) must not let a client see the run end while another worker executes it.
Nothing is shown early unless the run's lease surely holds and the store takes writes
(``may_show_early``, set by the manager): a worker that stalled past its lease, or stopped
renewing it because the store fails, shows only stored events, so a taken-over attempt never
shows a client an event the store will not hold. Once stored, the writer hands each event back
(:meth:`stored`) to keep the liveness fields current: they never name an event the store does
not hold, so a client may resume from any seq they report.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from collections.abc import Callable
from datetime import datetime

from culm.domain import liveness
from culm.domain.events import CRITICAL_EVENT_TYPES, RunEvent, RunEventBase, is_terminal
from culm.domain.liveness import SEQ_RESERVE
from culm.domain.models import Run, RunStatus, Usage
from culm.domain.time import utc_now
from culm.runtime.subscription import Subscription

CRITICAL_EVENTS_CAPACITY = 32
RING_CAPACITY = 256


class Runner:
    def __init__(
        self,
        run: Run,
        *,
        persist: Callable[[RunEvent, bool], None],
        fan_out_session: Callable[[RunEvent], None],
        queue_size: int,
    ) -> None:
        self.run = run
        self.run_id = run.run_id
        # The claim it runs under: every write for the run is conditional on (owner, epoch).
        self.epoch = run.epoch
        self.session_id = run.session_id
        self.status = RunStatus.PENDING
        self.started_at: datetime | None = None
        self.completed_at: datetime | None = None
        self.task: asyncio.Task[None] | None = None
        # Set by the task's first step: until then a cancel is only recorded (a task cancelled
        # before its first step never runs a line of its coroutine, so nothing would end it).
        self.started = False
        self.cancel_reason: str | None = None
        self.storage_error: str | None = None  # why the store could not take its events
        self.ended_in_store = False  # the store ended it (cancelled before it started)
        self.end_stored = False  # its terminal status is stored (set by the manager)
        # time.monotonic() until which its lease surely holds (kept by the manager), and whether
        # an event may be shown before it is stored now (see the module's docstring).
        self.lease_until = math.inf
        self.may_show_early: Callable[[], bool] = lambda: True
        self.finalizing = False
        self.finalizing_since: float | None = None  # time.monotonic() when it began
        self.usage = Usage()
        self.done = asyncio.Event()
        self.liveness = liveness.Liveness(last_seq=run.last_seq, round_count=run.round_count)
        self.critical_events: deque[RunEvent] = deque(maxlen=CRITICAL_EVENTS_CAPACITY)
        self.last_budget_event: RunEvent | None = None
        self._seq = run.last_seq
        self._published = run.last_seq  # the last seq delivered
        # The seq reservation known to be committed: none until this attempt's first write.
        self._reserved = run.last_seq
        self._held: deque[RunEvent] = deque()  # emitted beyond the reservation, in seq order
        self._ring: deque[RunEvent] = deque(maxlen=RING_CAPACITY)
        self._subscribers: set[Subscription] = set()
        self._persist = persist
        self._fan_out_session = fan_out_session
        self._queue_size = queue_size

    @property
    def last_seq(self) -> int:
        """The last seq stamped (stored or not); the last stored is ``liveness.last_seq``."""
        return self._seq

    def emit(self, payload: RunEventBase) -> RunEvent:
        """Stamp ``payload`` with the next seq, hand it to the store, and deliver it now if the
        reservation covers it (else once a write moves the reservation past it; a terminal
        event once it is stored). Never blocks."""
        self._seq += 1
        event = payload.stamped(
            seq=self._seq, run_id=self.run_id, session_id=self.session_id, ts=utc_now()
        )
        hold = (
            bool(self._held)
            or event.seq > self._reserved
            or is_terminal(event)
            or not self.may_show_early()
        )
        if hold:
            self._held.append(event)
        self._persist(event, hold)  # a held event asks for a write at once
        if not hold:
            self._deliver(event)
        return event

    def stamp_held(self, payload: RunEventBase) -> RunEvent:
        """Stamp ``payload`` with the next seq and hold it, for the store to write itself (a run
        parking to wait for a person writes its ``input_requested`` events in the transaction
        that makes it wait); delivered by :meth:`stored` once written."""
        self._seq += 1
        event = payload.stamped(
            seq=self._seq, run_id=self.run_id, session_id=self.session_id, ts=utc_now()
        )
        self._held.append(event)
        return event

    def stored(self, event: RunEvent) -> None:
        """``event`` is stored, and with it a reservation ``SEQ_RESERVE`` seqs past it: update
        the liveness fields and deliver the held events the reservation now covers."""
        if event.seq <= self.liveness.last_seq:
            return  # an earlier attempt's, stored late: it says nothing about this one
        self.liveness = liveness.apply(self.liveness, event)
        self._reserved = max(self._reserved, event.seq + SEQ_RESERVE)
        # Up to the reservation, or (a terminal event, or the lease in doubt) what is stored.
        shown = self._reserved if self.may_show_early() else event.seq
        held = self._held
        while held and held[0].seq <= shown:
            if is_terminal(held[0]) and held[0].seq > event.seq:
                break
            self._deliver(held.popleft())

    def _deliver(self, event: RunEvent) -> None:
        """Ring, replay caches, subscribers, the session's subscribers."""
        self._published = event.seq
        self._ring.append(event)
        if event.type in CRITICAL_EVENT_TYPES:
            self.critical_events.append(event)
        elif event.type == "token_budget_updated":
            self.last_budget_event = event
        for subscriber in self._subscribers:
            subscriber.push(event)
        self._fan_out_session(event)

    def attach(self, after: int) -> Subscription | None:
        """A subscription starting right after seq ``after``, or None when the events between
        ``after`` and what the ring still holds must first be read from the store."""
        if after < self._published:
            oldest = self._ring[0].seq if self._ring else self._published + 1
            if oldest > after + 1:
                return None
            backlog = [event for event in self._ring if event.seq > after]
        else:
            backlog = []
        subscription = Subscription(max(self._queue_size, len(backlog) + 1), backlog)
        self._subscribers.add(subscription)
        return subscription

    def close_subscriptions(self) -> None:
        for subscription in self._subscribers:
            subscription.close()

    def detach(self, subscription: Subscription) -> None:
        self._subscribers.discard(subscription)

    @property
    def subscriber_count(self) -> int:
        return len(self._subscribers)

    def replay_cache(self) -> list[RunEvent]:
        """What a late session subscriber gets first: critical events, then the last budget."""
        cached = list(self.critical_events)
        if self.last_budget_event is not None:
            cached.append(self.last_budget_event)
        return sorted(cached, key=lambda event: event.seq)

    def request_cancel(self, reason: str) -> bool:
        """Cancel the task that owns the run (once). False if it is already ending.

        Before the task's first step the cancel is only recorded: the task looks at it first."""
        if self.cancel_reason is not None or self.finalizing:
            return False
        self.cancel_reason = reason
        if self.started and self.task is not None and not self.task.done():
            self.task.cancel()
        return True
