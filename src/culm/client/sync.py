"""``culm.SyncClient``: :class:`~culm.client.aio.Client` for code without an event loop.

It runs the async client on an event loop of its own, in a background thread, and waits for
each call; ``run_events`` is a plain iterator. Close it (``with`` or :meth:`close`).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Iterator
from concurrent.futures import Future
from typing import Any, Self, TypeVar

from culm.agents.models import Agent, AgentDefinition
from culm.api.schemas import RunDetail
from culm.client.aio import Client
from culm.client.base import Param, RetryNote, StreamEvent
from culm.client.errors import Json
from culm.domain.models import Message, MultitaskPolicy, Run, RunStatus, Session
from culm.metrics.reports import AgentMetricsList, MetricsSummary, ModelMetricsList
from culm.scheduler.models import Schedule, ScheduleRun, ScheduleSpec

T = TypeVar("T")


class SyncClient:
    """The same methods as :class:`culm.Client`, blocking."""

    def __init__(self, base_url: str | None = None, *, api_key: str | None = None) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="culm-sync-client", daemon=True
        )
        self._thread.start()
        self._client: Client = self._call(_make(base_url, api_key))
        self.base_url = self._client.base_url

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        future: Future[T] = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return future.result()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        if self._loop.is_closed():
            return
        self._call(self._client.aclose())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    # Sessions

    def create_session(self, *, agent: str | None = None, **settings: Any) -> Session:
        return self._call(self._client.create_session(agent=agent, **settings))

    def get_session(self, session_id: str) -> Session:
        return self._call(self._client.get_session(session_id))

    def list_sessions(self, *, limit: int = 100) -> list[Session]:
        return self._call(self._client.list_sessions(limit=limit))

    def delete_session(self, session_id: str) -> None:
        self._call(self._client.delete_session(session_id))

    def get_messages(self, session_id: str, *, view: str = "stored") -> list[Message]:
        return self._call(self._client.get_messages(session_id, view=view))

    # Runs

    def start_run(
        self,
        session_id: str,
        message: str,
        *,
        model: str | None = None,
        multitask: MultitaskPolicy | str = MultitaskPolicy.REJECT,
    ) -> Run:
        run = self._client.start_run(session_id, message, model=model, multitask=multitask)
        return self._call(run)

    def run(self, message: str, *, agent: str | None = None, **settings: Any) -> Run:
        return self._call(self._client.run(message, agent=agent, **settings))

    def get_run(self, run_id: str) -> RunDetail:
        return self._call(self._client.get_run(run_id))

    def list_runs(
        self,
        *,
        status: RunStatus | str | None = None,
        session_id: str | None = None,
        limit: int = 100,
    ) -> list[Run]:
        runs = self._client.list_runs(status=status, session_id=session_id, limit=limit)
        return self._call(runs)

    def wait(self, run_id: str, *, timeout: float | None = None) -> Run:
        return self._call(self._client.wait(run_id, timeout=timeout))

    def cancel(self, run_id: str, *, wait: bool = False, timeout: float = 30) -> Run:
        return self._call(self._client.cancel(run_id, wait=wait, timeout=timeout))

    def run_events(
        self, run_id: str, *, after: int = 0, on_retry: RetryNote | None = None
    ) -> Iterator[StreamEvent]:
        """Every event of the run with ``seq > after``, each once, across reconnects."""
        events = self._client.run_events(run_id, after=after, on_retry=on_retry)
        try:
            while True:
                try:
                    yield self._call(anext(events))
                except StopAsyncIteration:
                    return
        finally:
            self._call(events.aclose())

    def pending_input(self, run_id: str) -> list[Json]:
        return self._call(self._client.pending_input(run_id))

    def answer(self, run_id: str, request_id: str, **answer: Any) -> Json:
        return self._call(self._client.answer(run_id, request_id, **answer))

    # Agents

    def list_agents(self) -> list[Agent]:
        return self._call(self._client.list_agents())

    def get_agent(self, name: str) -> Agent:
        return self._call(self._client.get_agent(name))

    def put_agent(
        self, name: str, definition: AgentDefinition | None = None, **settings: Any
    ) -> Agent:
        return self._call(self._client.put_agent(name, definition, **settings))

    def delete_agent(self, name: str) -> None:
        self._call(self._client.delete_agent(name))

    # Schedules

    def list_schedules(self, *, limit: int = 100) -> list[Schedule]:
        return self._call(self._client.list_schedules(limit=limit))

    def get_schedule(self, schedule_id: str) -> Schedule:
        return self._call(self._client.get_schedule(schedule_id))

    def create_schedule(self, spec: ScheduleSpec | Json) -> Schedule:
        return self._call(self._client.create_schedule(spec))

    def update_schedule(self, schedule_id: str, change: Json) -> Schedule:
        return self._call(self._client.update_schedule(schedule_id, change))

    def delete_schedule(self, schedule_id: str) -> None:
        self._call(self._client.delete_schedule(schedule_id))

    def trigger_schedule(self, schedule_id: str) -> ScheduleRun:
        return self._call(self._client.trigger_schedule(schedule_id))

    def schedule_runs(self, schedule_id: str, *, limit: int = 100) -> list[ScheduleRun]:
        return self._call(self._client.schedule_runs(schedule_id, limit=limit))

    # Metrics

    def metrics(self, report: str, **params: Param) -> Json:
        return self._call(self._client.metrics(report, **params))

    def metrics_summary(self, **dates: Param) -> MetricsSummary:
        return self._call(self._client.metrics_summary(**dates))

    def metrics_models(self, **dates: Param) -> ModelMetricsList:
        return self._call(self._client.metrics_models(**dates))

    def metrics_agents(self, **dates: Param) -> AgentMetricsList:
        return self._call(self._client.metrics_agents(**dates))


async def _make(base_url: str | None, api_key: str | None) -> Client:
    """The client, made on the loop it will run on (its connection pool belongs to it)."""
    return Client(base_url, api_key=api_key)
