"""``GET /v1/workers`` and the worker and queue figures of ``GET /metrics``, over a real server
on SQLite and on PostgreSQL. Other workers are rows written through a second store on the same
database, as another process would write them."""

from __future__ import annotations

import os
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
from prometheus_client.parser import text_string_to_metric_families

import culm
from culm.runtime.ownership import boot_id, pid_namespace
from culm.runtime.roles import Role
from culm.storage.sql import SqlStore
from tests.api.conftest import Server, running_server
from tests.pgfaults import cut_off

CLUSTER_METRICS = {
    "culm_workers_alive": "gauge",
    "culm_runs_pending": "gauge",
    "culm_runs_ready": "gauge",
    "culm_runs_running": "gauge",
    "culm_runs_oldest_pending_seconds": "gauge",
    "culm_claims": "counter",
    "culm_takeovers": "counter",
    "culm_fenced_writes": "counter",
}


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'culm.db'}"
    url: str = request.getfixturevalue("postgres_head_url")
    return url


def _settings(tmp_path: Path, database_url: str, **overrides: Any) -> culm.Settings:
    return culm.Settings(home=tmp_path / "home", database_url=database_url, **overrides)


@pytest.fixture
async def other_store(database_url: str) -> AsyncIterator[SqlStore]:
    """Another process's view of the same database (opened after the server migrated it)."""
    store = SqlStore(database_url)
    yield store
    await store.aclose()


async def _get(server: Server, path: str, **params: str) -> httpx2.Response:
    async with httpx2.AsyncClient(base_url=server.url, timeout=30) as client:
        answer = await client.get(path, params=params)
    assert answer.status_code == 200, answer.text
    return answer


def _samples(text: str) -> dict[str, float]:
    """``name → value`` of every sample, and ``name → type`` checked against CLUSTER_METRICS."""
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name in CLUSTER_METRICS:
            assert family.type == CLUSTER_METRICS[family.name], family.name
        for sample in family.samples:
            found[sample.name] = sample.value
    return found


async def test_an_embedded_server_lists_itself_alive(tmp_path: Path, database_url: str) -> None:
    settings = _settings(tmp_path, database_url, worker_concurrency=5)
    async with running_server(settings) as server:
        body = (await _get(server, "/v1/workers")).json()
    [worker] = body["workers"]
    assert worker["worker_id"] == server.engine.worker_id
    assert (worker["host"], worker["pid"]) == (socket.gethostname(), os.getpid())
    assert (worker["boot_id"], worker["pid_namespace"]) == (boot_id(), pid_namespace())
    assert (worker["kind"], worker["concurrency"], worker["alive"]) == ("embedded", 5, True)
    assert worker["stopped_at"] is None
    assert body["queue"] == {"pending": 0, "ready": 0, "running": 0, "oldest_pending_age": None}


async def test_runs_without_a_worker_wait_ready_in_the_queue(
    tmp_path: Path, database_url: str
) -> None:
    settings = _settings(tmp_path, database_url)
    async with running_server(settings, role=Role.API) as server:
        async with httpx2.AsyncClient(base_url=server.url, timeout=30) as client:
            for _ in range(3):
                body = {"message": "go", "model": "scripted:demo"}
                assert (await client.post("/v1/runs", json=body)).status_code == 202
        listed = (await _get(server, "/v1/workers")).json()
        metrics = _samples((await _get(server, "/metrics")).text)
    assert listed["workers"] == []  # an API process executes nothing: it has no row
    queue = listed["queue"]
    assert (queue["pending"], queue["ready"], queue["running"]) == (3, 3, 0)
    assert queue["oldest_pending_age"] is not None and queue["oldest_pending_age"] >= 0
    assert metrics["culm_workers_alive"] == 0
    assert (metrics["culm_runs_pending"], metrics["culm_runs_ready"]) == (3, 3)
    assert metrics["culm_runs_running"] == 0
    assert metrics["culm_runs_oldest_pending_seconds"] >= queue["oldest_pending_age"]


async def test_other_workers_and_their_counters_summed(
    tmp_path: Path, database_url: str, other_store: SqlStore
) -> None:
    settings = _settings(tmp_path, database_url)
    async with running_server(settings, role=Role.API) as server:
        await other_store.start()
        for worker_id, claims, takeovers, fenced in [
            ("host-a:10:aaaa", 5, 2, 1),
            ("host-b:20:bbbb", 7, 0, 3),
            ("host-c:30:cccc", 11, 4, 0),
        ]:
            await other_store.register_worker(
                worker_id, host=worker_id.split(":")[0], pid=int(worker_id.split(":")[1]),
                boot_id=None, pid_namespace=None, kind="worker", concurrency=8,
            )  # fmt: skip
            await other_store.worker_heartbeat(
                worker_id, active_runs=1, claims=claims, takeovers=takeovers, fenced_writes=fenced
            )
        await other_store.stop_worker("host-c:30:cccc")
        current = (await _get(server, "/v1/workers")).json()["workers"]
        everyone = (await _get(server, "/v1/workers", include_stopped="true")).json()["workers"]
        metrics = _samples((await _get(server, "/metrics")).text)
    assert [w["worker_id"] for w in current] == ["host-a:10:aaaa", "host-b:20:bbbb"]
    assert all(w["alive"] and w["kind"] == "worker" for w in current)
    assert [w["worker_id"] for w in everyone] == [*(w["worker_id"] for w in current), "host-c:30:cccc"]  # fmt: skip
    stopped = everyone[-1]
    assert stopped["stopped_at"] is not None and not stopped["alive"]
    assert (stopped["claims"], stopped["takeovers"], stopped["fenced_writes"]) == (11, 4, 0)
    # Gauges count the live; counters sum every row, stopped ones too (a counter never drops
    # because a worker stopped).
    assert metrics["culm_workers_alive"] == 2
    assert metrics["culm_claims_total"] == 5 + 7 + 11
    assert metrics["culm_takeovers_total"] == 2 + 0 + 4
    assert metrics["culm_fenced_writes_total"] == 1 + 3 + 0


async def test_metrics_keep_the_process_figures(tmp_path: Path) -> None:
    settings = _settings(tmp_path, f"sqlite+aiosqlite:///{tmp_path / 'culm.db'}")
    async with running_server(settings) as server:
        metrics = _samples((await _get(server, "/metrics")).text)
    assert metrics["culm_runs_active"] == 0  # this process's, beside the database's
    assert metrics["culm_workers_alive"] == 1


async def test_include_stopped_must_be_a_boolean(tmp_path: Path) -> None:
    settings = _settings(tmp_path, f"sqlite+aiosqlite:///{tmp_path / 'culm.db'}")
    async with (
        running_server(settings) as server,
        httpx2.AsyncClient(base_url=server.url, timeout=30) as client,
    ):
        answer = await client.get("/v1/workers", params={"include_stopped": "perhaps"})
    assert answer.status_code == 422
    assert answer.json()["error"]["field"] == "include_stopped"


async def test_without_the_database_metrics_keep_the_process_figures(
    tmp_path: Path, postgres_head_url: str
) -> None:
    settings = _settings(tmp_path, postgres_head_url)
    async with (
        running_server(settings, role=Role.API) as server,
        httpx2.AsyncClient(base_url=server.url, timeout=30) as client,
    ):
        async with cut_off(postgres_head_url):
            metrics = await client.get("/metrics")
            workers = await client.get("/v1/workers")
        assert metrics.status_code == 200
        names = {family.name for family in text_string_to_metric_families(metrics.text)}
        assert "culm_runs_active" in names
        assert names.isdisjoint(CLUSTER_METRICS)  # absent, not made up
        assert workers.status_code == 503
        assert workers.json()["error"]["code"] == "storage_unavailable"
        # Back: the figures are read again at the next scrape.
        again = _samples((await _get(server, "/metrics")).text)
        assert again["culm_runs_pending"] == 0
