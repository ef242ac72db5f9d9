"""kill -9 of a real `culm serve` while a client follows a streaming run over SSE.

Events reach a live client before they are stored (within the run's committed seq
reservation), so the store may hold fewer than the client saw. After a restart on the same
database (recovery policy `error`, then `requeue`) the client resumes with `after=<highest seq it
saw>` and gets an explicit `gap` for the seqs reserved but not stored, then the rest: the `error`
(interrupted) terminal event, or the new attempt's events then its terminal event. No seq it saw
is reused with other content: every stored event up to that seq is the one it saw, before the
restart and after it, and a full replay accounts for every seq once (an event or a gap).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
from pathlib import Path
from typing import Any

import httpx2
import pytest

from culm.domain.events import event_from_dict, event_to_dict
from culm.storage.sql import SqlStore
from tests.api.sse import frames, read_run
from tests.api.test_serve import culm_serve

# Streams a token every 10 ms for minutes: the server is killed mid-run.
STREAMING = {"turns": [[{"delay": 0.01}, {"text": "tok"}] * 20_000]}
AFTER_RESTART = {"turns": [[{"text": "finished after the restart"}]]}
SEEN_BEFORE_KILL = 25


def _script(home: Path, name: str, script: dict[str, Any]) -> None:
    (home / "scripts").mkdir(parents=True, exist_ok=True)
    (home / "scripts" / f"{name}.json").write_text(json.dumps(script))


async def _follow_then_kill(home: Path, env: dict[str, str]) -> tuple[str, dict[int, Any]]:
    """Start a streaming run, follow it over SSE, kill -9 the server once the client has seen
    ``SEEN_BEFORE_KILL`` events, its stream still open. Returns the run and what it saw."""
    seen: dict[int, Any] = {}
    async with (
        culm_serve(home, **env) as (process, url),
        httpx2.AsyncClient(base_url=url, timeout=30) as client,
    ):
        response = await client.post("/v1/runs", json={"message": "go", "model": "scripted:s"})
        run_id = response.json()["run_id"]
        # The client keeps reading until the connection breaks: it sees what it sees.
        with contextlib.suppress(httpx2.TransportError):
            async with client.stream("GET", f"/v1/runs/{run_id}/events") as stream:
                async for frame in frames(stream):
                    if frame.comment is None:
                        assert frame.id is not None and int(frame.id) == frame.json["seq"]
                        seen[frame.json["seq"]] = frame.json
                        if len(seen) == SEEN_BEFORE_KILL:
                            process.send_signal(signal.SIGKILL)
        assert await process.wait() == -signal.SIGKILL
    assert len(seen) >= SEEN_BEFORE_KILL
    assert sorted(seen) == list(range(1, len(seen) + 1))
    assert "complete" not in {event["type"] for event in seen.values()}
    return run_id, seen


async def _stored(url: str, run_id: str, up_to: int) -> list[dict[str, Any]]:
    store = SqlStore(url)
    await store.start()
    try:
        return [event_to_dict(e) for e in await store.read_events(run_id) if e.seq <= up_to]
    finally:
        await store.aclose()


def _normal(event: dict[str, Any]) -> dict[str, Any]:
    return event_to_dict(event_from_dict(event))


@pytest.mark.timeout(120)
@pytest.mark.parametrize("policy", ["error", "requeue"])
async def test_a_client_resumes_a_killed_servers_run_after_the_restart(
    tmp_path: Path, database_url: str, policy: str
) -> None:
    env = {"CULM_DATABASE_URL": database_url, "CULM_RECOVERY_POLICY": policy}
    _script(tmp_path, "s", STREAMING)
    run_id, seen = await _follow_then_kill(tmp_path, env)
    highest = max(seen)
    before = await _stored(database_url, run_id, highest)
    # What is stored of what the client saw is a prefix of it, as it saw it.
    assert before == [_normal(seen[seq]) for seq in range(1, len(before) + 1)]

    _script(tmp_path, "s", AFTER_RESTART)
    async with (
        culm_serve(tmp_path, **env) as (_, url),
        httpx2.AsyncClient(base_url=url, timeout=30) as client,
    ):
        async with asyncio.timeout(60):
            resumed = [frame.json for frame in await read_run(client, run_id, after=highest)]
        run = (await client.get(f"/v1/runs/{run_id}")).json()
    seqs = _accounted(resumed)
    assert seqs == list(range(highest + 1, highest + 1 + len(seqs)))  # nothing seen again
    # The seqs reserved past what was stored are a gap (whether the client saw them or not),
    # and recovery's events come after it.
    [gap] = [event for event in resumed if event["type"] == "gap"]
    assert gap["to_seq"] >= highest
    recovered = [event for event in resumed if event["type"] == "run_recovered"]
    assert resumed.index(gap) + 1 == resumed.index(recovered[0])
    assert len(recovered) == 1 and recovered[0]["previous_attempt"] == 1
    after_recovery = [event["type"] for event in resumed[resumed.index(recovered[0]) + 1 :]]
    if policy == "error":
        assert recovered[0]["action"] == "errored"
        assert after_recovery == ["error"]
        assert (resumed[-1]["code"], resumed[-1]["message"]) == ("interrupted", "interrupted")
        assert (run["status"], run["error"], run["attempt"]) == ("error", "interrupted", 1)
    else:
        assert recovered[0]["action"] == "requeued"
        assert after_recovery[0] == "execution_started"
        assert resumed[resumed.index(recovered[0]) + 1]["attempt"] == 2
        assert after_recovery[-1] == "complete"
        assert resumed[-1]["final_message"] == "finished after the restart"
        assert (run["status"], run["attempt"]) == ("completed", 2)
    assert run["last_seq"] == seqs[-1]
    # The events up to what the client saw are still the same, after the restart too.
    assert await _stored(database_url, run_id, highest) == before
    # A full replay: what the client saw, stored or in the gap, then the rest, every seq once.
    async with (
        culm_serve(tmp_path, **env) as (_, url),
        httpx2.AsyncClient(base_url=url, timeout=30) as client,
    ):
        replay = [frame.json for frame in await read_run(client, run_id, after=0)]
    assert _accounted(replay) == list(range(1, seqs[-1] + 1))
    [full_gap] = [event for event in replay if event["type"] == "gap"]
    assert (full_gap["to_seq"], full_gap["seq"]) == (gap["to_seq"], gap["seq"])
    assert [_normal(event) for event in replay[: len(before)]] == before


def _accounted(events: list[dict[str, Any]]) -> list[int]:
    """The seqs ``events`` stand for: each event's own, a gap's whole range."""
    seqs: list[int] = []
    for event in events:
        if event["type"] == "gap":
            seqs += range(event["from_seq"], event["to_seq"] + 1)
        else:
            seqs.append(event["seq"])
    return seqs
