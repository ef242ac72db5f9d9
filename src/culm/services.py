"""The composition root: :class:`Engine` opens the store, the event batcher, the runtime and the
provider client on one ``AsyncExitStack``, and is culm's Python API (its sessions and runs
parts are :mod:`culm.sessions` and :mod:`culm.runs`).

    async with culm.Engine() as engine:
        session = await engine.create_session(model="scripted:demo", tools=["read"])
        run = await engine.start_run(session.session_id, "What is in the workspace?")
        async for event in engine.subscribe(run.run_id):
            print(event.type)
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from culm.agents.registry import Agents
from culm.agents.store import AgentStore
from culm.apps import App, create_app_schedules, resolve_apps
from culm.bus.factory import build_bus
from culm.context.wiring import context_settings
from culm.cost import Pricer
from culm.domain.input import InputAnswer, InputRequest
from culm.domain.models import Run, Session
from culm.domain.time import utc_now
from culm.errors import ConfigError, EngineClosedError
from culm.input.ask import AskUserTool
from culm.input.service import InputService
from culm.loop.context import ContextSettings, LoopContext, LoopLimits
from culm.loop.spend import run_budget
from culm.mcp.manager import MCPManager
from culm.metrics.pipeline import MetricsConfig, MetricsPipeline
from culm.metrics.store import MetricsStore
from culm.providers.base import Model
from culm.providers.http import model_client
from culm.providers.resolve import ModelResolver
from culm.providers.scripted import ScriptLibrary
from culm.runs import RunsAPI
from culm.runtime.batcher import EventBatcher
from culm.runtime.dispatch import Dispatcher, WorkerCounters
from culm.runtime.lease import Heartbeat
from culm.runtime.manager import RunManager
from culm.runtime.registry import RunnerRegistry
from culm.runtime.roles import Role
from culm.runtime.streams import Streams
from culm.runtime.subagents import SpawnAgentTool, SubAgentLimits, SubAgents
from culm.scheduler import testclock
from culm.scheduler.dispatch import Clock
from culm.scheduler.service import Schedules
from culm.scheduler.store import ScheduleStore
from culm.scheduler.ticker import Ticker
from culm.sessions import SessionsAPI
from culm.settings import Settings, load_settings
from culm.storage.base import Fence, QueueStats, SessionState, Store, WorkerInfo
from culm.storage.sql import SqlStore
from culm.tools import Tool, ToolRegistry, builtin_tools
from culm.tools.sandbox import sandbox_from
from culm.tracing import build_tracing

DEFAULT_GROUPS = {"read": ("read_file", "list_dir", "glob", "grep")}


class Engine(SessionsAPI, RunsAPI):
    """culm's engine: sessions, runs, live streams, cancel. Use it as an async context manager;
    leaving it drains cleanly (active runs are cancelled, or handed back by
    ``shutdown_policy``; every event is stored).

    ``role`` (:class:`~culm.runtime.roles.Role`) picks what the process does besides serving
    the API: EMBEDDED (the default) claims and executes runs and ticks schedules; API only
    reserves runs for workers; WORKER executes runs; CLI executes only the runs it starts."""

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        tools: Iterable[Tool] | None = None,
        scripts: ScriptLibrary | None = None,
        store: Store | None = None,
        clock: Clock | None = None,
        role: Role = Role.EMBEDDED,
        app: App | str | Sequence[App | str] | None = None,
    ) -> None:
        self.settings = settings or load_settings()
        self.role = role
        self.apps = resolve_apps(app, self.settings)  # the user's tools, agents, schedules
        self.agents = Agents.of(self.apps, self.settings)
        self._heartbeat: Heartbeat | None = None  # set at start, for the roles that execute
        # The schedules' time: tests pass a fake one (or, in processes, CULM_TEST_SCHEDULE_CLOCK).
        self._clock = clock or testclock.from_env() or utc_now
        self.subagents = SubAgents(
            SubAgentLimits(
                per_run=self.settings.subagents_per_run,
                total=self.settings.subagents_total,
                max_depth=self.settings.subagent_max_depth,
                idle_timeout=self.settings.subagent_idle_timeout,
                max_duration=self.settings.subagent_max_duration,
                heartbeat=self.settings.subagent_heartbeat,
            )
        )
        app_tools = [tool for a in self.apps for tool in a.tools.values()]
        extra = [SpawnAgentTool(self, self.subagents), AskUserTool(), *app_tools, *(tools or ())]
        overridden = {tool.name for tool in extra}
        self.sandbox = sandbox_from(self.settings)  # the bash tool's, checked now
        builtins = [
            t for t in builtin_tools(self.settings, self.sandbox) if t.name not in overridden
        ]
        self.mcp = MCPManager(self.settings)
        self.tools = ToolRegistry([*builtins, *extra], DEFAULT_GROUPS, sources=[self.mcp])
        self.scripts = scripts or ScriptLibrary(self.settings.scripts_dir)
        self._store = store
        self._stack: contextlib.AsyncExitStack | None = None
        self.pricer = Pricer(self.settings.price_overrides)
        self.tracing = build_tracing()  # OTLP export when OTEL_EXPORTER_OTLP_ENDPOINT is set
        self.metrics = MetricsPipeline(_metrics_config(self.settings), price=self.pricer.cost)
        self.bus = build_bus(self.settings)  # connects in start()

    # Lifecycle

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def start(self) -> None:
        settings = self.settings
        try:
            settings.home.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(
                f"CULM_HOME: cannot use {str(settings.home)!r} as culm's home ({exc.strerror})"
            ) from exc
        async with contextlib.AsyncExitStack() as stack:
            stack.push_async_callback(self.tracing.aclose)  # last: the runs' spans are ended
            store = self._store or SqlStore(settings.resolved_database_url)
            await store.start()
            stack.push_async_callback(store.aclose)
            client = model_client(settings.resolved_model_max_connections)
            stack.push_async_callback(client.aclose)
            self.store = store
            await self._start_metrics(store, stack)  # stops after the event writer below
            self.registry = RunnerRegistry()
            self.registry.observers.append(self.metrics.observe_run_events)
            self.bus.bind(self.registry.deliver, self.registry.bus_changed)
            await self.bus.start()
            stack.push_async_callback(self.bus.aclose)  # after the event writer: last events out
            self.registry.observers.append(self.bus.publish)
            batcher = EventBatcher(
                store,
                publish=self.registry.publish,
                linger=settings.resolved_event_flush_interval,
                max_batch=settings.event_batch_size,
                backlog_limit=settings.event_backlog_limit,
                retry_window=settings.storage_retry_window,
                on_unavailable=lambda run_ids, exc: self.runs.storage_unavailable(run_ids, exc),
                on_rejected=lambda attempts: self.runs.rejected(attempts),
            )
            batcher.start()
            stack.push_async_callback(batcher.aclose)
            self.batcher = batcher
            self.models = ModelResolver(settings, client, self.scripts)
            self.streams = Streams(
                store, self.registry, batcher, settings.subscriber_queue_size, self.bus
            )
            stack.push_async_callback(self.streams.reads.aclose)  # before the store closes
            self.runs = RunManager(
                store=store,
                registry=self.registry,
                batcher=batcher,
                settings=settings,
                context_factory=self._loop_context,
                runs_own_runs=self.role is Role.CLI,
                bus=self.bus,
            )
            self.inputs = InputService(
                store,
                self.registry,
                self.runs,
                local_bus=not self.bus.crosses_processes,
                resume_answered=self.role is Role.CLI,
                lease_seconds=settings.lease_seconds,
            )
            await self._start_heartbeat(store, stack)  # closes after the runs are done
            await self.mcp.start(stack)  # before the runs: it closes after them
            await self.runs.start(stack)
            self._start_dispatcher(store)  # the runs stop it first when they close
            await self._start_schedules(store, stack)
            self._stack = stack.pop_all()
        if self.role is not Role.CLI:  # the apps' schedules (`culm run` only runs)
            try:
                await create_app_schedules(self.schedules, self.apps)
            except BaseException:
                await self.aclose()
                raise

    async def _start_heartbeat(self, store: Store, stack: contextlib.AsyncExitStack) -> None:
        """Leases, sweeper and ``workers`` row, for every role that executes runs."""
        if self.role is Role.API:
            return
        embedded = isinstance(store, SqlStore) and store.dialect.name == "sqlite"
        heartbeat = Heartbeat(
            store,
            owner=self.runs.owner,
            kind=self.role.worker_kind,
            settings=self.settings,
            holder=self.runs.lease_holder(),
            counters=self.runs.counters,
            fast_restart=embedded,  # distributed (PostgreSQL): leases only, no pid shortcut
            bus=self.bus,  # cancel notices for this process's runs
        )
        await heartbeat.start()
        stack.push_async_callback(heartbeat.aclose)
        self._heartbeat = heartbeat

    def _start_dispatcher(self, store: Store) -> None:
        """Claim ready runs from the queue (roles EMBEDDED and WORKER)."""
        if not self.role.claims:
            return
        settings = self.settings
        heartbeat = self._heartbeat
        dispatcher = Dispatcher(
            store,
            owner=self.runs.owner,
            concurrency=settings.worker_concurrency,
            lease_seconds=settings.lease_seconds,
            poll_seconds=settings.claim_poll_seconds,
            active=lambda: len(self.registry),
            held=self.registry.run_ids,
            launch=self.runs.launch,
            counters=self.runs.counters,
            peers=lambda: heartbeat.claimers if heartbeat is not None else (),
        )
        self.runs.dispatcher = dispatcher
        dispatcher.start()

    @property
    def worker_id(self) -> str:
        """This process's worker id (the owner of the runs it executes)."""
        return self.runs.owner

    @property
    def counters(self) -> WorkerCounters:
        """Claims, takeovers and fenced writes of this process (cumulative)."""
        return self.runs.counters

    async def aclose(self) -> None:
        self.close_streams()
        stack, self._stack = self._stack, None
        if stack is not None:
            await stack.aclose()

    async def drain(self) -> None:
        """Stop taking runs and end the active ones by ``shutdown_policy`` (after
        ``shutdown_grace``): cancelled, with their terminal events delivered to open streams,
        or handed back for the next start. Leaving the engine drains too."""
        if self._stack is not None:
            await self._ticker.aclose()  # no new fires while the runs end
            await self.runs.aclose()

    def close_streams(self) -> None:
        """End every open event stream (runs go on): a server calls this when it starts to stop,
        so clients see their streams end cleanly instead of being cut."""
        if self._stack is not None:
            self.streams.close()

    async def check_store(self) -> str | None:
        """None while the store works, else why it does not (for a health check)."""
        if self._stack is None or not isinstance(self.store, SqlStore):
            return None
        return await self.store.check()

    def wakeups_problem(self) -> str | None:
        """None while this process's wake-up listener works (or it has none), else why not."""
        if self._stack is None or not isinstance(self.store, SqlStore):
            return None
        return self.store.wakeups_problem()

    async def _start_metrics(self, store: Store, stack: contextlib.AsyncExitStack) -> None:
        """The metrics pipeline, on the engine's SQL database (another store runs without)."""
        if not isinstance(store, SqlStore):
            return
        metrics_store = MetricsStore(store.write, store.read_connection, store.dialect.name)
        await self.metrics.start(
            metrics_store, stack, model_of=self._run_model, lookup=store.get_run
        )

    def _run_model(self, run_id: str) -> str | None:
        runner = self.registry.get(run_id)
        return runner.run.model if runner is not None else None

    async def _start_schedules(self, store: Store, stack: contextlib.AsyncExitStack) -> None:
        if not isinstance(store, SqlStore):
            raise ConfigError("schedules need culm's SQL store (SQLite or PostgreSQL)")
        schedule_store = ScheduleStore(store)
        self._ticker = Ticker(
            schedule_store,
            self,
            self._clock,
            interval=self.settings.schedule_tick,
            grace=self.settings.schedule_misfire_grace,
            enabled=self.settings.scheduler and self.role.ticks,
        )
        self.schedules = Schedules(schedule_store, self._ticker, self, self._clock)
        self.agents.bind(AgentStore(store))
        await self._ticker.start(stack)

    def _require_open(self) -> None:
        if self._stack is None:
            raise EngineClosedError("the engine is not started (use `async with Engine()`)")

    # People in the loop (culm.input)

    async def pending_input(self, run_id: str) -> list[InputRequest]:
        """The open input requests of the run and of its sub-agent runs (each names its run)."""
        self._require_open()
        return await self.inputs.pending(run_id)

    async def respond(
        self,
        run_id: str,
        request_id: str,
        *,
        approve: bool | None = None,
        reason: str | None = None,
        arguments: dict[str, Any] | None = None,
        answer: str | None = None,
    ) -> InputRequest:
        """Answer an input request: ``approve`` (``reason``, edited ``arguments``) or
        ``answer``. The same answer again is a no-op; another raises InputConflictError."""
        self._require_open()
        given = InputAnswer(approve=approve, reason=reason, arguments=arguments, answer=answer)
        return await self.inputs.respond(run_id, request_id, given)

    async def resume_child(self, run_id: str) -> None:
        """Resume here a sub-agent an answer made ready (its parent executes here)."""
        await self.inputs.resume_here(run_id)

    # Workers

    async def list_workers(self, *, include_stopped: bool = False) -> list[WorkerInfo]:
        """The processes that execute runs on this database (alive judged by the lease), and
        with ``include_stopped`` those that stopped cleanly."""
        self._require_open()
        return await self.store.list_workers(
            lease_seconds=self.settings.lease_seconds, include_stopped=include_stopped
        )

    async def queue_stats(self) -> QueueStats:
        """Pending, ready and running runs, and the oldest pending run's age (database time)."""
        self._require_open()
        return await self.store.queue_stats()

    # Wiring for the loop

    async def _loop_context(
        self,
        run: Run,
        loaded: SessionState,
        emit: Any,
        append: Any,
    ) -> LoopContext:
        session = loaded.session
        settings = self.settings
        model = self.models.resolve(run.model)
        fence = (self.runs.owner, run.epoch)
        return LoopContext(
            session=session,
            model=model,
            tools={tool.name: tool for tool in await self.tools.resolve_for(session)},
            workspace=Path(session.workspace),
            limits=LoopLimits(
                max_rounds=session.max_rounds or settings.max_rounds,
                max_tool_calls_per_round=settings.max_tool_calls_per_round,
                tool_timeout=session.tool_timeout or settings.tool_timeout,
                model_max_attempts=settings.model_max_attempts,
                retry_base_delay=settings.model_retry_base_delay,
                retry_max_delay=settings.model_retry_max_delay,
                stream_idle_timeout=settings.stream_idle_timeout,
            ),
            emit=emit,
            append_messages=append,
            congested=self.batcher.congested,
            room=self.batcher.room,
            budget_limit=session.metadata.get("budget_limit"),
            run_id=run.run_id,
            context=self._context_settings(session, model, fence, loaded=loaded),
            resolve_input=lambda messages, ids: self.store.resolve_input(
                run.run_id, fence=fence, messages=messages, request_ids=ids
            ),
            price=self.pricer.cost,
            budget=run_budget(run, session),
            tracing=self.tracing.for_run(run, session, session.agent),
        )

    def _context_settings(
        self,
        session: Session,
        model: Model,
        fence: Fence | None,
        *,
        loaded: SessionState | None = None,
    ) -> ContextSettings:
        return context_settings(
            self.settings, self.models, self.store, session, model, fence, loaded=loaded
        )


def _metrics_config(settings: Settings) -> MetricsConfig:
    return MetricsConfig(
        queue_size=settings.metrics_queue_size,
        batch_size=settings.metrics_batch_size,
        flush_interval=settings.metrics_flush_interval,
        retention_days=settings.metrics_retention_days,
        maintenance_interval=settings.metrics_maintenance_interval,
    )
