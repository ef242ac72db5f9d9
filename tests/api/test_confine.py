"""What API clients may ask of the host: workspaces only under the allowed roots, and stdio MCP
servers of their own only when the operator allows them; ``culm run`` and the Python API keep
their freedom."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx2
import pytest

import culm
from culm.settings import load_settings
from tests.api.conftest import ServerFactory
from tests.processes import require_bwrap

STDIO = {"command": "bash", "args": ["-c", "echo pwned > /tmp/x"]}
SCHEDULE = {
    "name": "s",
    "trigger": {"type": "interval", "every_seconds": 3600},
    "run_config": {"message": "hi"},
}


def refused(response: httpx2.Response, field: str) -> None:
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert (error["code"], error["field"]) == ("invalid_request", field)
    assert error["message"].startswith(f"{field}: ")


@pytest.mark.parametrize("workspace", ["/", "/etc", "~", "{home}", "{home}/workspaces/../x"])
async def test_a_workspace_outside_the_roots_is_422_on_every_route(
    make_server: ServerFactory, tmp_path: Path, workspace: str
) -> None:
    home = tmp_path / "home"
    (home / "x").mkdir(parents=True)
    workspace = workspace.format(home=home)
    async with make_server() as server, httpx2.AsyncClient(base_url=server.url) as http:
        body = {"message": "hi", "tools": ["write_file", "bash"], "workspace": workspace}
        refused(await http.post("/v1/runs", json=body), "workspace")
        del body["message"]
        refused(await http.post("/v1/sessions", json=body), "workspace")
        schedule = {**SCHEDULE, "run_config": {"message": "hi", "workspace": workspace}}
        refused(await http.post("/v1/schedules", json=schedule), "run_config.workspace")
        assert (await http.get("/v1/sessions")).json()["sessions"] == []
        assert (await http.get("/v1/schedules")).json()["schedules"] == []


async def test_workspaces_under_the_roots_are_accepted(
    make_server: ServerFactory, tmp_path: Path
) -> None:
    extra = tmp_path / "projects"
    (extra / "one").mkdir(parents=True)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (extra / "link").symlink_to(outside)  # resolved: a link does not widen the roots
    home = tmp_path / "home"
    (home / "workspaces" / "mine").mkdir(parents=True)
    async with (
        make_server(workspace_roots=[extra]) as server,
        httpx2.AsyncClient(base_url=server.url) as http,
    ):
        for allowed in (extra / "one", extra, home / "workspaces" / "mine"):
            response = await http.post("/v1/sessions", json={"workspace": str(allowed)})
            assert response.status_code == 201, response.text
        refused(
            await http.post("/v1/sessions", json={"workspace": str(extra / "link")}), "workspace"
        )
        schedule = await http.post("/v1/schedules", json=SCHEDULE)
        assert schedule.status_code == 201
        patch = {"run_config": {"workspace": str(outside)}}
        refused(
            await http.patch(f"/v1/schedules/{schedule.json()['schedule_id']}", json=patch),
            "run_config.workspace",
        )


async def test_session_stdio_mcp_servers_are_opt_in(make_server: ServerFactory) -> None:
    body: dict[str, Any] = {"tools": ["mcp__mine__*"], "mcp_servers": {"mine": STDIO}}
    async with make_server() as server, httpx2.AsyncClient(base_url=server.url) as http:
        refused(await http.post("/v1/sessions", json=body), "mcp_servers.mine")
        refused(await http.post("/v1/runs", json={**body, "message": "hi"}), "mcp_servers.mine")
        http_server = {"mine": {"url": "http://127.0.0.1:9/mcp"}}
        response = await http.post("/v1/sessions", json={**body, "mcp_servers": http_server})
        assert response.status_code == 201, response.text
    async with (
        make_server(allow_session_mcp_commands=True) as server,
        httpx2.AsyncClient(base_url=server.url) as http,
    ):
        response = await http.post("/v1/sessions", json=body)
        assert response.status_code == 201, response.text


async def test_the_python_api_keeps_its_freedom(tmp_path: Path) -> None:
    async with culm.Engine(culm.Settings(home=tmp_path / "home")) as engine:
        session = await engine.create_session(workspace="/", mcp_servers={"mine": STDIO})
        assert session.workspace == "/"


async def test_secrets_in_culms_environment_never_reach_the_model_or_the_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secrets = {
        "OPENAI_API_KEY": "sk-openai-do-not-leak",
        "ANTHROPIC_API_KEY": "sk-ant-do-not-leak",
        "CULM_API_KEY": "culm-do-not-leak",
        "CULM_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/do-not-leak.db",
    }
    for name, value in secrets.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("CULM_HOME", str(tmp_path / "home"))
    call = {"tool_call": {"name": "bash", "arguments": {"command": "env; cat /proc/self/environ"}}}
    async with culm.Engine(load_settings()) as engine:
        engine.scripts.register("env", {"turns": [[call], [{"text": "done"}]]})
        run = await engine.run("show me", model="scripted:env", tools=["bash"])
        events = [event async for event in engine.subscribe(run.run_id)]
        messages = await engine.get_messages(run.session_id)
    stored = "".join(event.model_dump_json() for event in events)
    stored += "".join(message.model_dump_json() for message in messages)
    assert "CULM_RUN_ID" in stored  # the command's environment was shown
    for value in secrets.values():
        assert value not in stored


# SQLite only: the database it must not see is CULM_HOME's SQLite file.
@pytest.mark.backends("sqlite")
async def test_a_sandboxed_command_sees_neither_the_database_nor_other_workspaces(
    tmp_path: Path,
) -> None:
    require_bwrap()
    home = tmp_path / "home"
    settings = culm.Settings(home=home, bash_sandbox="bwrap")
    async with culm.Engine(settings) as engine:
        other = await engine.create_session()
        (Path(other.workspace) / "theirs.txt").write_text("another session's file")
        command = f"ls -a {home} {home}/workspaces; cat {home}/culm.db | head -c 16"
        call = {"tool_call": {"name": "bash", "arguments": {"command": command}}}
        engine.scripts.register("look", {"turns": [[call], [{"text": "done"}]]})
        run = await engine.run("look", model="scripted:look", tools=["bash"])
        events = [event async for event in engine.subscribe(run.run_id)]
    [result] = [event for event in events if event.type == "tool_complete"]
    output = result.result  # type: ignore[attr-defined]
    assert (home / "culm.db").exists()
    assert "culm.db" not in output.replace(f"{home}/culm.db: No such file", "")
    assert "No such file" in output
    assert other.session_id not in output
    assert run.session_id in output  # its own workspace, and nothing else of CULM_HOME
