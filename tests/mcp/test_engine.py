"""MCP tools in runs, end to end: a scripted model calls them through the engine's one tool
path (events, timeout, cancel), servers are shared across runs and restarted after a crash, a
session's own servers, and a clean shutdown that leaves no process."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

import culm
from culm.domain.events import RunEvent, ToolComplete, ToolError, ToolStart
from culm.errors import MCPServerError
from culm.mcp.connection import ServerStatus
from tests.mcp.conftest import TIME_SERVER, DemoServer, EngineFactory, mcp_children
from tests.support import PROMPTLY, collect, tool_turn, types


def script(*turns: list[dict[str, Any]]) -> dict[str, Any]:
    return {"turns": [*turns, [{"text": "done"}]]}


def results(events: list[RunEvent]) -> list[ToolComplete | ToolError]:
    return [event for event in events if isinstance(event, ToolComplete | ToolError)]


async def run_to_end(engine: culm.Engine, run: culm.Run) -> list[RunEvent]:
    events = await collect(engine.subscribe(run.run_id))
    assert events[-1].type == "complete", events[-1]
    return events


async def test_a_run_calls_mcp_tools_like_any_tool(
    make_engine: EngineFactory, demo_server: DemoServer
) -> None:
    async with make_engine(demo=demo_server.config(), time=TIME_SERVER) as engine:
        engine.scripts.register(
            "calls",
            script(
                tool_turn("mcp__demo__add", {"a": 2, "b": 3})
                + tool_turn("mcp__time__get_current_time", {"timezone": "UTC"}),
                tool_turn("mcp__demo__pid"),
            ),
        )
        tools = ["mcp__demo__*", "mcp__time__get_current_time"]
        session = await engine.create_session(model="scripted:calls", tools=tools)
        assert {info.status for info in engine.mcp.servers()} == {ServerStatus.STOPPED}
        run = await engine.start_run(session.session_id, "go")
        events = await run_to_end(engine, run)
        starts = [event for event in events if isinstance(event, ToolStart)]
        assert [event.arguments for event in starts][0] == {"a": 2, "b": 3}
        done = results(events)
        assert [type(event) for event in done] == [ToolComplete] * 3
        add, now, pid = (event.result for event in done)  # type: ignore[union-attr]
        assert add == "5"
        assert json.loads(now)["timezone"] == "UTC"
        # The next run of any session uses the same server processes.
        other = await engine.run("again", model="scripted:calls", tools=tools)
        again = results(await run_to_end(engine, other))
        assert again[-1].result == pid  # type: ignore[union-attr]
        assert len(mcp_children()) == 2
        run_row = await engine.get_run(other.run_id)
        assert run_row.last_tool_name == "mcp__demo__pid"
    assert mcp_children() == []


async def test_a_hanging_call_times_out_by_the_server_timeout_and_the_run_goes_on(
    make_engine: EngineFactory, demo_server: DemoServer
) -> None:
    async with make_engine(demo=demo_server.config(timeout=0.5)) as engine:
        engine.scripts.register(
            "hang",
            script(tool_turn("mcp__demo__sleep", {"seconds": 30}), tool_turn("mcp__demo__pid")),
        )
        run = await engine.run("go", model="scripted:hang", tools=["mcp__demo__*"])
        events = await run_to_end(engine, run)
        timed_out, pid = results(events)
        assert isinstance(timed_out, ToolError)
        assert timed_out.error == "mcp__demo__sleep timed out after 0.5 s"
        assert 500 <= timed_out.elapsed_ms < 3000
        assert isinstance(pid, ToolComplete)  # the server survived the abandoned call
        await demo_server.wait_for("sleep cancelled")


async def test_cancelling_a_run_during_an_mcp_call(
    make_engine: EngineFactory, demo_server: DemoServer
) -> None:
    async with make_engine(demo=demo_server.config()) as engine:
        engine.scripts.register("hang", script(tool_turn("mcp__demo__sleep", {"seconds": 30})))
        run = await engine.run("go", model="scripted:hang", tools=["mcp__demo__sleep"])
        await demo_server.wait_for("sleep started", timeout=10)
        started = time.monotonic()
        cancelled = await engine.cancel(run.run_id, wait=True, timeout=PROMPTLY)
        assert time.monotonic() - started < PROMPTLY
        assert cancelled.status is culm.RunStatus.CANCELLED
        assert cancelled.last_tool_name == "mcp__demo__sleep"
        events = await collect(engine.subscribe(run.run_id))
        assert "tool_start" in types(events) and "tool_complete" not in types(events)
        assert events[-1].type == "cancelled"
        await demo_server.wait_for("sleep cancelled")
        assert engine.mcp.servers()[0].status is ServerStatus.READY
    assert mcp_children() == []


async def test_a_crash_is_a_tool_error_and_the_next_call_restarts_the_server(
    make_engine: EngineFactory, demo_server: DemoServer
) -> None:
    async with make_engine(demo=demo_server.config()) as engine:
        engine.scripts.register(
            "crash",
            script(tool_turn("mcp__demo__crash"), tool_turn("mcp__demo__echo", {"text": "ok"})),
        )
        run = await engine.run("go", model="scripted:crash", tools=["mcp__demo__*"])
        crashed, echoed = results(await run_to_end(engine, run))
        assert isinstance(crashed, ToolError)
        assert crashed.error.startswith("MCP server 'demo' failed during the call: the server")
        assert "crashing on purpose" in crashed.error
        assert isinstance(echoed, ToolComplete) and echoed.result == "ok"
        (info,) = engine.mcp.servers()
        assert (info.status, info.restarts) == (ServerStatus.READY, 1)
    assert mcp_children() == []


async def test_a_run_whose_server_cannot_start_fails_saying_why(make_engine: EngineFactory) -> None:
    async with make_engine(broken={"command": "/nonexistent/server"}) as engine:
        run = await engine.run("go", model="scripted:echo", tools=["mcp__broken__*"])
        events = await collect(engine.subscribe(run.run_id))
        error = events[-1]
        assert error.type == "error"
        assert error.code == "mcp_server_error"  # type: ignore[attr-defined]
        assert "MCP server 'broken' could not start" in error.message  # type: ignore[attr-defined]
        (info,) = engine.mcp.servers()
        assert info.status is ServerStatus.ERROR


async def test_an_exact_name_the_server_does_not_offer_fails_the_run(
    make_engine: EngineFactory, demo_server: DemoServer
) -> None:
    async with make_engine(demo=demo_server.config()) as engine:
        run = await engine.run("go", model="scripted:echo", tools=["mcp__demo__nope"])
        error = (await collect(engine.subscribe(run.run_id)))[-1]
        assert error.type == "error"
        assert "MCP server 'demo' has no tool 'nope' (mcp__demo__add" in error.message  # type: ignore[attr-defined]


async def test_a_session_s_own_servers_are_its_alone_and_go_with_it(
    make_engine: EngineFactory, demo_server: DemoServer
) -> None:
    async with make_engine() as engine:
        engine.scripts.register("add", script(tool_turn("mcp__mine__add", {"a": 1, "b": 1})))
        session = await engine.create_session(
            model="scripted:add",
            tools=["mcp__mine__add"],
            mcp_servers={"mine": demo_server.config()},
        )
        run = await engine.start_run(session.session_id, "go")
        (added,) = results(await run_to_end(engine, run))
        assert isinstance(added, ToolComplete) and added.result == "2"
        (info,) = engine.mcp.servers()
        assert (info.name, info.session_id, info.status) == (
            "mine",
            session.session_id,
            ServerStatus.READY,
        )
        # Another session does not see it.
        run = await engine.run("go", model="scripted:add", tools=["read"])
        (refused,) = results(await run_to_end(engine, run))
        assert isinstance(refused, ToolError) and "unknown tool 'mcp__mine__add'" in refused.error
        await engine.delete_session(session.session_id)
        assert engine.mcp.servers() == []
        assert mcp_children() == []


async def test_shutdown_during_a_call_stops_every_server(
    make_engine: EngineFactory, demo_server: DemoServer
) -> None:
    engine = make_engine(demo=demo_server.config())
    async with engine:
        engine.scripts.register("hang", script(tool_turn("mcp__demo__sleep", {"seconds": 30})))
        session = await engine.create_session(model="scripted:hang", tools=["mcp__demo__sleep"])
        run = await engine.start_run(session.session_id, "go")
        await demo_server.wait_for("sleep started", timeout=10)
        assert len(mcp_children()) == 1
        started = time.monotonic()
    assert time.monotonic() - started < 5
    assert mcp_children() == []
    assert [info.status for info in engine.mcp.servers()] == [ServerStatus.STOPPED]
    with pytest.raises(MCPServerError, match="'demo' is stopped: the engine is shutting down"):
        await engine.mcp.resolve("mcp__demo__pid", session)
    async with engine:  # started again, it serves again
        assert (await engine.get_run(run.run_id)).status is culm.RunStatus.CANCELLED
        assert [tool.name for tool in await engine.mcp.resolve("mcp__demo__pid", session)] == [
            "mcp__demo__pid"
        ]
    assert mcp_children() == []
