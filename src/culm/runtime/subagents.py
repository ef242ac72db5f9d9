"""Sub-agents: the ``spawn_agent`` tool runs a child agent and returns its final answer.

A spawn creates a child session (kind ``child``) and a child run (trigger ``spawn``, with
``parent_run_id``) in the parent's workspace, and follows the child's events into the parent's
stream: ``sub_agent_started``, every child event wrapped in ``sub_agent_event`` (in the child's
order), ``sub_agent_heartbeat`` every few seconds while the child runs, and
``sub_agent_completed``. Cancelling the parent cancels the tool, whose cleanup cancels the child
and waits for it, so a cancel reaches every descendant and ``cancel(wait=True)`` returns once the
whole tree is terminal. A watchdog ends a child that is idle or runs too long (status
``timeout``). Children per run and per process are capped; the rest wait in order.

A child that waits for a person (``culm.input``: it inherits its parent's ``require_approval``
and input timeout) parks like any run; its ``input_requested`` shows in the parent's stream
inside ``sub_agent_event`` and is answered on the child's run id. The parent waits on its child
as on any tool call: it stays ``running``, holding its task and lease (its ``spawn_agent`` call
is open), and the watchdog does not count the child's waiting (neither as idle nor as run time).
Answered, the child is claimed by any worker and resumed; the parent follows it from the store.

A child run is never queued for other workers: it is reserved owned by its parent's process and
executed there (so the caps are per worker). When another worker takes the parent over (its
lease ran out), the store ends the parent's non-terminal children (``cancelled``, "parent
recovered"), and the re-queued parent spawns anew: a child never runs twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator, AsyncIterator, Coroutine, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any, ClassVar, Protocol

from culm.domain.events import (
    RunEvent,
    SubAgentCompleted,
    SubAgentEvent,
    SubAgentHeartbeat,
    SubAgentStarted,
    event_to_dict,
    innermost,
    is_terminal,
)
from culm.domain.models import Run, RunTrigger, Session, SessionKind
from culm.errors import ToolFailure, UserError
from culm.logs import get_logger
from culm.tools.base import Tool, ToolContext
from culm.tracing.spans import current_traceparent

log = get_logger(__name__)

SPAWN_TOOL = "spawn_agent"
PARENT_CANCELLED = "the parent run was cancelled"
CHILD_PROMPT = (
    "You are a sub-agent: another agent gave you one task. Do it with the tools you have, "
    "then answer with the result, complete and self-contained."
)


class Spawner(Protocol):
    """What spawning needs from the engine."""

    async def get_session(self, session_id: str) -> Session: ...

    async def get_run(self, run_id: str) -> Run: ...

    async def create_session(
        self,
        *,
        model: str | None = None,
        system_prompt: str | None = None,
        tools: Sequence[str] = (),
        workspace: str | None = None,
        metadata: dict[str, Any] | None = None,
        kind: SessionKind = SessionKind.ROOT,
        parent_session_id: str | None = None,
        mcp_servers: dict[str, Any] | None = None,
        require_approval: Sequence[str] = (),
        input_timeout: float | None = None,
        input_timeout_action: str = "deny",
    ) -> Session: ...

    async def start_run(
        self,
        session_id: str,
        message: str,
        *,
        trigger: RunTrigger = RunTrigger.API,
        parent_run_id: str | None = None,
        traceparent: str | None = None,
    ) -> Run: ...

    def subscribe(self, run_id: str, *, after: int = 0) -> AsyncIterator[RunEvent]: ...

    async def resume_child(self, run_id: str) -> None: ...

    async def cancel(
        self, run_id: str, *, reason: str = ..., wait: bool = False, timeout: float | None = None
    ) -> Run: ...


@dataclass(frozen=True, kw_only=True, slots=True)
class SubAgentLimits:
    per_run: int = 4
    total: int = 16
    max_depth: int = 2
    idle_timeout: float = 15 * 60.0
    max_duration: float = 60 * 60.0
    heartbeat: float = 5.0


@dataclass(frozen=True, slots=True)
class ChildOutcome:
    status: str  # completed | cancelled | error | timeout
    error: str | None = None
    answer: str = ""


@dataclass(slots=True)
class _Slots:
    semaphore: asyncio.Semaphore
    users: int = 0


@dataclass(slots=True)
class SubAgents:
    """The spawn capacity of one engine: per-run and engine-wide caps (FIFO waits)."""

    limits: SubAgentLimits
    _total: asyncio.Semaphore = field(init=False)
    _per_run: dict[str, _Slots] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        self._total = asyncio.Semaphore(self.limits.total)

    @contextlib.asynccontextmanager
    async def slot(self, run_id: str) -> AsyncIterator[None]:
        slots = self._per_run.get(run_id)
        if slots is None:
            slots = self._per_run[run_id] = _Slots(asyncio.Semaphore(self.limits.per_run))
        slots.users += 1
        try:
            async with slots.semaphore, self._total:
                yield
        finally:
            slots.users -= 1
            if slots.users == 0:
                del self._per_run[run_id]


class SpawnAgentTool(Tool):
    name: ClassVar[str] = SPAWN_TOOL
    description: ClassVar[str] = (
        "Start a sub-agent on a self-contained task and wait for its final answer, which is "
        "returned as this tool's result. Several sub-agents called in one turn run at the same "
        "time. The sub-agent works in the same workspace with the tools you give it (a subset "
        "of yours; by default all of them)."
    )
    parameters: ClassVar[dict[str, Any]] = {
        "type": "object",
        "properties": {
            "task": {"type": "string", "description": "What the sub-agent must do, in full."},
            "title": {"type": "string", "description": "A short label for the sub-agent."},
            "model": {"type": "string", "description": "provider:model (default: yours)."},
            "tools": {"type": "array", "items": {"type": "string"}},
        },
        "required": ["task"],
        "additionalProperties": False,
    }
    read_only: ClassVar[bool] = True  # lets several spawns of one round run concurrently

    def __init__(self, spawner: Spawner, capacity: SubAgents) -> None:
        self._spawner = spawner
        self._capacity = capacity
        self.timeout = capacity.limits.max_duration + 60  # the watchdog ends children first

    async def run(self, arguments: dict[str, Any], ctx: ToolContext) -> str:
        request = _SpawnRequest.parse(arguments)
        if ctx.emit_event is None or not ctx.run_id:
            raise ToolFailure("spawn_agent works only inside a run")
        # Queue for a slot first (our first await), so waiting spawns start in call order.
        async with self._capacity.slot(ctx.run_id):
            parent = await self._spawner.get_session(ctx.session_id)
            depth = await self._depth(ctx.run_id) + 1
            limit = self._capacity.limits.max_depth
            if depth > limit:
                raise ToolFailure(
                    f"nesting depth limit reached: sub-agents may nest {limit} deep, and this "
                    "run is already a sub-agent at that depth; do the task yourself"
                )
            tools = _child_tools(parent, request.tools, may_spawn=depth < limit)
            child = await self._start(parent, request, tools, ctx)
            outcome = await _Follower(self._spawner, self._capacity.limits, ctx, child).run()
        if outcome.status == "completed":
            return outcome.answer
        raise ToolFailure(_failure_text(outcome))

    async def _depth(self, run_id: str) -> int:
        depth = 0
        run = await self._spawner.get_run(run_id)
        while run.parent_run_id is not None and depth <= self._capacity.limits.max_depth:
            depth += 1
            run = await self._spawner.get_run(run.parent_run_id)
        return depth

    async def _start(
        self, parent: Session, request: _SpawnRequest, tools: list[str], ctx: ToolContext
    ) -> Run:
        try:
            session = await self._spawner.create_session(
                model=request.model or parent.model,
                system_prompt=CHILD_PROMPT,
                tools=tools,
                workspace=parent.workspace,
                metadata={"title": request.title} if request.title else {},
                kind=SessionKind.CHILD,
                parent_session_id=parent.session_id,
                # The parent's own MCP servers come along, so their tools resolve for the child.
                mcp_servers=parent.metadata.get("mcp_servers"),
                # A child asks for what its parent would (people in the loop, culm.input).
                require_approval=parent.require_approval,
                input_timeout=parent.input_timeout,
                input_timeout_action=parent.input_timeout_action,
            )
            child = await _started(
                self._spawner,
                self._spawner.start_run(
                    session.session_id,
                    request.task,
                    trigger=RunTrigger.SPAWN,
                    parent_run_id=ctx.run_id,
                    traceparent=current_traceparent(),  # the child's spans: below this call's
                ),
            )
        except UserError as exc:
            raise ToolFailure(f"could not start the sub-agent: {exc}") from exc
        assert ctx.emit_event is not None
        ctx.emit_event(
            SubAgentStarted(
                child_session_id=child.session_id, child_run_id=child.run_id, title=request.title
            )
        )
        return child


async def _started(spawner: Spawner, starting: Coroutine[Any, Any, Run]) -> Run:
    """The child run once started. If the parent is cancelled meanwhile, the child (which the
    store may have reserved already) is cancelled too, and waited for, before the cancel goes
    on: a child reserved by a cancelled parent never stays pending."""
    start = asyncio.ensure_future(starting)
    try:
        return await asyncio.shield(start)
    except asyncio.CancelledError:
        await asyncio.shield(_cancel_started(spawner, start))
        raise


async def _cancel_started(spawner: Spawner, start: asyncio.Future[Run]) -> None:
    try:
        child = await start
    except Exception:
        return  # it never started
    await _cancel_quietly(spawner, child.run_id, PARENT_CANCELLED)


async def _cancel_quietly(spawner: Spawner, run_id: str, reason: str) -> None:
    """Cancel a child (and wait for it) while its parent's own cancel is under way: a failure
    here (the store down) is logged, never raised in place of that cancel, which must go on."""
    try:
        await spawner.cancel(run_id, reason=reason, wait=True)
    except Exception:
        log.exception("cancelling a sub-agent failed", run_id=run_id)


@dataclass(frozen=True, slots=True)
class _SpawnRequest:
    task: str
    title: str | None
    model: str | None
    tools: list[str] | None

    @classmethod
    def parse(cls, arguments: dict[str, Any]) -> _SpawnRequest:
        task = arguments.get("task")
        if not isinstance(task, str) or not task.strip():
            raise ToolFailure("task: a non-empty string is required")
        title, model, tools = arguments.get("title"), arguments.get("model"), arguments.get("tools")
        if title is not None and not isinstance(title, str):
            raise ToolFailure("title: must be a string")
        if model is not None and not isinstance(model, str):
            raise ToolFailure("model: must be a string like provider:model")
        if tools is not None and (
            not isinstance(tools, list) or not all(isinstance(t, str) for t in tools)
        ):
            raise ToolFailure("tools: must be a list of tool names")
        return cls(task=task, title=title, model=model, tools=tools)


def _child_tools(parent: Session, requested: list[str] | None, *, may_spawn: bool) -> list[str]:
    allowed = [name for name in parent.tools if may_spawn or name != SPAWN_TOOL]
    if requested is None:
        return allowed
    # A parent's pattern (``mcp__files__*``) admits each tool it matches.
    outside = [name for name in requested if not any(fnmatchcase(name, a) for a in allowed)]
    if outside:
        raise ToolFailure(
            f"tools: {', '.join(outside)} not available to a sub-agent here "
            f"(a subset of: {', '.join(allowed) or 'none'})"
        )
    return requested


def _failure_text(outcome: ChildOutcome) -> str:
    match outcome.status:
        case "cancelled":
            return f"the sub-agent was cancelled ({outcome.error or 'no reason given'})"
        case "timeout":
            return f"the sub-agent timed out: {outcome.error}"
    return f"the sub-agent failed: {outcome.error}"


class _Follower:
    """Follows one child: forwards its events, beats, watches, and cancels it if need be."""

    def __init__(
        self, spawner: Spawner, limits: SubAgentLimits, ctx: ToolContext, child: Run
    ) -> None:
        assert ctx.emit_event is not None
        self._spawner = spawner
        self._limits = limits
        self._emit = ctx.emit_event
        self._not_counted = ctx.not_counted  # the child's waiting is not the call's time
        self._child = child
        self._queue: asyncio.Queue[RunEvent] = asyncio.Queue()
        self._timed_out: str | None = None
        # While the child waits for a person (culm.input) the watchdog sleeps: ``_waited``
        # seconds of waiting so far, ``_waiting_since`` the start of the current wait.
        self._waited = 0.0
        self._waiting_since: float | None = None

    async def run(self) -> ChildOutcome:
        pump = asyncio.create_task(self._pump(), name=f"culm-subagent-{self._child.run_id}")
        try:
            outcome = await self._follow()
        except asyncio.CancelledError:
            await asyncio.shield(
                _cancel_quietly(self._spawner, self._child.run_id, PARENT_CANCELLED)
            )
            self._completed(ChildOutcome("cancelled", PARENT_CANCELLED))
            raise
        finally:
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pump
        self._completed(outcome)
        return outcome

    async def _pump(self) -> None:
        async with contextlib.aclosing(_events(self._spawner, self._child.run_id)) as events:
            async for event in events:
                self._queue.put_nowait(event)

    async def _follow(self) -> ChildOutcome:
        started = last_event = time.monotonic()
        next_beat = started + self._limits.heartbeat
        while True:
            now = time.monotonic()
            if now >= next_beat:  # every few seconds while the child runs, busy or not
                self._beat()
                next_beat = now + self._limits.heartbeat
            wait = min(next_beat, self._watch_deadline(started, last_event)) - now
            try:
                async with asyncio.timeout(max(wait, 0)):
                    event = await self._queue.get()
            except TimeoutError:
                await self._on_quiet(started, last_event)
                continue
            last_event = time.monotonic()
            self._track_waiting(_waiting_kind(event), last_event)
            self._forward(event)
            if event.type == "input_received":
                await self._resume_child()
            if is_terminal(event):
                return self._outcome(event)

    def _track_waiting(self, kind: str, now: float) -> None:
        if kind == "sub_agent_heartbeat":
            return  # the child follows a sub-agent of its own: it tells nothing of waiting
        waits = kind in ("input_requested", "input_received")
        if waits and self._waiting_since is None:
            self._waiting_since = now
        elif not waits and self._waiting_since is not None:
            self._waited += now - self._waiting_since
            self._not_counted(now - self._waiting_since)
            self._waiting_since = None

    async def _resume_child(self) -> None:
        """The child may be ready again (answered): resume it here, beside its parent, not
        through the queue (the parent holds a room of this worker while it waits: with every
        room held so, the child would never be claimed back). A failure leaves it to the
        dispatchers."""
        try:
            await self._spawner.resume_child(self._child.run_id)
        except Exception:
            log.exception("resuming a sub-agent here failed", run_id=self._child.run_id)

    def _watch_deadline(self, started: float, last_event: float) -> float:
        if self._timed_out is not None or self._waiting_since is not None:
            return float("inf")  # cancelling (wait for the end), or the child waits for a person
        ran_until = started + self._waited + self._limits.max_duration
        return min(ran_until, last_event + self._limits.idle_timeout)

    async def _on_quiet(self, started: float, last_event: float) -> None:
        now = time.monotonic()
        if self._timed_out is not None or self._waiting_since is not None:
            return
        if now >= started + self._waited + self._limits.max_duration:
            self._timed_out = f"ran longer than {self._limits.max_duration:g} s"
        elif now >= last_event + self._limits.idle_timeout:
            self._timed_out = f"no event for {self._limits.idle_timeout:g} s"
        if self._timed_out is not None:
            await self._spawner.cancel(self._child.run_id, reason=f"timeout: {self._timed_out}")

    def _outcome(self, event: RunEvent) -> ChildOutcome:
        if self._timed_out is not None:
            return ChildOutcome("timeout", self._timed_out)
        if event.type == "complete":
            return ChildOutcome("completed", answer=event.final_message)
        if event.type == "cancelled":
            return ChildOutcome("cancelled", event.reason)
        return ChildOutcome("error", getattr(event, "message", "error"))

    def _forward(self, event: RunEvent) -> None:
        self._emit(
            SubAgentEvent(
                child_session_id=self._child.session_id,
                child_run_id=self._child.run_id,
                event=event_to_dict(event),
            )
        )

    def _beat(self) -> None:
        self._emit(
            SubAgentHeartbeat(
                child_session_id=self._child.session_id, child_run_id=self._child.run_id
            )
        )

    def _completed(self, outcome: ChildOutcome) -> None:
        self._emit(
            SubAgentCompleted(
                child_session_id=self._child.session_id,
                child_run_id=self._child.run_id,
                status=outcome.status,
                error=outcome.error,
            )
        )


async def _events(spawner: Spawner, run_id: str) -> AsyncGenerator[RunEvent]:
    async for event in spawner.subscribe(run_id):
        yield event


def _waiting_kind(event: RunEvent) -> str:
    """The type of the event at the bottom of ``event``'s sub-agent wrappers: the child waits
    for a person also while a sub-agent of its own (at any depth) does."""
    if isinstance(event, SubAgentEvent):
        return str(innermost(event)[1].get("type", ""))
    return event.type
