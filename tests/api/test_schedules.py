"""The schedule routes over a real server: shapes, status codes, and 422s that name the field."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx2
import pytest

import culm
from tests.api.conftest import Server, running_server
from tests.scheduler.conftest import FakeClock

BODY: dict[str, Any] = {
    "name": "weekday digest",
    "enabled": True,
    "timezone": "Europe/Paris",
    "trigger": {"type": "cron", "expr": "0 9 * * 1-5"},
    "run_config": {
        "message": "Summarize",
        "agent": None,
        "model": "scripted:echo",
        "system_prompt": None,
        "tools": ["read"],
        "workspace": None,
    },
    "misfire_policy": "run_once",
    "overlap_policy": "skip",
}
STATE = {
    "schedule_id",
    "created_at",
    "updated_at",
    "anchor_at",
    "next_fire_at",
    "last_success_at",
    "last_failure_at",
    "last_error",
    "consecutive_failures",
    "catch_up_limit",
}


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(datetime(2026, 11, 23, 8, 0, tzinfo=UTC))


@pytest.fixture
async def server(tmp_path: Path, clock: FakeClock) -> AsyncIterator[Server]:
    settings = culm.Settings(home=tmp_path / "home", schedule_tick=3600)
    async with running_server(settings, clock=clock) as running:
        yield running


@pytest.fixture
async def client(server: Server) -> AsyncIterator[httpx2.AsyncClient]:
    async with httpx2.AsyncClient(base_url=server.url, timeout=30) as client:
        yield client


async def test_schedule_lifecycle(
    client: httpx2.AsyncClient, server: Server, clock: FakeClock
) -> None:
    created = await client.post("/v1/schedules", json=BODY)
    assert created.status_code == 201, created.text
    schedule = created.json()
    assert set(schedule) == set(BODY) | STATE
    assert {key: schedule[key] for key in BODY} == BODY
    assert schedule["next_fire_at"] == "2026-11-24T08:00:00Z"
    assert schedule["consecutive_failures"] == 0 and schedule["last_success_at"] is None
    schedule_id = schedule["schedule_id"]
    assert (await client.get(f"/v1/schedules/{schedule_id}")).json() == schedule
    listed = (await client.get("/v1/schedules", params={"limit": 10})).json()
    assert [s["schedule_id"] for s in listed["schedules"]] == [schedule_id]

    clock.set(datetime(2026, 11, 24, 8, 0, 2, tzinfo=UTC))
    await server.engine.schedules.tick()
    fires = await _settled(client, schedule_id, 1)
    [fire] = fires
    assert set(fire) == {
        "schedule_id",
        "scheduled_for",
        "status",
        "run_id",
        "manual",
        "started_at",
        "completed_at",
        "error",
        "dispatch_lag_ms",
    }
    assert fire["scheduled_for"] == "2026-11-24T08:00:00Z"
    assert fire["status"] == "success" and fire["dispatch_lag_ms"] == 2000
    run = (await client.get(f"/v1/runs/{fire['run_id']}")).json()
    assert run["trigger"] == "schedule"

    paused = await client.patch(f"/v1/schedules/{schedule_id}", json={"enabled": False})
    assert paused.status_code == 200
    assert paused.json()["enabled"] is False and paused.json()["next_fire_at"] is None

    triggered = await client.post(f"/v1/schedules/{schedule_id}/trigger")
    assert triggered.status_code == 202
    # Started at once: running, or already done (the run is quick, and the fire is read back
    # after it started: the rehearsal saw it done once). Either way not queued.
    assert triggered.json()["manual"] is True
    assert triggered.json()["status"] in {"running", "success"}
    fires = await _settled(client, schedule_id, 2)
    assert fires[0]["manual"] is True and fires[0]["status"] == "success"

    assert (await client.delete(f"/v1/schedules/{schedule_id}")).status_code == 204
    for method, path in [
        ("GET", f"/v1/schedules/{schedule_id}"),
        ("PATCH", f"/v1/schedules/{schedule_id}"),
        ("DELETE", f"/v1/schedules/{schedule_id}"),
        ("POST", f"/v1/schedules/{schedule_id}/trigger"),
        ("GET", f"/v1/schedules/{schedule_id}/runs"),
    ]:
        response = await client.request(method, path, json={} if method == "PATCH" else None)
        assert response.status_code == 404, (method, path)
        assert response.json()["error"]["code"] == "not_found"


async def _settled(client: httpx2.AsyncClient, schedule_id: str, count: int) -> list[Any]:
    async with asyncio.timeout(10):
        while True:
            fires = (await client.get(f"/v1/schedules/{schedule_id}/runs")).json()["runs"]
            if len(fires) == count and all(f["status"] not in ("queued", "running") for f in fires):
                return list(fires)
            await asyncio.sleep(0.02)


@pytest.mark.parametrize(
    ("change", "field", "words"),
    [
        ({"trigger": {"type": "cron", "expr": "0 9 * *"}}, "trigger.expr", "expected 5 fields"),
        ({"trigger": {"type": "cron", "expr": "0 9 * * 9"}}, "trigger.expr", "Bad day-of-week"),
        ({"trigger": {"type": "cron"}}, "trigger.expr", "Field required"),
        ({"trigger": {"type": "interval", "every_seconds": 0}}, "trigger.every_seconds", ""),
        ({"trigger": {"type": "hourly"}}, "trigger", ""),
        ({"timezone": "Europe/Atlantis"}, "timezone", "unknown time zone"),
        ({"misfire_policy": "later"}, "misfire_policy", "'skip', 'run_once' or 'catch_up'"),
        ({"overlap_policy": "pile_up"}, "overlap_policy", "'allow', 'skip' or 'queue_one'"),
        ({"catch_up_limit": 0}, "catch_up_limit", ""),
        ({"run_config": {"message": "x", "model": "nope:x"}}, "run_config.model", "nope"),
        ({"run_config": {"message": "x", "tools": ["teleport"]}}, "run_config.tools", "teleport"),
        ({"run_config": {"message": "x", "workspace": "/nope"}}, "run_config.workspace", "/nope"),
        ({"run_config": {}}, "run_config.message", "Field required"),
    ],
)
async def test_invalid_schedules_are_422_naming_the_field(
    client: httpx2.AsyncClient, change: dict[str, Any], field: str, words: str
) -> None:
    response = await client.post("/v1/schedules", json=BODY | change)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_request"
    assert error["field"] == field
    assert error["message"].startswith(f"{field}: ")
    assert words in error["message"]
    assert (await client.get("/v1/schedules")).json()["schedules"] == []


async def test_invalid_changes_are_422_naming_the_field(client: httpx2.AsyncClient) -> None:
    schedule_id = (await client.post("/v1/schedules", json=BODY)).json()["schedule_id"]
    cases = [
        ({"trigger": {"type": "cron", "expr": "nope"}}, "trigger.expr"),
        ({"timezone": "Nowhere/Special"}, "timezone"),
        ({"overlap_policy": "sometimes"}, "overlap_policy"),
        ({"name": None}, "name"),
        ({"run_config": {"model": "nope:x"}}, "run_config.model"),
    ]
    for change, field in cases:
        response = await client.patch(f"/v1/schedules/{schedule_id}", json=change)
        assert response.status_code == 422, (change, response.text)
        assert response.json()["error"]["field"] == field
    unchanged = (await client.get(f"/v1/schedules/{schedule_id}")).json()
    assert {key: unchanged[key] for key in BODY} == BODY


async def test_patch_changes_the_trigger_and_run_config_field_by_field(
    client: httpx2.AsyncClient, clock: FakeClock
) -> None:
    schedule_id = (await client.post("/v1/schedules", json=BODY)).json()["schedule_id"]
    clock.advance(minutes=1)
    response = await client.patch(
        f"/v1/schedules/{schedule_id}",
        json={
            "trigger": {"type": "interval", "every_seconds": 600},
            "run_config": {"message": "Again"},
            "catch_up_limit": 3,
        },
    )
    assert response.status_code == 200, response.text
    changed = response.json()
    assert changed["trigger"] == {"type": "interval", "every_seconds": 600}
    assert changed["run_config"] == BODY["run_config"] | {"message": "Again"}
    assert changed["catch_up_limit"] == 3
    expected = datetime(2026, 11, 23, 8, 1, tzinfo=UTC) + timedelta(seconds=600)
    assert datetime.fromisoformat(changed["next_fire_at"]) == expected


async def test_once_keeps_the_wall_clock_time_it_was_given(client: httpx2.AsyncClient) -> None:
    body = BODY | {"trigger": {"type": "once", "at": "2026-12-01T09:00:00"}}
    schedule = (await client.post("/v1/schedules", json=body)).json()
    assert schedule["trigger"] == {
        "type": "once",
        "at": "2026-12-01T09:00:00",
        "run_now_if_past": False,
    }
    assert schedule["next_fire_at"] == "2026-12-01T08:00:00Z"  # 09:00 in Paris


async def test_upcoming_fires_in_plain_words_and_none_while_paused(
    client: httpx2.AsyncClient,
) -> None:
    schedule_id = (await client.post("/v1/schedules", json=BODY)).json()["schedule_id"]
    upcoming = (await client.get(f"/v1/schedules/{schedule_id}/upcoming")).json()
    assert upcoming["description"] == "at 09:00 on Monday through Friday"
    assert upcoming["timezone"] == "Europe/Paris"
    # the clock is Monday 2026-11-23 08:00 UTC (09:00 Paris): Tuesday to Friday, then Monday
    assert upcoming["fires"] == [
        "2026-11-24T08:00:00Z",
        "2026-11-25T08:00:00Z",
        "2026-11-26T08:00:00Z",
        "2026-11-27T08:00:00Z",
        "2026-11-30T08:00:00Z",
    ]
    two = (await client.get(f"/v1/schedules/{schedule_id}/upcoming", params={"count": 2})).json()
    assert two["fires"] == upcoming["fires"][:2]
    await client.patch(f"/v1/schedules/{schedule_id}", json={"enabled": False})
    paused = (await client.get(f"/v1/schedules/{schedule_id}/upcoming")).json()
    assert paused["fires"] == [] and paused["description"] == upcoming["description"]
    for count in (0, 51):
        wrong = await client.get(f"/v1/schedules/{schedule_id}/upcoming", params={"count": count})
        assert wrong.status_code == 422
    assert (await client.get("/v1/schedules/nope/upcoming")).status_code == 404
