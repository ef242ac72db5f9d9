"""``culm.Client`` and ``culm.SyncClient`` against a real ``culm serve --app`` process: a run's
stream resumed across a server restart (every event once, no gap), and the CLI on the same
client."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path

import httpx2
import pytest

import culm
from culm.client import StreamEvent
from tests.api.conftest import free_port
from tests.cli.conftest import clean_env, run_culm

PROJECT = '''
import culm

app = culm.App()


@app.tool(read_only=True)
def shout(text: str) -> str:
    """The text in capitals."""
    return text.upper()


app.agent("slowpoke", model="scripted:pausing", tools=["shout"], description="Takes its time.")
'''
SLOW = '{"turns": [[{"text": "one "}, {"delay": 1.5}, {"text": "two"}]]}'


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = tmp_path / "project"
    root.mkdir()
    (root / "shop_agents.py").write_text(textwrap.dedent(PROJECT))
    home = tmp_path / "home"
    (home / "scripts").mkdir(parents=True)
    (home / "scripts" / "pausing.json").write_text(SLOW)
    return root


@contextlib.asynccontextmanager
async def culm_serve(project: Path, port: int) -> AsyncIterator[asyncio.subprocess.Process]:
    """``culm serve --app shop_agents:app`` from the project directory; runs still active when
    it stops are handed back (shutdown policy ``recover``) for the next start."""
    env = clean_env(project.parent / "home", {"CULM_SHUTDOWN_POLICY": "recover"})
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "culm", "serve", "--port", str(port), "--app", "shop_agents:app",
        env=env, cwd=project, stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        async with httpx2.AsyncClient() as http, asyncio.timeout(30):
            while True:
                with contextlib.suppress(httpx2.TransportError):
                    if (await http.get(f"http://127.0.0.1:{port}/health")).status_code == 200:
                        break
                assert process.returncode is None, "culm serve exited at start"
                await asyncio.sleep(0.05)
        yield process
    finally:
        if process.returncode is None:
            process.kill()
        await process.wait()


@pytest.mark.slow  # two server starts and a stop (~10-20 s on a loaded machine)
@pytest.mark.timeout(90)
async def test_a_stream_resumes_across_a_server_restart(project: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    events: list[StreamEvent] = []
    notes: list[str] = []
    first_token = asyncio.Event()

    async def follow(client: culm.Client, run_id: str) -> None:
        async for event in client.run_events(run_id, on_retry=notes.append):
            events.append(event)
            if event.type == "token":
                first_token.set()

    async with culm.Client(url, api_key="") as client:
        async with culm_serve(project, port) as first:
            run = await client.run("go", agent="slowpoke")
            follower = asyncio.create_task(follow(client, run.run_id))
            async with asyncio.timeout(30):
                await first_token.wait()
            first.send_signal(signal.SIGTERM)
            # uvicorn re-raises the signal after its clean shutdown
            assert await asyncio.wait_for(first.wait(), 30) in (0, -signal.SIGTERM)
        async with culm_serve(project, port):
            async with asyncio.timeout(60):
                await follower
            ended = await client.wait(run.run_id, timeout=30)
            replayed = await asyncio.to_thread(_sync_replay, url, run.run_id)
            listed = await run_culm(project.parent / "home", "agents", "--server", url)

    seqs = [event.seq for event in events]
    assert seqs == list(range(1, len(seqs) + 1)), "every event once, in order, no gap"
    types = [event.type for event in events]
    assert "gap" not in types and "run_recovered" in types and types[-1] == "complete"
    assert notes, "the stream had to reconnect"
    assert ended.status is culm.RunStatus.COMPLETED and ended.agent == "slowpoke"
    assert ended.attempt == 2
    assert all(event.event is not None for event in events)  # culm's own event types
    assert replayed == [(event.seq, event.type) for event in events]
    assert listed.code == 0, listed.stderr
    assert "slowpoke" in listed.stdout and "code (shop_agents:app)" in listed.stdout


def _sync_replay(url: str, run_id: str) -> list[tuple[int, str]]:
    """The blocking client: the run's agent, and its whole stream replayed from the store."""
    with culm.SyncClient(url, api_key="") as client:
        assert [agent.name for agent in client.list_agents()] == ["slowpoke"]
        assert client.get_run(run_id).agent == "slowpoke"
        return [(event.seq, event.type) for event in client.run_events(run_id)]


async def test_culm_run_with_an_app_and_an_agent(project: Path) -> None:
    home = project.parent / "home"
    (home / "scripts" / "shouter.json").write_text(
        '{"turns": [[{"tool_call": {"name": "shout", "arguments": {"text": "hi"}}}],'
        ' [{"text": "done"}]]}'
    )
    (home / "config.toml").write_text(
        '[agents.loud]\nmodel = "scripted:shouter"\ntools = ["shout"]\n'
    )
    result = await run_culm(
        home, "run", "--app", "shop_agents:app", "--agent", "loud", "--json", "say hi",
        env={"PYTHONPATH": str(project)},
    )  # fmt: skip
    assert result.code == 0, result.stderr
    assert '"result":"HI"' in result.stdout.replace(" ", "")
