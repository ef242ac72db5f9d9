"""Fixtures shared by the whole suite: the external services (PostgreSQL, Redis).

A test that needs a service skips when it is unreachable, except under ``CI=true``, where it
fails: CI must never pass by skipping the distributed backends.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, NoReturn

import pytest
import sqlalchemy as sa

from culm.storage.sql import SqlStore
from tests.pgdatabases import HeadDatabases, connect

CI = os.environ.get("CI", "").lower() in {"true", "1"}

POSTGRES_URL = os.environ.get(
    "CULM_TEST_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
)
REDIS_URL = os.environ.get("CULM_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def service_unavailable(service: str, url: str, exc: BaseException) -> NoReturn:
    """Skip the test, or fail it under CI, because ``service`` at ``url`` is unreachable."""
    message = f"{service} at {url} is unreachable ({type(exc).__name__}: {exc})"
    if CI:
        pytest.fail(f"{message}; CI=true requires it (start it, see .ci/run)", pytrace=False)
    pytest.skip(message)


async def _admin_connection(url: sa.URL) -> Any:
    import asyncpg

    try:
        return await connect(url)
    except (OSError, asyncpg.PostgresError) as exc:
        error = exc
    service_unavailable("PostgreSQL", url.render_as_string(hide_password=True), error)


@pytest.fixture
async def postgres_url() -> AsyncIterator[str]:
    """The URL of a fresh, empty PostgreSQL database, dropped after the test.

    Each test gets its own database (created on the server of ``CULM_TEST_POSTGRES_URL``), so
    tests never see each other's rows and can run in parallel with other checkouts.
    """
    admin_url = sa.make_url(POSTGRES_URL)
    admin = await _admin_connection(admin_url)
    name = f"culm_test_{uuid.uuid4().hex[:16]}"
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield admin_url.set(database=name).render_as_string(hide_password=False)
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


_HEAD_DATABASES = HeadDatabases()  # this process's


@pytest.fixture
async def postgres_head_url() -> AsyncIterator[str]:
    """The URL of a fresh PostgreSQL database with the engine's schema at the head revision and
    no rows, for the test alone (``tests/pgdatabases.py``: a copy of a database a store start
    made, or a finished test's database emptied back to that state). ``postgres_url`` is the
    empty database, for what tests the first start or the migrations themselves.
    """
    admin_url = sa.make_url(POSTGRES_URL)
    admin = await _admin_connection(admin_url)
    try:
        name = await _HEAD_DATABASES.take(admin, admin_url)
        try:
            yield admin_url.set(database=name).render_as_string(hide_password=False)
        finally:
            await _HEAD_DATABASES.give_back(admin, admin_url, name)
    finally:
        await admin.close()


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Drop this process's template and spare databases (none where no test asked for one)."""
    if _HEAD_DATABASES.holds_any:
        asyncio.run(_drop_head_databases())


async def _drop_head_databases() -> None:
    admin = await _admin_connection(sa.make_url(POSTGRES_URL))
    try:
        await _HEAD_DATABASES.aclose(admin)
    finally:
        await admin.close()


@pytest.fixture
async def redis_url() -> str:
    """The URL of the test Redis server (shared: use unique key names)."""
    return await reachable_redis()


async def reachable_redis() -> str:
    """The shared test Redis's URL (skipped, or failed under CI, when it does not answer)."""
    import redis.asyncio as redis

    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=5)
    try:
        await client.ping()
        return REDIS_URL
    except (OSError, redis.RedisError) as exc:
        error = exc
    finally:
        await client.aclose()
    service_unavailable("Redis", REDIS_URL, error)


# The engine's store, started with its migrations applied on a fresh database: per backend, and
# parametrized over both (a store conformance test asks for ``store``).
BACKENDS = ["sqlite", "postgres"]


async def _started(url: str) -> AsyncIterator[SqlStore]:
    store = SqlStore(url)
    await store.start()
    try:
        yield store
    finally:
        await store.aclose()


@pytest.fixture
async def sqlite_store(tmp_path: Path) -> AsyncIterator[SqlStore]:
    async for store in _started(f"sqlite+aiosqlite:///{tmp_path / 'culm.db'}"):
        yield store


@pytest.fixture
async def postgres_store(postgres_head_url: str) -> AsyncIterator[SqlStore]:
    async for store in _started(postgres_head_url):
        yield store


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest) -> SqlStore:
    """A started store with migrations applied, on a fresh database of the backend."""
    result: SqlStore = request.getfixturevalue(f"{request.param}_store")
    return result


# The backend of the engines a test builds. tests/runtime, tests/contract and tests/api use it on
# every test (an autouse fixture in their conftest), so the same test bodies run on both.
@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """``sqlite`` or ``postgres``: the database of every engine the test builds.

    On ``postgres`` ``CULM_DATABASE_URL`` names a fresh database (``postgres_head_url``) for the whole
    test, so every ``culm.Settings`` it builds, and every culm process it starts, shares it; on
    ``sqlite`` it is unset: each engine keeps its SQLite file under its ``CULM_HOME``. An explicit
    ``database_url=`` still wins. A test inherently of one backend says so with
    ``@pytest.mark.backends("sqlite")`` (and a comment why): its other variant is deselected.
    """
    if request.param == "postgres":
        monkeypatch.setenv("CULM_DATABASE_URL", request.getfixturevalue("postgres_head_url"))
    else:
        monkeypatch.delenv("CULM_DATABASE_URL", raising=False)
    return str(request.param)


@pytest.fixture
def database_url(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A database URL of the test's backend: its fresh PostgreSQL database, or a SQLite file."""
    if backend == "postgres":
        url: str = request.getfixturevalue("postgres_head_url")
        return url
    return f"sqlite+aiosqlite:///{tmp_path / 'culm.db'}"


LONG_MARKERS = ("distributed", "slow")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Deselect the variants of ``@pytest.mark.backends(...)`` tests on other backends; run the
    modules of long tests first."""
    _deselect_other_backends(config, items)
    _long_modules_first(items)


def _long_modules_first(items: list[pytest.Item]) -> None:
    """Move every module holding a ``distributed`` or ``slow`` test to the front, whole and in
    order (its module-scoped fixtures still start once): on ``-n 2`` a long test that comes
    last keeps one worker busy while the other has nothing left to do."""
    long = {item.path for item in items if any(item.get_closest_marker(m) for m in LONG_MARKERS)}
    items.sort(key=lambda item: item.path not in long)  # stable: the order within each part


def _deselect_other_backends(config: pytest.Config, items: list[pytest.Item]) -> None:
    kept: list[pytest.Item] = []
    deselected: list[pytest.Item] = []
    for item in items:
        marker = item.get_closest_marker("backends")
        callspec = getattr(item, "callspec", None)
        param = callspec.params.get("backend") if callspec is not None else None
        if marker is not None and param is not None and param not in marker.args:
            deselected.append(item)
        else:
            kept.append(item)
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = kept
