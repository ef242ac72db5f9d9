"""A real culm server whose proxy forwards to a fake provider, and the records it writes.

``proxy.openai_url`` / ``proxy.anthropic_url`` are the base URLs an SDK client is given;
:meth:`Proxy.records` waits (bounded) until the proxy has completed that many requests, flushes
the metrics and returns their records, oldest first.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest

import culm
from culm.metrics.events import MetricsEvent, RequestCompleted
from culm.metrics.reports import ForwardRequestMetrics
from tests.api.conftest import Server, running_server
from tests.proxy.upstream import ProxyUpstream

CLIENT_OPENAI_KEY = "sk-client-openai-0001"
CLIENT_ANTHROPIC_KEY = "sk-ant-client-0002"


@dataclass
class Completions:
    """A metrics listener: the ``request_completed`` events, as they are emitted."""

    events: list[RequestCompleted] = field(default_factory=list)
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    def __call__(self, event: MetricsEvent) -> None:
        if isinstance(event, RequestCompleted):
            self.events.append(event)
            self._changed.set()

    async def wait(self, count: int, timeout: float = 10) -> None:
        async with asyncio.timeout(timeout):
            while len(self.events) < count:
                self._changed.clear()
                await self._changed.wait()


@dataclass
class Proxy:
    server: Server
    upstream: ProxyUpstream
    completions: Completions
    _returned: int = 0

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def openai_url(self) -> str:
        return f"{self.server.url}/openai/v1"

    @property
    def anthropic_url(self) -> str:
        return f"{self.server.url}/anthropic"

    async def records(self, count: int = 1) -> list[ForwardRequestMetrics]:
        """The records of the next ``count`` completed requests (after those already returned),
        in the order they ended; a further completion fails the test."""
        seen = self._returned
        await self.completions.wait(seen + count)
        metrics = self.server.engine.metrics
        await metrics.flush()
        stored = {r.request_id: r for r in (await metrics.queries.forward_requests()).requests}
        ended = [event.request_id for event in self.completions.events]
        assert len(ended) == seen + count, f"{len(ended) - seen} requests completed, not {count}"
        assert set(stored) == set(ended)
        self._returned += count
        return [stored[request_id] for request_id in ended[seen:]]

    async def record(self) -> ForwardRequestMetrics:
        (only,) = await self.records(1)
        return only

    def openai(self, **options: Any) -> openai.AsyncOpenAI:
        options.setdefault("api_key", CLIENT_OPENAI_KEY)
        options.setdefault("max_retries", 0)
        return openai.AsyncOpenAI(base_url=self.openai_url, **options)

    def anthropic(self, **options: Any) -> anthropic.AsyncAnthropic:
        options.setdefault("api_key", CLIENT_ANTHROPIC_KEY)
        options.setdefault("max_retries", 0)
        return anthropic.AsyncAnthropic(base_url=self.anthropic_url, **options)


ProxyFactory = Callable[..., contextlib.AbstractAsyncContextManager[Proxy]]


@pytest.fixture
async def upstream() -> AsyncIterator[ProxyUpstream]:
    async with ProxyUpstream() as fake:
        yield fake


@pytest.fixture
def make_proxy(upstream: ProxyUpstream, tmp_path: Path) -> ProxyFactory:
    """``async with make_proxy(api_key=...) as proxy``: a server with these settings; both
    providers point at ``upstream``, without server keys unless given."""

    @contextlib.asynccontextmanager
    async def factory(**overrides: Any) -> AsyncIterator[Proxy]:
        values: dict[str, Any] = {
            "home": tmp_path / "home",
            "openai_base_url": f"{upstream.url}/v1",
            "anthropic_base_url": upstream.url,
            "openai_api_key": None,
            "anthropic_api_key": None,
            **overrides,
        }
        async with running_server(culm.Settings(**values)) as server:
            completions = Completions()
            server.engine.metrics.add_listener(completions)
            yield Proxy(server, upstream, completions)

    return factory


@pytest.fixture
async def proxy(make_proxy: ProxyFactory) -> AsyncIterator[Proxy]:
    async with make_proxy() as running:
        yield running
