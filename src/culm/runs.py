"""The runs part of culm's Python API (:class:`~culm.services.Engine` inherits it): start runs
(or queue them), read and list them, cancel them, wait for them, and follow their events."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from typing import TYPE_CHECKING, Any

from culm.cost.runs import priced, with_descendants
from culm.domain.models import MultitaskPolicy, Run, RunStatus, RunTrigger, Session, Usage
from culm.domain.time import new_id
from culm.errors import NotFoundError

if TYPE_CHECKING:
    from culm.cost import Pricer
    from culm.domain.events import RunEvent
    from culm.providers.resolve import ModelResolver
    from culm.runtime.manager import RunManager
    from culm.runtime.registry import RunnerRegistry
    from culm.runtime.streams import Streams
    from culm.storage.base import Store


class RunsAPI:
    """Runs, on the engine's store, runtime, streams and models (set by the engine)."""

    store: Store
    models: ModelResolver
    pricer: Pricer
    registry: RunnerRegistry
    runs: RunManager
    streams: Streams

    if TYPE_CHECKING:

        def _require_open(self) -> None: ...

        async def get_session(self, session_id: str) -> Session: ...

        async def _new_session(self, **settings: Any) -> Session: ...

    async def start_run(
        self,
        session_id: str,
        message: str,
        *,
        model: str | None = None,
        multitask: MultitaskPolicy | str = MultitaskPolicy.REJECT,
        trigger: RunTrigger | str = RunTrigger.API,
        parent_run_id: str | None = None,
        max_cost_usd: float | None = None,
        max_tokens: int | None = None,
        traceparent: str | None = None,
    ) -> Run:
        """Start a run on a session (or queue it, by ``multitask``). Returns the run record;
        raises AlreadyRunningError when the session is busy and ``multitask`` is ``reject``.
        ``max_cost_usd`` / ``max_tokens``: this run's budget (default: the session's);
        ``traceparent``: the W3C trace context its spans continue."""
        session = await self.get_session(session_id)
        return await self._start_on(
            session,
            message,
            model,
            multitask,
            trigger,
            parent_run_id,
            traceparent,
            max_cost_usd=max_cost_usd,
            max_tokens=max_tokens,
        )

    async def _start_on(
        self,
        session: Session,
        message: str,
        model: str | None = None,
        multitask: MultitaskPolicy | str = MultitaskPolicy.REJECT,
        trigger: RunTrigger | str = RunTrigger.API,
        parent_run_id: str | None = None,
        traceparent: str | None = None,
        *,
        max_cost_usd: float | None = None,
        max_tokens: int | None = None,
        new: bool = False,
    ) -> Run:
        """:meth:`start_run` on ``session`` as the caller has it (read, or, with ``new``, not
        yet stored: stored with the run); ``max_cost_usd`` / ``max_tokens``: the run's budget
        (None: the session's)."""
        model_name = model or session.model
        self.models.resolve(model_name)
        run = Run(
            run_id=new_id(),
            session_id=session.session_id,
            parent_run_id=parent_run_id,
            model=model_name,
            trigger=RunTrigger(trigger),
            input=message,
            agent=session.agent,
            traceparent=traceparent,
            max_cost_usd=max_cost_usd,
            max_tokens=max_tokens,
        )
        new_session = session if new else None
        return await self.runs.start_run(run, MultitaskPolicy(multitask), session=new_session)

    async def run(self, message: str, **session: Any) -> Run:
        """Headless: create a session (``model``, ``tools`` … as for create_session) and start
        a run on it (``trigger``, ``traceparent``: as for start_run)."""
        trigger = session.pop("trigger", RunTrigger.API)
        traceparent = session.pop("traceparent", None)
        # The session is stored with the run, in one write: none is left without its run.
        new = await self._new_session(**session)
        return await self._start_on(
            new, message, trigger=trigger, traceparent=traceparent, new=True
        )

    async def get_run(self, run_id: str, *, descendants_cost: bool = False) -> Run:
        """The run, with live fields from its runner when it is active in this process, and its
        cost (with ``descendants_cost``, also that of its sub-agents': ``culm.cost.runs``)."""
        self._require_open()
        run = await self.store.get_run(run_id)
        if run is None:
            raise NotFoundError("run", run_id)
        run = priced(run, self.pricer)
        if descendants_cost:
            run = await with_descendants(run, self.pricer, self._children)
        runner = self.registry.get(run_id)
        if runner is None or run.status.is_terminal:
            return run
        live = runner.liveness
        return run.model_copy(
            update={
                "status": runner.status if runner.status is not RunStatus.PENDING else run.status,
                "last_seq": live.last_seq,
                "last_event_at": live.last_event_at,
                "last_tool_name": live.last_tool_name,
                "last_tool_phase": live.last_tool_phase,
                "round_count": live.round_count,
            }
        )

    async def get_children(self, run_id: str) -> list[Run]:
        """The runs a run spawned (its sub-agents), oldest first."""
        await self.get_run(run_id)
        children = await self.store.list_runs(parent_run_id=run_id, limit=10_000)
        return sorted(children, key=lambda run: run.created_at)

    async def usage_with_descendants(self, run_id: str) -> Usage:
        """The run's usage plus that of every sub-agent below it."""
        total = (await self.get_run(run_id)).usage
        for child in await self.get_children(run_id):
            total += await self.usage_with_descendants(child.run_id)
        return total

    async def list_runs(
        self,
        *,
        session_id: str | None = None,
        status: RunStatus | str | None = None,
        trigger: RunTrigger | str | None = None,
        model: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[Run]:
        """Newest first; ``offset`` pages through what the filters match."""
        self._require_open()
        found = await self.store.list_runs(
            session_id=session_id,
            status=RunStatus(status) if status else None,
            trigger=RunTrigger(trigger) if trigger else None,
            model=model,
            limit=limit,
            offset=offset,
        )
        return [priced(run, self.pricer) for run in found]

    async def _children(self, run_id: str) -> list[Run]:
        return await self.store.list_runs(parent_run_id=run_id, limit=10_000)

    async def cancel(
        self,
        run_id: str,
        *,
        reason: str = "cancelled by request",
        wait: bool = False,
        timeout: float | None = None,
    ) -> Run:
        """Cancel a run (idempotent). With ``wait``, return once it and every sub-agent run
        below it are terminal."""
        self._require_open()
        run = await self.runs.cancel(run_id, reason=reason)
        if wait:
            async with asyncio.timeout(timeout):
                return await self.runs.wait_tree(run_id, reason=reason)
        return run

    async def wait(self, run_id: str, *, timeout: float | None = None) -> Run:
        """The run once terminal; raises TimeoutError after ``timeout`` seconds."""
        run = await self.get_run(run_id)
        if run.status.is_terminal:
            return run  # also with timeout=0
        async with asyncio.timeout(timeout):
            return priced(await self.runs.wait(run_id), self.pricer)

    async def check_run(self, run_id: str) -> None:
        """Raise :class:`NotFoundError` unless the run exists: what a stream checks before it
        begins (one store read for all the streams of the run that begin together)."""
        self._require_open()
        await self.streams.check_run(run_id)

    def subscribe(self, run_id: str, *, after: int = 0) -> AsyncGenerator[RunEvent]:
        """Every event of the run with ``seq > after``, in order, then live; ends after the
        terminal event."""
        self._require_open()
        return self.streams.run_events(run_id, after=after)

    def subscribe_batches(self, run_id: str, *, after: int = 0) -> AsyncGenerator[list[RunEvent]]:
        """:meth:`subscribe`, in the batches events become available in (for servers that write
        a batch to a client at once)."""
        self._require_open()
        return self.streams.run_event_batches(run_id, after=after)

    def subscribe_session(self, session_id: str) -> AsyncGenerator[RunEvent]:
        """The session's replay cache, then live events of all its runs. Never ends by itself."""
        self._require_open()
        return self.streams.session_events(session_id)
