"""The store seam: what the engine needs from its database, as one abstract class.

``SqlStore`` implements it for SQLite and PostgreSQL through a small dialect seam; the
conformance tests in ``tests/storage`` run against every backend.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from culm.domain.events import RunEvent, RunEventBase
from culm.domain.models import Message, Run, RunStatus, Session, Usage


@dataclass(frozen=True, slots=True)
class Reservation:
    """The outcome of asking for a run on a session.

    ``active_run_id`` is the run holding the session's slot when ``run`` had to queue behind it.
    """

    run: Run
    active_run_id: str | None = None


@dataclass(frozen=True, slots=True)
class Orphan:
    """An active run whose owner may be gone."""

    run: Run
    owner: str | None
    lease_expires_at: datetime | None


class Store(ABC):
    """Durable state: sessions, messages, runs and run events."""

    @abstractmethod
    async def start(self) -> None:
        """Open connections and apply migrations."""

    @abstractmethod
    async def aclose(self) -> None: ...

    # Sessions and messages
    @abstractmethod
    async def create_session(self, session: Session) -> None: ...

    @abstractmethod
    async def get_session(self, session_id: str) -> Session | None: ...

    @abstractmethod
    async def list_sessions(self, *, limit: int = 100) -> list[Session]:
        """Newest first."""

    @abstractmethod
    async def delete_session(self, session_id: str) -> bool:
        """Delete a session with its messages, runs and events. Raises ``SessionBusyError``
        while a run holds the session's slot; returns False for an unknown session."""

    @abstractmethod
    async def append_messages(
        self, session_id: str, messages: Sequence[Message], *, run_id: str | None
    ) -> None: ...

    @abstractmethod
    async def get_messages(self, session_id: str) -> list[Message]: ...

    # Runs
    @abstractmethod
    async def reserve_run(
        self,
        run: Run,
        *,
        owner: str,
        lease_expires_at: datetime,
        queue: bool,
        jump_queue: bool = False,
    ) -> Reservation:
        """Insert ``run`` holding the session's active slot for ``owner``, atomically.

        If another run holds the slot: with ``queue`` the run is inserted queued behind it
        (first in line with ``jump_queue``); without, ``AlreadyRunningError`` is raised.
        """

    @abstractmethod
    async def promote_next(
        self, session_id: str, *, owner: str, lease_expires_at: datetime
    ) -> Run | None:
        """Give the free slot of a session to its first queued run, for ``owner``, if any."""

    @abstractmethod
    async def claim_run(
        self,
        run_id: str,
        *,
        owner: str,
        lease_expires_at: datetime,
        started_at: datetime,
        message: Message | None = None,
    ) -> Run | None:
        """Mark a pending run of ``owner`` running; None if it is not claimable (cancelled).

        ``message`` (the run's input) is appended to the session in the same transaction,
        unless the run has messages already (an attempt after a recovery)."""

    @abstractmethod
    async def renew_leases(
        self, owner: str, run_ids: Sequence[str], lease_expires_at: datetime
    ) -> list[str]:
        """Extend the leases; returns the ids among them with a pending cancel request."""

    @abstractmethod
    async def finish_run(
        self,
        run_id: str,
        *,
        status: RunStatus,
        error: str | None,
        usage: Usage,
        completed_at: datetime,
    ) -> bool:
        """Record the run's outcome and free its slot. Returns whether runs wait in its
        session's queue (then it is for the caller to ``promote_next``)."""

    @abstractmethod
    async def request_cancel(self, run_id: str, reason: str) -> Run | None:
        """Record a cancel request. A run that is not executing yet (pending: queued, or
        reserved but not claimed) is ended ``cancelled`` at once, with its terminal event; a
        running one is only flagged, for its owner to act on. Returns the run as it now is."""

    @abstractmethod
    async def get_run(self, run_id: str) -> Run | None: ...

    @abstractmethod
    async def get_active_run(self, session_id: str) -> Run | None:
        """The run holding the session's slot."""

    @abstractmethod
    async def list_runs(
        self,
        *,
        session_id: str | None = None,
        status: RunStatus | None = None,
        parent_run_id: str | None = None,
        limit: int = 100,
    ) -> list[Run]:
        """Newest first."""

    @abstractmethod
    async def list_orphan_candidates(self, *, exclude_owner: str) -> list[Orphan]:
        """Active (not queued) runs owned by anyone but ``exclude_owner``, or by nobody."""

    @abstractmethod
    async def list_owned_runs(self, owner: str) -> list[Orphan]:
        """Active (not queued) runs held by ``owner`` (for it to find those it no longer runs)."""

    @abstractmethod
    async def recover_run(
        self,
        orphan: Orphan,
        *,
        owner: str,
        lease_expires_at: datetime,
        requeue: bool,
        now: datetime,
        events: Sequence[RunEventBase],
    ) -> Run | None:
        """Take over an orphan if it is still as seen (compare-and-set on status and owner):
        re-queue it for ``owner`` (pending, attempt + 1) or end it as error ("interrupted"),
        appending ``events`` after its last stored event. None if someone moved it first.

        An orphan whose last stored event is terminal did end (only its status was not
        stored): it gets the status its terminal event says, unowned, and nothing is appended
        or re-queued, whatever ``requeue`` says."""

    @abstractmethod
    async def release_runs(self, owner: str) -> list[str]:
        """Hand back ``owner``'s active runs (a clean stop that leaves them for recovery):
        they become pending and unowned, so the next start re-queues them. Returns their ids."""

    @abstractmethod
    async def list_stranded_sessions(self) -> list[str]:
        """Sessions with queued runs but no run holding their slot."""

    @abstractmethod
    async def has_run_messages(self, run_id: str) -> bool: ...

    # Run events
    @abstractmethod
    async def append_events(self, events: Sequence[RunEvent]) -> None:
        """Persist events (of any runs) and update those runs' liveness columns."""

    @abstractmethod
    async def read_events(
        self, run_id: str, *, after: int = 0, limit: int | None = None
    ) -> list[RunEvent]:
        """Events with ``seq > after`` in order (at most ``limit``)."""

    @abstractmethod
    async def last_event_seq(self, run_id: str) -> int: ...

    @abstractmethod
    async def read_events_of_types(
        self, run_id: str, types: Sequence[str], *, limit: int
    ) -> list[RunEvent]:
        """The last ``limit`` events of the given types, oldest first."""
