"""The server commands (``sessions``, ``runs``, ``show``, ``tail``, ``cancel``) end to end: the
real ``culm`` in a subprocess against a real server; and the SSE reader's reconnects against a
tiny raw asyncio server that drops connections on purpose."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import signal
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import pytest

import culm
from culm.client import Client, NotFound, ServerUnreachable, StreamEvent
from culm.domain.models import RunStatus
from culm.tools.base import Tool, ToolContext
from tests.api.conftest import Server, free_port, running_server
from tests.cli.conftest import TIMEOUT, Result, clean_env, culm_command, restore_sigint

UUID = r"[0-9a-f-]{36}"
DEMO_ANSWER = (
    "Let me look at the workspace.\n"
    "Done: the listing above shows what the workspace holds "
    "(this answer comes from the scripted demo model).\n"
)
GATED = {
    "turns": [
        [{"text": "tick "}, {"tool_call": {"name": "gate", "arguments": {}}}],
        [{"text": "tick "}, {"text": "done"}],
    ]
}


class GateTool(Tool):
    """Returns once the test opens it."""

    name: ClassVar[str] = "gate"
    description: ClassVar[str] = "Wait for the gate."
    parameters: ClassVar[dict[str, Any]] = {"type": "object", "properties": {}}

    def __init__(self) -> None:
        self.open = asyncio.Event()

    async def run(self, arguments: dict[str, Any], ctx: ToolContext) -> str:
        await self.open.wait()
        return "open"


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Server]:
    async with running_server(culm.Settings(home=tmp_path / "server")) as running:
        yield running


@pytest.fixture
def cli_home(tmp_path: Path) -> Path:
    path = tmp_path / "cli"
    path.mkdir()
    return path


Cli = Callable[..., Awaitable[Result]]


@pytest.fixture
def cli(cli_home: Path) -> Cli:
    """``await cli("runs", server=url)``: run the command to its end (the event loop keeps
    serving meanwhile) and return what it printed."""

    async def run(*args: str, server: str, env: Mapping[str, str] | None = None) -> Result:
        process = await _spawn(cli_home, *args, "--server", server, env=env)
        stdout, stderr = await asyncio.wait_for(process.communicate(), TIMEOUT)
        assert process.returncode is not None
        return Result(process.returncode, stdout.decode(), stderr.decode())

    return run


async def _spawn(
    home: Path, *args: str, env: Mapping[str, str] | None = None
) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        *culm_command(*args),
        env=clean_env(home, env),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=home,
        preexec_fn=restore_sigint,
    )


async def finished_run(server: Server, model: str = "scripted:demo") -> culm.Run:
    run = await server.engine.run("What is in the workspace?", model=model, tools=["read"])
    return await server.engine.wait(run.run_id, timeout=20)


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines()]


# sessions and runs


async def test_sessions_table_newest_first_and_json(server: Server, cli: Cli) -> None:
    older = await server.engine.create_session(model="scripted:echo", tools=["glob", "grep"])
    newer = await server.engine.create_session(model="scripted:demo")

    table = await cli("sessions", server=server.url)
    as_json = await cli("sessions", "--json", server=server.url)
    limited = await cli("sessions", "--limit", "1", "--json", server=server.url)

    assert table.code == 0, table.stderr
    header, *rows = table.stdout.splitlines()
    assert header.split() == ["SESSION", "MODEL", "TOOLS", "CREATED", "KIND"]
    assert [row.split()[0] for row in rows] == [newer.session_id, older.session_id]
    assert rows[1].split()[1:3] == ["scripted:echo", "glob,grep"]
    assert rows[1].split()[-1] == "root"
    assert re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", rows[0])
    assert as_json.code == 0
    assert [item["session_id"] for item in json_lines(as_json.stdout)] == [
        newer.session_id,
        older.session_id,
    ]
    assert [item["session_id"] for item in json_lines(limited.stdout)] == [newer.session_id]


async def test_runs_table_filters_and_json(server: Server, cli: Cli) -> None:
    done = await finished_run(server, "scripted:echo")
    live = await server.engine.run("count", model="scripted:slow")
    try:
        table = await cli("runs", server=server.url)
        running = await cli("runs", "--status", "running", "--json", server=server.url)
        by_session = await cli("runs", "--session", done.session_id, server=server.url)
    finally:
        await server.engine.cancel(live.run_id, wait=True, timeout=20)

    assert table.code == 0, table.stderr
    header, *rows = table.stdout.splitlines()
    assert header.split() == ["RUN", "STATUS", "MODEL", "ROUNDS", "TOKENS", "CREATED"]
    assert [row.split()[0] for row in rows] == [live.run_id, done.run_id]
    assert rows[1].split()[1:4] == ["completed", "scripted:echo", "1"]
    assert [run["run_id"] for run in json_lines(running.stdout)] == [live.run_id]
    assert [row.split()[0] for row in by_session.stdout.splitlines()[1:]] == [done.run_id]


async def test_times_show_their_zone(server: Server, cli: Cli) -> None:
    done = await finished_run(server)
    for zone, names in (
        ("UTC", {"UTC"}),
        ("Asia/Tokyo", {"JST"}),
        ("Europe/Paris", {"CET", "CEST"}),
    ):
        runs = await cli("runs", server=server.url, env={"TZ": zone})
        show = await cli("show", done.run_id, server=server.url, env={"TZ": zone})
        assert runs.code == show.code == 0, runs.stderr + show.stderr
        created = runs.stdout.splitlines()[1].split()[-1]
        assert created in names, runs.stdout
        fields = dict(line.split(None, 1) for line in show.stdout.splitlines() if line)
        assert fields["created"].split()[-1] in names, show.stdout


async def test_empty_lists_say_so_on_stderr(server: Server, cli: Cli) -> None:
    result = await cli("runs", server=server.url)

    assert (result.code, result.stdout, result.stderr) == (0, "", "no runs\n")


async def test_an_invalid_status_is_a_usage_error(server: Server, cli: Cli) -> None:
    result = await cli("runs", "--status", "sleeping", server=server.url)

    assert result.code == 2
    assert "sleeping" in result.stderr


# show


async def test_show_prints_the_runs_fields(server: Server, cli: Cli) -> None:
    run = await finished_run(server)

    result = await cli("show", run.run_id, server=server.url)

    assert result.code == 0, result.stderr
    fields = dict(re.split(r"\s{2,}", line, maxsplit=1) for line in result.stdout.splitlines())
    assert fields["run"] == run.run_id
    assert fields["session"] == run.session_id
    assert fields["status"] == "completed"
    assert fields["model"] == "scripted:demo"
    assert fields["rounds"] == "2"
    assert fields["last tool"] == "list_dir (finished)"
    assert fields["last event"].startswith(f"#{run.last_seq} at ")
    assert re.fullmatch(r".* \(took \d+\.\d s\)", fields["completed"])
    usage = run.usage
    assert fields["usage"] == (
        f"prompt {usage.prompt_tokens:,} · completion {usage.completion_tokens:,} · "
        f"total {usage.total_tokens:,} · cache read 0 · cache write 0 · reasoning 0"
    )
    assert "error" not in fields


async def test_show_events_lists_every_event(server: Server, cli: Cli) -> None:
    run = await finished_run(server)

    result = await cli("show", run.run_id, "--events", server=server.url)
    as_json = await cli("show", run.run_id, "--events", "--json", server=server.url)

    assert result.code == 0, result.stderr
    lines = result.stdout.split("\n\n", 1)[1].splitlines()
    assert [int(line.split()[0]) for line in lines] == list(range(1, run.last_seq + 1))
    assert lines[0].split()[2] == "execution_started"
    assert re.fullmatch(r"\s*\d+  \d\d:\d\d:\d\d\.\d{3}  complete\s+\{.*", lines[-1])
    [shown] = json_lines(as_json.stdout)
    assert shown["run"]["run_id"] == run.run_id
    assert [event["seq"] for event in shown["events"]] == list(range(1, run.last_seq + 1))


async def test_show_events_of_a_live_run_stops_at_its_last_seq(server: Server, cli: Cli) -> None:
    live = await server.engine.run("count", model="scripted:slow")
    try:
        await _until(lambda: _seq_at_least(server, live.run_id, 3))
        result = await cli("show", live.run_id, "--events", "--json", server=server.url)
    finally:
        await server.engine.cancel(live.run_id, wait=True, timeout=20)

    assert result.code == 0, result.stderr
    [shown] = json_lines(result.stdout)
    assert shown["run"]["status"] == "running"
    seqs = [event["seq"] for event in shown["events"]]
    assert seqs == list(range(1, shown["run"]["last_seq"] + 1))


# cancel


async def test_cancel_wait_ends_a_slow_run(server: Server, cli: Cli) -> None:
    live = await server.engine.run("count", model="scripted:slow")

    result = await cli("cancel", live.run_id, "--wait", "--timeout", "20", server=server.url)

    assert (result.code, result.stdout, result.stderr) == (0, "cancelled\n", "")
    assert (await server.engine.get_run(live.run_id)).status is RunStatus.CANCELLED


async def test_cancel_without_wait_says_the_run_stops_shortly(server: Server, cli: Cli) -> None:
    live = await server.engine.run("count", model="scripted:slow")

    result = await cli("cancel", live.run_id, server=server.url)
    ended = await server.engine.wait(live.run_id, timeout=20)

    assert result.code == 0, result.stderr
    assert result.stdout in {"running\n", "pending\n", "cancelled\n"}
    if result.stdout != "cancelled\n":
        assert "cancel requested" in result.stderr
    assert ended.status is RunStatus.CANCELLED


async def test_cancel_of_a_finished_run_prints_its_status(server: Server, cli: Cli) -> None:
    run = await finished_run(server, "scripted:echo")

    result = await cli("cancel", run.run_id, "--wait", server=server.url)

    assert (result.code, result.stdout) == (0, "completed\n")


# tail


async def test_tail_of_a_finished_run_replays_it(server: Server, cli: Cli) -> None:
    run = await finished_run(server)

    result = await cli("tail", run.run_id, server=server.url)

    assert result.code == 0, result.stderr
    assert result.stdout == DEMO_ANSWER
    lines = result.stderr.strip().splitlines()
    start = lines.index('▸ list_dir {"path": "."} running…')
    assert re.fullmatch(r"✓ list_dir \d+ ms", lines[start + 1])
    assert lines[start + 2].startswith("    ")  # the listing (of the run's fresh workspace)
    assert re.fullmatch(
        rf"completed · 2 rounds · [\d,]+ tokens \([\d,]+ in / [\d,]+ out\) · \d+\.\d s · "
        rf"run {run.run_id}",
        lines[-1],
    )


async def test_tail_json_prints_each_event_once(server: Server, cli: Cli) -> None:
    run = await finished_run(server)

    result = await cli("tail", run.run_id, "--json", server=server.url)

    assert result.code == 0, result.stderr
    events = json_lines(result.stdout)
    assert [event["seq"] for event in events] == list(range(1, run.last_seq + 1))
    assert events[-1]["type"] == "complete"
    assert result.stderr == ""


async def test_tail_after_starts_past_the_cursor(server: Server, cli: Cli) -> None:
    run = await finished_run(server)

    result = await cli("tail", run.run_id, "--after", "3", "--json", server=server.url)
    past_the_end = await cli("tail", run.run_id, "--after", "999", server=server.url)

    assert result.code == 0, result.stderr
    assert [event["seq"] for event in json_lines(result.stdout)] == list(range(4, run.last_seq + 1))
    assert past_the_end.code == 0, past_the_end.stderr
    assert past_the_end.stdout == ""
    assert "is completed; no more events after the cursor" in past_the_end.stderr


async def test_tail_follows_a_live_run_to_its_end(tmp_path: Path, cli_home: Path) -> None:
    # The run waits inside a tool until the test has read tail's first line: it is live then,
    # however slowly the CLI starts.
    gate = GateTool()
    settings = culm.Settings(home=tmp_path / "server")
    async with running_server(settings, tools=[gate]) as server:
        server.engine.scripts.register("gated", GATED)
        live = await server.engine.run("count", model="scripted:gated", tools=["gate"])
        process = await _spawn(cli_home, "tail", live.run_id, "--json", "--server", server.url)
        assert process.stdout is not None

        first = await asyncio.wait_for(process.stdout.readline(), TIMEOUT)
        still = (await server.engine.get_run(live.run_id)).status
        gate.open.set()
        rest, stderr = await asyncio.wait_for(process.communicate(), TIMEOUT)

    assert still is RunStatus.RUNNING
    assert process.returncode == 0, stderr
    events = json_lines((first + rest).decode())
    assert [event["seq"] for event in events] == list(range(1, len(events) + 1))
    assert "".join(e["content"] for e in events if e["type"] == "token").endswith("tick done")
    assert events[-1]["type"] == "complete"


async def test_tail_exits_1_when_the_run_is_cancelled(server: Server, cli_home: Path) -> None:
    live = await server.engine.run("count", model="scripted:slow")
    process = await _spawn(cli_home, "tail", live.run_id, "--server", server.url)
    assert process.stdout is not None

    await asyncio.wait_for(process.stdout.readuntil(b"tick"), TIMEOUT)
    await server.engine.cancel(live.run_id)
    _, stderr = await asyncio.wait_for(process.communicate(), TIMEOUT)

    assert process.returncode == 1
    lines = stderr.decode().strip().splitlines()
    assert "cancelled: cancelled by request" in lines
    assert lines[-1].startswith("cancelled · ")


async def test_tail_exits_1_when_the_run_fails(server: Server, cli: Cli) -> None:
    server.engine.scripts.register("broken", {"turns": [[{"error": {"kind": "auth"}}]]})
    run = await finished_run(server, "scripted:broken")

    result = await cli("tail", run.run_id, server=server.url)

    assert run.status is RunStatus.ERROR
    assert result.code == 1
    assert any(line.startswith("error: ") for line in result.stderr.splitlines())
    assert result.stderr.strip().splitlines()[-1].startswith("error · ")


async def test_ctrl_c_stops_tail_but_not_the_run(server: Server, cli_home: Path) -> None:
    live = await server.engine.run("count", model="scripted:slow")
    process = await _spawn(cli_home, "tail", live.run_id, "--server", server.url)
    assert process.stdout is not None
    try:
        await asyncio.wait_for(process.stdout.readuntil(b"tick"), TIMEOUT)
        process.send_signal(signal.SIGINT)
        _, stderr = await asyncio.wait_for(process.communicate(), TIMEOUT)
        status = (await server.engine.get_run(live.run_id)).status
    finally:
        await server.engine.cancel(live.run_id, wait=True, timeout=20)

    assert process.returncode == 130
    assert "stopped following run" in stderr.decode()
    assert b"Traceback" not in stderr
    assert status is RunStatus.RUNNING


# user mistakes: one line, exit 2


@pytest.mark.parametrize(
    "command",
    [("show", "nope"), ("tail", "nope"), ("cancel", "nope"), ("show", "nope", "--events")],
)
async def test_an_unknown_run_is_one_line(server: Server, cli: Cli, command: tuple[str]) -> None:
    result = await cli(*command, server=server.url)

    assert (result.code, result.stdout, result.stderr) == (2, "", "error: run 'nope' not found\n")


@pytest.mark.parametrize("command", [("sessions",), ("runs",), ("tail", "r1"), ("cancel", "r1")])
async def test_a_server_that_is_down_is_one_line(cli: Cli, command: tuple[str]) -> None:
    url = f"http://127.0.0.1:{free_port()}"

    result = await cli(*command, server=url)

    assert result.code == 2
    assert result.stderr == (
        f"error: cannot reach the culm server at {url} (is `culm serve` running?)\n"
    )


async def test_the_server_comes_from_culm_server(cli_home: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    process = await _spawn(cli_home, "runs", env={"CULM_SERVER": url})
    _, stderr = await asyncio.wait_for(process.communicate(), TIMEOUT)

    assert process.returncode == 2
    assert url in stderr.decode()


async def test_an_invalid_server_url_is_one_line(cli: Cli) -> None:
    result = await cli("runs", server="localhost:8420")

    assert result.code == 2
    assert result.stderr.startswith("error: invalid server URL 'localhost:8420'")


async def test_api_key_from_culm_api_key(tmp_path: Path, cli: Cli) -> None:
    settings = culm.Settings(home=tmp_path / "server", api_key="s3cret")
    async with running_server(settings) as locked:
        missing = await cli("runs", server=locked.url)
        wrong = await cli("runs", server=locked.url, env={"CULM_API_KEY": "guess"})
        right = await cli("runs", server=locked.url, env={"CULM_API_KEY": "s3cret"})

    assert (missing.code, missing.stderr) == (
        2,
        "error: the server needs an API key: set CULM_API_KEY\n",
    )
    assert (wrong.code, wrong.stderr) == (
        2,
        "error: the server refused the API key in CULM_API_KEY\n",
    )
    assert (right.code, right.stderr) == (0, "no runs\n")


# The SSE reader: reconnects with Last-Event-ID, each seq exactly once


def frame(seq: int, type_: str = "token") -> bytes:
    data = {"seq": seq, "run_id": "r1", "session_id": "s1", "type": type_}
    return f"id: {seq}\nevent: {type_}\ndata: {json.dumps(data)}\n\n".encode()


@dataclass
class Plan:
    """What each connection to ``/v1/runs/r1/events`` gets: ``(events, how)`` where ``events``
    are (seq, type) pairs and ``how`` is ``drop`` (connection cut mid-body, after half of one
    more event), ``end`` (a clean end) or an HTTP status."""

    streams: list[tuple[list[tuple[int, str]], str | int]]
    run: dict[str, Any] = field(default_factory=lambda: {"status": "running", "last_seq": 0})
    requests: list[tuple[str, str | None]] = field(default_factory=list)


class RawServer:
    """HTTP/1.1 by hand, so a connection can be cut mid-stream like a real network does."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self._streams = iter(plan.streams)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = (await reader.readuntil(b"\r\n\r\n")).decode()
        path = head.split()[1]
        headers = dict(line.split(": ", 1) for line in head.split("\r\n")[1:] if ": " in line)
        last_id = {key.lower(): value for key, value in headers.items()}.get("last-event-id")
        self.plan.requests.append((path, last_id))
        if path.endswith("/events"):
            await self._stream(writer, *next(self._streams))
        else:
            await _respond(writer, 200, self.plan.run)
        writer.close()

    async def _stream(
        self, writer: asyncio.StreamWriter, events: list[tuple[int, str]], how: str | int
    ) -> None:
        if isinstance(how, int):
            await _respond(writer, how, {"error": {"code": "x", "message": f"status {how}"}})
            return
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
            b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        )
        body = b": ping\n\n" + b"".join(frame(seq, type_) for seq, type_ in events)
        if how == "drop":
            body += frame(events[-1][0] + 1 if events else 99)[:25]  # half an event
        writer.write(b"%x\r\n%s\r\n" % (len(body), body))
        if how == "end":
            writer.write(b"0\r\n\r\n")
        await writer.drain()


async def _respond(writer: asyncio.StreamWriter, status: int, body: dict[str, Any]) -> None:
    content = json.dumps(body).encode()
    writer.write(
        b"HTTP/1.1 %d X\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
        b"Connection: close\r\n\r\n%s" % (status, len(content), content)
    )
    await writer.drain()


@contextlib.asynccontextmanager
async def raw_server(plan: Plan) -> AsyncIterator[str]:
    server = await asyncio.start_server(RawServer(plan).handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        yield f"http://127.0.0.1:{port}"


async def follow(url: str, *, after: int = 0) -> tuple[list[StreamEvent], list[str]]:
    notes: list[str] = []
    async with Client(url) as client:
        events = [e async for e in client.run_events("r1", after=after, on_retry=notes.append)]
    return events, notes


def tokens(*seqs: int) -> list[tuple[int, str]]:
    return [(seq, "token") for seq in seqs]


async def test_reader_resumes_with_last_event_id_and_yields_each_seq_once() -> None:
    plan = Plan(
        streams=[
            (tokens(1, 2, 3), "drop"),
            (tokens(2, 3, 4, 5, 6), "drop"),  # replays too much: 2 and 3 come again
            ([*tokens(7), (8, "complete")], "end"),
        ]
    )
    async with raw_server(plan) as url:
        events, notes = await follow(url)

    assert [event.seq for event in events] == list(range(1, 9))
    assert events[-1].type == "complete"
    assert events[0].data == {"seq": 1, "run_id": "r1", "session_id": "s1", "type": "token"}
    assert plan.requests == [
        ("/v1/runs/r1/events", "0"),
        ("/v1/runs/r1/events", "3"),
        ("/v1/runs/r1/events", "6"),
    ]
    assert len(notes) == 2
    assert "reconnecting after event 3 in 0.2 s" in notes[0]
    assert "reconnecting after event 6 in 0.2 s" in notes[1]


async def test_reader_backs_off_while_the_server_fails() -> None:
    plan = Plan(
        streams=[
            (tokens(1), "drop"),
            ([], 503),
            ([], "drop"),
            ([(2, "cancelled")], "end"),
        ]
    )
    async with raw_server(plan) as url:
        events, notes = await follow(url, after=0)

    assert [event.seq for event in events] == [1, 2]
    assert [last_id for _, last_id in plan.requests] == ["0", "1", "1", "1"]
    assert [re.search(r"in ([\d.]+) s", note)[1] for note in notes] == ["0.2", "0.4", "0.8"]  # type: ignore[index]


async def test_reader_asks_the_run_when_a_stream_ends_early() -> None:
    plan = Plan(streams=[(tokens(4, 5), "end"), ([(6, "error")], "end")])
    async with raw_server(plan) as url:
        events, notes = await follow(url, after=3)

    assert [event.seq for event in events] == [4, 5, 6]
    assert plan.requests == [
        ("/v1/runs/r1/events", "3"),
        ("/v1/runs/r1", None),
        ("/v1/runs/r1/events", "5"),
    ]
    assert "the stream ended before the run did" in notes[0]


async def test_reader_stops_when_the_run_is_over_and_nothing_is_left() -> None:
    plan = Plan(streams=[([], "end")], run={"status": "completed", "last_seq": 9})
    async with raw_server(plan) as url:
        events, notes = await follow(url, after=9)

    assert (events, notes) == ([], [])


async def test_reader_raises_a_4xx_even_after_reconnecting() -> None:
    plan = Plan(streams=[(tokens(1), "drop"), ([], 404)])
    async with raw_server(plan) as url:
        with pytest.raises(NotFound, match="run 'r1' not found"):
            await follow(url)


async def test_reader_raises_when_the_first_connection_fails() -> None:
    url = f"http://127.0.0.1:{free_port()}"

    with pytest.raises(ServerUnreachable, match="cannot reach the culm server"):
        await follow(url)


# helpers


async def _seq_at_least(server: Server, run_id: str, seq: int) -> bool:
    return (await server.engine.get_run(run_id)).last_seq >= seq


async def _until(check: Callable[[], Awaitable[bool]], timeout: float = 10) -> None:
    async with asyncio.timeout(timeout):
        while not await check():
            await asyncio.sleep(0.02)
