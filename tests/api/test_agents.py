"""``/v1/agents``, ``agent`` on sessions and headless runs, and ``/v1/metrics/agents``, through
the typed client (``culm.Client``) against a real server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import httpx2
import pytest

import culm
from culm.client import APIError, NotFound
from tests.api.conftest import Server, running_server


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Server]:
    app = culm.App("shop.app:app")

    @app.tool(read_only=True)
    def price(item: str, quantity: int = 1) -> dict[str, float]:
        """The price of an item.

        Args:
            item: what to price.
            quantity: how many.
        """
        return {"total": 2.5 * quantity}

    app.agent("pricer", model="scripted:echo", tools=["price"], description="Prices things.")
    settings = culm.Settings(home=tmp_path / "home", agents={"cfg": {"model": "scripted:demo"}})
    async with running_server(settings, app=app) as running:
        yield running


@pytest.fixture
async def client(server: Server) -> AsyncIterator[culm.Client]:
    async with culm.Client(server.url, api_key="") as made:
        yield made


async def test_list_get_put_delete(client: culm.Client) -> None:
    created = await client.put_agent("mine", model="scripted:echo", tools=["read"])
    agents = {agent.name: agent for agent in await client.list_agents()}
    pricer = await client.get_agent("pricer")
    await client.delete_agent("mine")
    with pytest.raises(NotFound, match="agent 'mine' not found"):
        await client.get_agent("mine")
    assert created.source == "api" and created.tools == ["read"]
    assert sorted(agents) == ["cfg", "mine", "pricer"]
    assert (pricer.source, pricer.origin, pricer.read_only) == ("code", "shop.app:app", True)
    assert pricer.description == "Prices things."


async def test_put_status_codes_and_errors(server: Server) -> None:
    async with httpx2.AsyncClient(base_url=server.url) as http:
        first = await http.put("/v1/agents/a1", json={"model": "scripted:echo"})
        second = await http.put("/v1/agents/a1", json={"description": "again"})
        read_only = await http.put("/v1/agents/pricer", json={})
        unknown_tool = await http.put("/v1/agents/a2", json={"tools": ["nope"]})
        extra = await http.put("/v1/agents/a3", json={"colour": "red"})
        gone = await http.delete("/v1/agents/none")
    assert (first.status_code, second.status_code) == (201, 200)
    assert read_only.status_code == 409 and read_only.json()["error"]["code"] == "read_only"
    assert unknown_tool.status_code == 422
    assert unknown_tool.json()["error"]["field"] == "tools"
    assert extra.status_code == 422
    assert gone.status_code == 404


async def test_sessions_and_runs_take_an_agent(client: culm.Client) -> None:
    session = await client.create_session(agent="pricer", system_prompt="Be brief.")
    run = await client.run("two apples", agent="pricer", max_rounds=3)
    ended = await client.wait(run.run_id, timeout=20)
    headless = await client.get_session(run.session_id)
    with pytest.raises(APIError) as failed:
        await client.create_session(agent="nobody")
    assert (session.agent, session.model, session.tools) == ("pricer", "scripted:echo", ("price",))
    assert session.system_prompt == "Be brief."
    assert ended.status is culm.RunStatus.COMPLETED and ended.agent == "pricer"
    assert (headless.agent, headless.max_rounds) == ("pricer", 3)
    assert (failed.value.status, failed.value.field) == (422, "agent")


async def test_metrics_by_agent(client: culm.Client) -> None:
    run = await client.run("hello", agent="pricer")
    await client.wait(run.run_id, timeout=20)
    async with asyncio.timeout(20):
        while not (report := await client.metrics_agents()).agents:
            await asyncio.sleep(0.05)
    [row] = report.agents
    assert (row.agent, row.runs) == ("pricer", 1)
