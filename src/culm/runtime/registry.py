"""The registry of this process's active runners, and of who listens to which session."""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

from culm.domain.events import RunEvent
from culm.logs import get_logger
from culm.runtime.runner import Runner
from culm.runtime.subscription import Subscription

log = get_logger(__name__)

# Called with every batch of stored run events, in order (the metrics pipeline is one).
Observer = Callable[[Sequence[RunEvent]], None]


@dataclass(slots=True)
class _Watch:
    event: asyncio.Event = field(default_factory=asyncio.Event)
    watchers: int = 0


class RunnerRegistry:
    def __init__(self) -> None:
        self._runners: dict[str, Runner] = {}
        self._by_session: dict[str, Runner] = {}
        self._session_subscribers: defaultdict[str, set[Subscription]] = defaultdict(set)
        # Followers of runs executed by other processes, fed by the bus (see deliver).
        self._remote_subscribers: defaultdict[str, set[Subscription]] = defaultdict(set)
        self._changes: dict[str, _Watch] = {}
        self.observers: list[Observer] = []

    def __len__(self) -> int:
        return len(self._runners)

    def runners(self) -> list[Runner]:
        return list(self._runners.values())

    def get(self, run_id: str) -> Runner | None:
        return self._runners.get(run_id)

    def for_session(self, session_id: str) -> Runner | None:
        return self._by_session.get(session_id)

    def add(self, runner: Runner) -> None:
        self._runners[runner.run_id] = runner
        self._by_session[runner.session_id] = runner
        self._notify(runner.run_id)

    def run_ids(self) -> set[str]:
        return set(self._runners)

    def remove(self, runner: Runner) -> None:
        """Drop ``runner`` (only that one: never a later attempt of its run held since)."""
        if self._runners.get(runner.run_id) is runner:
            del self._runners[runner.run_id]
        if self._by_session.get(runner.session_id) is runner:
            del self._by_session[runner.session_id]
        self._notify(runner.run_id)

    @contextlib.contextmanager
    def watch(self, run_id: str) -> Iterator[asyncio.Event]:
        """An event set the next time ``run_id`` gains or loses a runner here.

        Enter it before looking at the store, so a change in between is not missed; the
        entry is dropped when its last watcher leaves."""
        watch = self._changes.get(run_id)
        if watch is None:
            watch = self._changes[run_id] = _Watch()
        watch.watchers += 1
        try:
            yield watch.event
        finally:
            watch.watchers -= 1
            if watch.watchers == 0 and self._changes.get(run_id) is watch:
                del self._changes[run_id]

    def _notify(self, run_id: str) -> None:
        watch = self._changes.pop(run_id, None)
        if watch is not None:
            watch.event.set()
        for subscription in self._remote_subscribers.get(run_id, ()):
            subscription.wake()

    def publish(self, events: Sequence[RunEvent]) -> None:
        """Hand stored events to their runners (liveness, and delivery of the events that
        waited for the store), then to the observers: only ever stored events."""
        for event in events:
            runner = self._runners.get(event.run_id)
            if runner is not None:
                runner.stored(event)
        for observer in self.observers:
            try:
                observer(events)
            except Exception:
                log.exception("a run event observer failed")

    # What the bus brings from other processes

    def deliver(self, events: Sequence[RunEvent]) -> None:
        """The bus's sink: events of runs executed elsewhere (stored there), to the followers of
        those runs and to the sessions' subscribers here. A run stream checks the order; a
        session stream drops what it saw already (its runs' local events arrive twice)."""
        for event in events:
            for subscription in self._remote_subscribers.get(event.run_id, ()):
                subscription.push(event)
            self.fan_out_session(event)

    def bus_changed(self) -> None:
        """The bus went down or came back: every follower looks at the store."""
        for subscribers in (
            *self._remote_subscribers.values(),
            *self._session_subscribers.values(),
        ):
            for subscription in subscribers:
                subscription.wake()

    def add_remote_subscriber(self, run_id: str, subscription: Subscription) -> None:
        self._remote_subscribers[run_id].add(subscription)

    def remove_remote_subscriber(self, run_id: str, subscription: Subscription) -> None:
        subscribers = self._remote_subscribers.get(run_id)
        if subscribers is not None:
            subscribers.discard(subscription)
            if not subscribers:
                del self._remote_subscribers[run_id]

    # Session subscribers

    def add_session_subscriber(self, session_id: str, subscription: Subscription) -> None:
        self._session_subscribers[session_id].add(subscription)

    def remove_session_subscriber(self, session_id: str, subscription: Subscription) -> None:
        subscribers = self._session_subscribers.get(session_id)
        if subscribers is not None:
            subscribers.discard(subscription)
            if not subscribers:
                del self._session_subscribers[session_id]

    def close_streams(self) -> None:
        """Wake every subscription and watcher so the streams can end."""
        for runner in self._runners.values():
            runner.close_subscriptions()
        for subscribers in (
            *self._session_subscribers.values(),
            *self._remote_subscribers.values(),
        ):
            for subscription in subscribers:
                subscription.close()
        for run_id in list(self._changes):
            self._notify(run_id)

    def fan_out_session(self, event: RunEvent) -> None:
        subscribers = self._session_subscribers.get(event.session_id)
        if subscribers:
            for subscription in subscribers:
                subscription.push(event)
