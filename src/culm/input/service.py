"""The engine's side of people in the loop: list a run's open requests, answer one, and check a
session's input settings.

An answer is stored with its ``input_received`` event by the store (the run is waiting: no
process holds it), then handed to the observers (the metrics, the bus) and to this process's
followers. Once no request is open the store makes the run ready; a worker claims it. A
``culm run`` process (it claims no ready runs) claims its answered run itself and resumes it
here.
"""

from __future__ import annotations

from collections.abc import Sequence

from culm.domain.events import RunEvent
from culm.domain.input import InputAnswer, InputRequest
from culm.domain.models import Run
from culm.errors import NotFoundError
from culm.runtime import waiting
from culm.runtime.manager import RunManager
from culm.runtime.registry import RunnerRegistry
from culm.storage.base import Store

# How deep GET /v1/runs/{run_id}/input looks for the requests of sub-agents below the run.
MAX_DEPTH = 8


class InputService:
    def __init__(
        self,
        store: Store,
        registry: RunnerRegistry,
        runs: RunManager,
        *,
        local_bus: bool,
        resume_answered: bool = False,
        lease_seconds: float = 10.0,
    ) -> None:
        self._store = store
        self._registry = registry
        self._runs = runs
        self._local_bus = local_bus
        # Role CLI: claims and launches a run made ready by an answer given in this process.
        self._resume_answered = resume_answered
        self._lease_seconds = lease_seconds

    async def pending(self, run_id: str) -> list[InputRequest]:
        """The open requests of the run and of the sub-agent runs below it (oldest first),
        each naming its ``run_id``: a child's request is answered on the child's run id."""
        await self._require(run_id)
        waiting = await self._store.waiting_below(run_id, MAX_DEPTH)
        return await self._store.list_input(waiting) if waiting else []

    async def respond(self, run_id: str, request_id: str, answer: InputAnswer) -> InputRequest:
        request, events = await self._store.answer_input(run_id, request_id, answer)
        if events:
            self._announce(events)
            if self._resume_answered:
                await self.resume_here(run_id)
        return request

    async def resume_here(self, run_id: str) -> None:
        """Claim the run if an answer made it ready, and resume it in this process, whatever
        room its dispatcher has: a sub-agent whose parent executes here (the parent holds its
        room while it waits on the child: through the queue, a full worker would never take
        the child back), or ``culm run``'s own run. Nothing when it is not ready (a request
        still open) or another process claimed it first."""
        claimed = await self._store.claim_runs(
            self._runs.owner, limit=1, lease_seconds=self._lease_seconds, only=[run_id]
        )
        for run in claimed:
            self._runs.launch(run)

    def _announce(self, events: Sequence[RunEvent]) -> None:
        waiting.announce(self._registry, events, local_bus=self._local_bus)

    async def counts(self) -> list[tuple[str, str, int]]:
        return await self._store.input_counts()

    async def _require(self, run_id: str) -> Run:
        run = await self._store.get_run(run_id)
        if run is None:
            raise NotFoundError("run", run_id)
        return run
