"""The store seam: what the engine needs from its database, as one abstract class.

``SqlStore`` implements it for SQLite and PostgreSQL through a small dialect seam; the
conformance tests in ``tests/storage`` run against every backend.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from culm.domain.compaction import Compaction
from culm.domain.events import RunEvent
from culm.domain.input import InputAnswer, InputRequest
from culm.domain.models import Message, Run, RunStatus, RunTrigger, Session, Usage


@dataclass(frozen=True, slots=True)
class Reservation:
    """The outcome of asking for a run on a session.

    ``active_run_id`` is the run holding the session's slot when ``run`` had to queue behind it.
    """

    run: Run
    active_run_id: str | None = None


@dataclass(frozen=True, slots=True)
class SessionState:
    """What a run starts from: its session, the session's messages and latest compaction."""

    session: Session
    messages: list[Message]
    compaction: Compaction | None


@dataclass(frozen=True, slots=True)
class Ending:
    """A run's end, written with its terminal event (:meth:`Store.append_events`): its last
    ``messages`` (the final answer), then what :meth:`Store.finish_run` records."""

    session_id: str
    status: RunStatus
    error: str | None
    usage: Usage
    messages: Sequence[Message] = ()


@dataclass(frozen=True, slots=True)
class Renewal:
    """What a lease renewal found."""

    cancel_requested: dict[str, str]  # runs (still ours) with a cancel request -> its reason
    lost: list[str]  # runs whose (owner, epoch) no longer match: cancel them locally


@dataclass(frozen=True, slots=True)
class WorkerInfo:
    """A worker process's row (``workers`` table); counters are cumulative, written at each
    heartbeat. ``alive``: its last heartbeat is within ``lease_seconds`` of the database's now
    and it has not stopped."""

    worker_id: str
    host: str
    pid: int
    boot_id: str | None
    pid_namespace: str | None
    kind: str  # 'embedded' | 'worker' | 'cli'
    concurrency: int
    started_at: datetime
    last_heartbeat_at: datetime
    stopped_at: datetime | None
    active_runs: int
    claims: int
    takeovers: int
    fenced_writes: int
    alive: bool


@dataclass(frozen=True, slots=True)
class QueueStats:
    """``pending``: runs waiting for a worker, ready or queued (no owner); ``ready``: those of
    them a worker may claim now; ``running``: runs a worker holds (started, or claimed and about
    to start); ``oldest_pending_age``: seconds since the oldest pending run was created (None
    without pending runs; the database's now less the run's ``created_at``, which the process
    that created the run stamped with its own clock, so the hosts' clock skew is in it; a
    re-queued run counts from its creation, not from its re-queueing)."""

    pending: int
    ready: int
    running: int
    oldest_pending_age: float | None


@dataclass(frozen=True, slots=True)
class SweepPolicy:
    """How a sweeper ends runs it takes over: re-queued while ``requeue`` and the attempt is
    below ``max_attempts``, else ended ``error`` "interrupted". (``lease_seconds``, the
    sweeper's lease setting: expiry is read from each run's lease; a worker whose heartbeat is
    older than it and that holds no run is marked stopped.)"""

    requeue: bool
    max_attempts: int
    lease_seconds: float


class Wakeups(ABC):
    """Wake-ups for a worker: a run became ready. Best effort (a notification can be lost): the
    caller also polls."""

    @abstractmethod
    async def wait(self, timeout: float) -> bool:
        """Wait until a run became ready since the last call (True) or ``timeout`` passed."""

    def take_hints(self) -> list[str]:
        """The run ids the wake-ups since the last call named (a reservation's), emptied; "" for
        one that named none (any other wake-up). None heard: nothing known, claim."""
        return []

    @abstractmethod
    async def aclose(self) -> None: ...


Fence = tuple[str, int]  # (owner, epoch)


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
        self,
        session_id: str,
        messages: Sequence[Message],
        *,
        run_id: str | None,
        fence: Fence | None = None,
    ) -> None:
        """Append to the session's messages. With ``fence`` (owner, epoch) the write is
        conditional on ``run_id`` still being the fence's: else ``LeaseLostError``, nothing
        written."""

    @abstractmethod
    async def get_messages(self, session_id: str) -> list[Message]: ...

    # Compactions of a session's context (the messages themselves are never changed)

    @abstractmethod
    async def add_compaction(
        self, compaction: Compaction, *, fence: Fence | None = None, idle: bool = False
    ) -> Compaction:
        """Store ``compaction`` as its session's next (returned with its ``seq``). With
        ``fence`` (owner, epoch) of ``compaction.run_id`` the write is conditional, as for
        :meth:`append_messages`. With ``idle`` (a compaction made outside a run) it is written
        only while no run holds the session's slot, checked atomically with a run being
        created: ``SessionBusyError`` otherwise."""

    @abstractmethod
    async def get_compaction(self, session_id: str) -> Compaction | None:
        """The session's latest compaction (its model view), None if it has none."""

    @abstractmethod
    async def list_compactions(self, session_id: str) -> list[Compaction]:
        """Oldest first."""

    async def get_session_state(self, session_id: str) -> SessionState | None:
        """The session, its messages and its latest compaction (a run's start-up reads), None
        for an unknown session. ``SqlStore`` reads them in one read transaction."""
        session = await self.get_session(session_id)
        if session is None:
            return None
        messages = await self.get_messages(session_id)
        return SessionState(session, messages, await self.get_compaction(session_id))

    # Runs: the queue is the runs table. A *ready* run (pending, not queued, no owner) holds its
    # session's slot and waits for a worker; a *queued* one waits behind its session's active
    # run. Every write a worker makes for a run is fenced on (run_id, owner, epoch); the epoch
    # is bumped on every claim, takeover and release. Leases are in database time.

    @abstractmethod
    async def reserve_run(
        self,
        run: Run,
        *,
        queue: bool,
        jump_queue: bool = False,
        owner: str | None = None,
        lease_seconds: float | None = None,
        parent_fence: Fence | None = None,
        session: Session | None = None,
    ) -> Reservation:
        """Insert ``run`` for its session, atomically (with ``session``: a new session, created
        in the same transaction, as :meth:`create_session` would; nothing of either is
        written if the run cannot be).

        Without ``owner``: ready (holding the free slot, unowned) and a wake-up is sent; or,
        when another run holds the slot and ``queue``, queued behind it (first in line with
        ``jump_queue``); without ``queue``, ``AlreadyRunningError``.

        With ``owner`` (a sub-agent, ``culm run``'s own run): inserted already claimed by it,
        epoch 1, lease = database now + ``lease_seconds``; it never enters the queue, so a
        busy slot raises ``AlreadyRunningError`` whatever ``queue`` says. The returned
        ``run.epoch`` is set.

        ``parent_fence`` (owner, epoch) of ``run.parent_run_id``: a sub-agent is reserved only
        while its parent is still the fence's, checked in the same transaction (else
        ``LeaseLostError``, nothing inserted): a parent taken over never starts a child."""

    @abstractmethod
    async def claim_runs(
        self,
        owner: str,
        *,
        limit: int,
        lease_seconds: float,
        exclude: Collection[str] = (),
        only: Collection[str] | None = None,
    ) -> list[Run]:
        """Claim and start up to ``limit`` ready runs for ``owner``, oldest first (created_at,
        run_id), in one statement: owner set, epoch + 1, lease = database now +
        ``lease_seconds``, status running (started_at = database now); in the same transaction
        each run's input is appended as its first message, unless stored already (an earlier
        attempt). ``start_run`` is not needed after it. Concurrent claimers never claim one
        run twice. Runs in ``exclude`` are left (those whose earlier attempt the claimer still
        winds down: one process never holds two attempts of a run); with ``only``, only
        those runs are looked at (``culm run`` resuming its own run after an answer)."""

    @abstractmethod
    async def start_run(
        self, run_id: str, epoch: int, *, owner: str, message: Message | None = None
    ) -> Run | None:
        """Mark a run reserved owned (a sub-agent, ``culm run``'s) running (started_at =
        database now) and append ``message`` (its input) unless the run has messages (an
        attempt after a recovery); a claimed run is started by its claim. ``LeaseLostError``
        when (owner, epoch) no longer match; None when the run was cancelled meanwhile (it is
        then ended ``cancelled``, with its terminal event) or ended already."""

    @abstractmethod
    async def finish_run(
        self,
        run_id: str,
        *,
        fence: Fence | None,
        status: RunStatus,
        error: str | None,
        usage: Usage,
    ) -> None:
        """Record the run's outcome (completed_at = database now) and free its slot; in the
        same transaction the session's first queued run becomes ready (wake-up sent).
        ``LeaseLostError`` when ``fence`` (owner, epoch) no longer matches (None: unfenced,
        for the store's own callers and tests)."""

    @abstractmethod
    async def renew_leases(
        self, owner: str, fences: Mapping[str, int], lease_seconds: float
    ) -> Renewal:
        """Extend, in one statement, the leases of the runs ``fences`` maps (run_id -> epoch)
        that are still ``owner``'s at that epoch (to database now + ``lease_seconds``). ``lost``:
        the others, except runs that ended at that epoch (the owner's own ``finish_run``: done,
        not lost; a takeover or release always bumps the epoch)."""

    @abstractmethod
    async def request_cancel(self, run_id: str, reason: str) -> Run | None:
        """Record a cancel request. A run nobody owns (ready or queued) is ended ``cancelled``
        at once, with its terminal event (a ready one frees its slot for the session's next
        queued run); an owned one (claimed or running) is only flagged, for its owner to act
        on (``renew_leases`` reports it, ``start_run`` ends it). Returns the run as it now is."""

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
        trigger: RunTrigger | None = None,
        model: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[Run]:
        """Newest first, from the ``offset``-th of those that match every filter given."""

    @abstractmethod
    async def waiting_below(self, run_id: str, depth: int) -> list[str]:
        """``run_id`` and the runs below it (``depth`` levels of sub-agents) that wait for a
        person (a level's finished runs are not looked below)."""

    @abstractmethod
    async def expire_input(self) -> list[RunEvent]:
        """Answer the expired requests for a person (``expires_at`` in database time): denied,
        or their run ended ``error`` ``input_timeout`` by its session; the events written (for
        the caller to publish: nobody executes those runs). Every sweeper calls it."""

    @abstractmethod
    async def sweep(
        self, owner: str, policy: SweepPolicy, *, dead_owners: Sequence[str] = ()
    ) -> list[Run]:
        """Take over active runs whose lease expired (database time) or whose owner is in
        ``dead_owners``; concurrent sweepers never take one run twice (SKIP LOCKED). Each
        gets epoch + 1 and, with events from ``last_seq + 1``:

        - its last stored event is terminal: the status that event says (nothing appended);
        - a sub-agent run (``parent_run_id``), or one with a cancel request: ``cancelled``
          ("parent recovered", or the request's reason);
        - ``policy.requeue`` and ``attempt < policy.max_attempts``: ready again, unowned,
          attempt + 1, ``run_recovered`` "requeued" (wake-up);
        - else ``error`` "interrupted" (``run_recovered`` "errored", then ``error``).

        The non-terminal children of every run taken over end ``cancelled`` "parent
        recovered". Ending a run makes its session's next queued run ready. As a safety net it
        also makes ready the first queued run of any session left with queued runs and no
        active one. It also retires ``workers`` rows: a worker silent for longer than
        ``policy.lease_seconds`` that holds no active run is marked stopped, and rows stopped
        for longer than 24 hours are deleted. Returns the runs taken over (children included)
        as they now are. ``owner`` is the sweeper (logs)."""

    @abstractmethod
    async def release_runs(
        self, owner: str, fences: Mapping[str, int], *, clean: bool
    ) -> list[str]:
        """Hand back ``owner``'s runs of ``fences`` (run_id -> epoch) on a stop: epoch +
        1, ready and unowned, attempt + 1, ``run_recovered`` "requeued" (wake-up); sub-agent
        runs end ``cancelled`` "parent recovered" instead (and a run whose terminal event is
        stored gets its status). Returns the ids released (runs no longer ours are left).
        ``clean``: the owner stored every event it showed (the caller knows, the store does
        not), so what follows goes on from the last stored seq; else after ``seq_reserved``."""

    # People in the loop (``storage/inputs.py``): a run waits for a person's answers

    @abstractmethod
    async def park_run(
        self,
        run_id: str,
        *,
        fence: Fence,
        messages: Sequence[Message],
        requests: Sequence[Mapping[str, object]],
        events: Sequence[RunEvent],
        usage: Usage,
        timeout: float | None,
    ) -> RunStatus:
        """In one transaction fenced on ``fence``: append ``messages``, insert ``requests``
        (``input_requests`` rows: request_id, kind, tool_call_id, tool_name, arguments,
        question, choices; ``expires_at`` = database now + ``timeout``) and ``events`` (the
        ``input_requested`` ones), and make the run ``waiting``: unowned, no lease, epoch + 1,
        ``usage`` kept. Returns ``waiting``, or ``cancelled`` when a cancel was requested
        meanwhile (the run is then ended so, with its terminal event)."""

    @abstractmethod
    async def answer_input(
        self, run_id: str, request_id: str, answer: InputAnswer
    ) -> tuple[InputRequest, list[RunEvent]]:
        """Record ``answer`` and its ``input_received`` event (returned, stored); the run is
        ready again (wake-up) once none of its requests is open. The same answer twice returns
        the request and no event. ``NotFoundError`` for an unknown run or request,
        ``InputConflictError`` for a request answered otherwise or a run not waiting,
        ``InvalidFieldError`` for an answer of the wrong kind."""

    @abstractmethod
    async def list_input(
        self, run_ids: Sequence[str], *, statuses: Sequence[str] | None = ("open",)
    ) -> list[InputRequest]:
        """The runs' requests (oldest first) in ``statuses`` (None: all)."""

    @abstractmethod
    async def resolve_input(
        self, run_id: str, *, fence: Fence, messages: Sequence[Message], request_ids: Sequence[str]
    ) -> None:
        """A resumed run's results of its waiting calls, and their requests marked applied,
        in one transaction fenced on ``fence``."""

    @abstractmethod
    async def input_counts(self) -> list[tuple[str, str, int]]:
        """(tool name, outcome, count) of every answered or expired request."""

    # Workers

    @abstractmethod
    async def register_worker(
        self,
        worker_id: str,
        *,
        host: str,
        pid: int,
        boot_id: str | None,
        pid_namespace: str | None,
        kind: str,
        concurrency: int,
    ) -> None:
        """Insert (or reset) the worker's row; started_at and last_heartbeat_at = db now."""

    @abstractmethod
    async def worker_heartbeat(
        self, worker_id: str, *, active_runs: int, claims: int, takeovers: int, fenced_writes: int
    ) -> None:
        """last_heartbeat_at = database now, and the worker's cumulative counters."""

    @abstractmethod
    async def stop_worker(self, worker_id: str) -> None:
        """stopped_at = database now."""

    @abstractmethod
    async def get_worker(
        self, worker_id: str, *, lease_seconds: float = 10.0
    ) -> WorkerInfo | None: ...

    @abstractmethod
    async def list_workers(
        self, *, lease_seconds: float, include_stopped: bool = False
    ) -> list[WorkerInfo]:
        """Workers by started_at; ``alive`` judged against ``lease_seconds``."""

    @abstractmethod
    async def queue_stats(self) -> QueueStats: ...

    @abstractmethod
    def wakeups(self) -> Wakeups:
        """A new subscription to "a run became ready" (close it with ``aclose``)."""

    @abstractmethod
    async def has_run_messages(self, run_id: str) -> bool: ...

    # Run events
    @abstractmethod
    async def append_events(
        self,
        events: Sequence[RunEvent],
        *,
        fences: Mapping[str, Fence] | None = None,
        reserve: int = 0,
        endings: Mapping[str, Ending] | None = None,
    ) -> set[str]:
        """Persist events (of any runs) with their runs' liveness columns.

        ``reserve``: each run's ``seq_reserved`` becomes its last seq here plus ``reserve``, and
        whatever the store itself appends for the run later (recovery, a cancel) comes after
        it (the runtime passes ``SEQ_RESERVE``: it shows events before storing them).

        ``fences`` maps run_id -> (owner, epoch): per run the row is locked and checked first
        (runs before run_events, always), and a run whose fence fails gets none of its events
        stored. A run whose events break a constraint (a duplicate seq) is left out too, the
        others' events are stored. Returns the ids of the runs left out. Runs absent from
        ``fences`` are written unfenced.

        ``endings`` maps run_id -> :class:`Ending` for runs whose terminal event is among
        ``events``: in the same transaction, after its events, each such run's messages are
        appended and it is finished as :meth:`finish_run` does (under the same fence). A run
        left out gets neither; an ending that cannot be written (the run is no longer active)
        fails the whole write, like an event the database refuses."""

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
