"""Live streams over the wire: SSE framing and resume, fan-out, reconnects, WebSocket, cancel."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from typing import Any

import httpx2
import pytest
import websockets

from tests.api.conftest import Server, ServerFactory
from tests.api.sse import Frame, frames, read_run
from tests.support import PROMPTLY


@pytest.fixture
async def client(server: Server) -> Any:
    async with httpx2.AsyncClient(base_url=server.url, timeout=30) as client:
        yield client


async def _start(client: httpx2.AsyncClient, model: str, **body: Any) -> str:
    response = await client.post("/v1/runs", json={"message": "go", "model": model, **body})
    assert response.status_code == 202, response.text
    run_id: str = response.json()["run_id"]
    return run_id


def _seqs(frames: list[Frame]) -> list[int]:
    return [int(frame.id or 0) for frame in frames]


async def test_sse_framing_and_a_finished_run_replays_and_closes(
    client: httpx2.AsyncClient,
) -> None:
    run_id = await _start(client, "scripted:demo", tools=["read"])
    live = await read_run(client, run_id)
    assert _seqs(live) == list(range(1, len(live) + 1))
    for frame in live:
        assert frame.event == frame.json["type"]
        assert frame.json["seq"] == int(frame.id or 0)
    assert live[-1].event == "complete"
    replay = await read_run(client, run_id)
    assert [f.data for f in replay] == [f.data for f in live]
    async with client.stream("GET", f"/v1/runs/{run_id}/events") as response:
        assert response.headers["cache-control"] == "no-cache"
        assert response.headers["x-accel-buffering"] == "no"
        assert response.headers["content-type"].startswith("text/event-stream")


async def test_resume_with_after_or_last_event_id(client: httpx2.AsyncClient) -> None:
    run_id = await _start(client, "scripted:demo", tools=["read"])
    full = await read_run(client, run_id)
    by_query = await read_run(client, run_id, after=5)
    by_header = await read_run(client, run_id, **{"Last-Event-ID": "5"})
    assert [f.data for f in by_query] == [f.data for f in full[5:]]
    assert [f.data for f in by_header] == [f.data for f in full[5:]]


async def test_one_hundred_subscribers_receive_the_identical_sequence(
    server: Server, client: httpx2.AsyncClient
) -> None:
    server.engine.scripts.register(
        "fan", {"turns": [[{"delay": 0.3}] + [{"text": "t"}, {"delay": 0.001}] * 300]}
    )
    run_id = await _start(client, "scripted:fan")
    limits = httpx2.Limits(max_connections=200)
    async with httpx2.AsyncClient(base_url=server.url, timeout=60, limits=limits) as many:
        results = await asyncio.gather(*(read_run(many, run_id) for _ in range(100)))
    first = [f.data for f in results[0]]
    assert len(first) > 300
    assert all([f.data for f in result] == first for result in results)
    assert _seqs(results[0]) == list(range(1, len(first) + 1))


@pytest.mark.timeout(120)
async def test_reconnecting_at_fifty_random_points_loses_and_repeats_nothing(
    server: Server, client: httpx2.AsyncClient
) -> None:
    server.engine.scripts.register("long", {"turns": [[{"text": "t"}, {"delay": 0.002}] * 400]})
    run_id = await _start(client, "scripted:long")
    rng = random.Random(1234)
    received: list[int] = []
    reconnects = 0
    while True:
        headers = {"Last-Event-ID": str(received[-1])} if received else {}
        cut_after = rng.randint(1, 25) if reconnects < 50 else None
        ended = False
        async with client.stream("GET", f"/v1/runs/{run_id}/events", headers=headers) as response:
            count = 0
            async for frame in frames(response):
                if frame.comment is not None:
                    continue
                received.append(int(frame.id or 0))
                count += 1
                if frame.event == "complete":
                    ended = True
                    break
                if cut_after is not None and count >= cut_after:
                    break  # drop the connection mid-stream
        if ended:
            break
        reconnects += 1
    assert reconnects >= 20
    assert received == list(range(1, len(received) + 1))


async def test_pings_keep_an_idle_stream_alive(make_server: ServerFactory) -> None:
    async with make_server(sse_ping_seconds=0.1) as server:
        server.engine.scripts.register("idle", {"turns": [[{"delay": 0.5}, {"text": "x"}]]})
        async with httpx2.AsyncClient(base_url=server.url, timeout=10) as client:
            run_id = await _start(client, "scripted:idle")
            seen: list[Frame] = []
            async with client.stream("GET", f"/v1/runs/{run_id}/events") as response:
                async for frame in frames(response):
                    seen.append(frame)
    comments = [f.comment for f in seen if f.comment is not None]
    assert "ping" in comments
    # The stream ends (the loop above returns) after its terminal event. A ping may still come
    # between that event and the end (sse-starlette's ping task runs beside the events, and a
    # comment is no event to a client): the rehearsal once saw one there.
    events = [f for f in seen if f.comment is None]
    assert events[-1].event == "complete"


async def test_session_stream_gives_the_replay_cache_then_live(
    server: Server, client: httpx2.AsyncClient
) -> None:
    session = (await client.post("/v1/sessions", json={"model": "scripted:echo"})).json()
    first = (
        await client.post(f"/v1/sessions/{session['session_id']}/runs", json={"message": "a"})
    ).json()
    await client.get(f"/v1/runs/{first['run_id']}/wait")
    seen: list[Frame] = []
    async with client.stream("GET", f"/v1/sessions/{session['session_id']}/events") as response:
        async for frame in frames(response):
            if frame.comment is not None:
                continue
            seen.append(frame)
            if len(seen) == 3:  # the cache of the finished run
                await client.post(
                    f"/v1/sessions/{session['session_id']}/runs", json={"message": "b"}
                )
            if len(seen) > 3 and frame.event == "complete":  # the live run's end
                break
    assert [f.event for f in seen[:3]] == ["execution_started", "token_budget_updated", "complete"]
    assert {f.json["run_id"] for f in seen[:3]} == {first["run_id"]}
    assert seen[-1].event == "complete"
    assert seen[-1].json["run_id"] != first["run_id"]


async def test_a_gone_client_frees_its_subscription(
    server: Server, client: httpx2.AsyncClient
) -> None:
    run_id = await _start(client, "scripted:slow")
    async with client.stream("GET", f"/v1/runs/{run_id}/events") as response:
        async for frame in frames(response):
            if frame.event == "token":
                break
        runner = server.engine.registry.get(run_id)
        assert runner is not None and runner.subscriber_count == 1
    async with asyncio.timeout(5):
        while runner.subscriber_count:
            await asyncio.sleep(0.02)
    await client.post(f"/v1/runs/{run_id}/cancel", params={"wait": "true"})


async def _ws_session(
    server: Server, run_id: str, *, first: Any = None, query: str = ""
) -> tuple[list[dict[str, Any]], int | None]:
    """Every frame the server sends, and the close code it ends with."""
    url = server.url.replace("http", "ws") + f"/v1/runs/{run_id}/ws{query}"
    received: list[dict[str, Any]] = []
    async with websockets.connect(url) as ws:
        if first is not None:
            await ws.send(json.dumps(first))
        try:
            while True:
                received.append(json.loads(await ws.recv()))
        except websockets.ConnectionClosed as closed:
            return received, closed.rcvd.code if closed.rcvd else None


async def _ws_events(server: Server, run_id: str, **kwargs: Any) -> list[dict[str, Any]]:
    events, code = await _ws_session(server, run_id, **kwargs)
    assert code == 1000
    return events


async def test_websocket_streams_the_same_events(
    server: Server, client: httpx2.AsyncClient
) -> None:
    run_id = await _start(client, "scripted:demo", tools=["read"])
    sse = [f.json for f in await read_run(client, run_id)]
    assert await _ws_events(server, run_id) == sse  # no frame: from the start, after a wait
    assert await _ws_events(server, run_id, first={}) == sse
    assert await _ws_events(server, run_id, first={"after": 4}) == sse[4:]
    assert await _ws_events(server, run_id, query="?after=7") == sse[7:]


async def test_websocket_honours_a_cursor_frame_sent_late(
    server: Server, client: httpx2.AsyncClient
) -> None:
    """A first frame ``{"after": N}`` sent 0.25 s after connecting was ignored: the stream
    replayed from seq 1. The client here sends it once the run has emitted ten more events
    (``scripted:slow``: one every 50 ms), then a second cursor, which is refused."""
    run_id = await _start(client, "scripted:slow")
    url = server.url.replace("http", "ws") + f"/v1/runs/{run_id}/ws"
    async with websockets.connect(url) as ws:
        connected_at = (await server.engine.get_run(run_id)).last_seq
        async with contextlib.aclosing(server.engine.subscribe(run_id)) as events:
            async for event in events:
                if event.seq >= connected_at + 10:
                    break
        await ws.send(json.dumps({"after": connected_at + 5}))
        first = json.loads(await ws.recv())
        assert first["seq"] == connected_at + 6
        await ws.send(json.dumps({"after": 1}))
        received = []
        with pytest.raises(websockets.ConnectionClosed) as closed:
            while True:
                received.append(json.loads(await ws.recv()))
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
    assert received[-1]["error"]["code"] == "invalid_request"
    assert "must come first" in received[-1]["error"]["message"]
    seqs = [frame["seq"] for frame in received[:-1]]
    assert seqs == list(range(connected_at + 7, connected_at + 7 + len(seqs)))
    await client.post(f"/v1/runs/{run_id}/cancel", params={"wait": "true"})


async def test_websocket_errors_close_with_a_reason(
    server: Server, client: httpx2.AsyncClient
) -> None:
    missing, code = await _ws_session(server, "missing")
    assert missing[0]["error"]["code"] == "not_found"
    assert code == 4404
    run_id = await _start(client, "scripted:echo")
    for first in ({"after": -1}, {"after": 10**30}, {"after": "²"}, {"cursor": 1}):
        bad, code = await _ws_session(server, run_id, first=first)
        assert bad[0]["error"]["code"] == "invalid_request", first
        assert code == 1008
    huge, code = await _ws_session(server, run_id, query="?after=" + "9" * 5000)
    assert huge[0]["error"]["code"] == "invalid_request" and code == 1008
    assert len(huge[0]["error"]["message"]) < 200


async def test_http_cancel_inside_a_model_stream_promptly(
    server: Server, client: httpx2.AsyncClient
) -> None:
    server.engine.scripts.register("hang", {"turns": [[{"text": "a"}, {"delay": 60}]]})
    run_id = await _start(client, "scripted:hang")
    async with client.stream("GET", f"/v1/runs/{run_id}/events") as response:
        async for frame in frames(response):
            if frame.event == "token":
                break
    started = time.monotonic()
    done = await client.post(f"/v1/runs/{run_id}/cancel", params={"wait": "true"})
    assert time.monotonic() - started < PROMPTLY
    assert done.json()["status"] == "cancelled"


async def test_http_cancel_inside_a_bash_command_promptly(
    server: Server, client: httpx2.AsyncClient
) -> None:
    turn = [{"tool_call": {"name": "bash", "arguments": {"command": "echo started; sleep 60"}}}]
    server.engine.scripts.register("shell", {"turns": [turn]})
    run_id = await _start(client, "scripted:shell", tools=["bash"])
    async with client.stream("GET", f"/v1/runs/{run_id}/events") as response:
        async for frame in frames(response):
            if frame.event == "tool_token":
                break
    started = time.monotonic()
    done = await client.post(f"/v1/runs/{run_id}/cancel", params={"wait": "true"})
    assert time.monotonic() - started < PROMPTLY
    assert done.json()["status"] == "cancelled"
    assert done.json()["last_tool_name"] == "bash"


async def test_websocket_frames_that_are_no_cursor_are_ignored_mid_stream(
    server: Server, client: httpx2.AsyncClient
) -> None:
    """Only a late ``{"after": N}`` is refused; other text the client sends (not JSON, an
    object without ``after``, a list) leaves the stream running to its end."""
    server.engine.scripts.register(
        "ticks", {"turns": [[{"delay": 0.05}, {"text": "tick "}] * 20 + [{"text": "done"}]]}
    )
    run_id = await _start(client, "scripted:ticks")
    url = server.url.replace("http", "ws") + f"/v1/runs/{run_id}/ws?after=0"
    received: list[dict[str, Any]] = []
    async with websockets.connect(url) as ws:
        received.append(json.loads(await ws.recv()))
        for text in ("hello", "", "{}", '{"ping": 1}', '["after"]', "null"):
            await ws.send(text)
        with pytest.raises(websockets.ConnectionClosed) as closed:
            while True:
                received.append(json.loads(await ws.recv()))
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1000
    assert [frame["seq"] for frame in received] == list(range(1, len(received) + 1))
    assert received[-1]["type"] == "complete"


async def test_websocket_first_frame_errors_say_what_is_expected(
    server: Server, client: httpx2.AsyncClient
) -> None:
    run_id = await _start(client, "scripted:echo")
    url = server.url.replace("http", "ws") + f"/v1/runs/{run_id}/ws"
    expected = {
        "not json": 'the first frame must be JSON: {"after": N}',
        "[1]": 'the first frame must be {"after": N}',
        '{"after": 1, "x": 2}': 'the first frame must be {"after": N}',
    }
    for text, message in expected.items():
        async with websockets.connect(url) as ws:
            await ws.send(text)
            error = json.loads(await ws.recv())
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await ws.recv()
        assert error == {"error": {"code": "invalid_request", "message": message}}
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008


MAX_SEQ = 2**63 - 1  # the store's signed 64-bit seq


@pytest.mark.parametrize(
    ("first", "query", "message"),
    [
        ({"after": True}, "", "after must be a non-negative integer, got True"),
        ({"after": 1.5}, "", "after must be a non-negative integer, got 1.5"),
        ({"after": None}, "", "after must be a non-negative integer, got None"),
        ({"after": "²"}, "", "after must be a non-negative integer, got '²'"),
        ({"after": -1}, "", f"after must be an integer from 0 to {MAX_SEQ}, got -1"),
        (
            None,
            f"?after={MAX_SEQ + 1}",
            f"after must be an integer from 0 to {MAX_SEQ}, got '{MAX_SEQ + 1}'",
        ),
        (
            None,
            "?after=" + "x" * 40,
            f"after must be an integer from 0 to {MAX_SEQ}, got '{'x' * 40}'",
        ),
        (
            None,
            "?after=" + "y" * 41,
            f"after must be an integer from 0 to {MAX_SEQ}, got {'y' * 20}… (41 characters)",
        ),
    ],
)
async def test_websocket_cursor_errors_show_the_value(
    server: Server, client: httpx2.AsyncClient, first: Any, query: str, message: str
) -> None:
    run_id = await _start(client, "scripted:echo")
    sent, code = await _ws_session(server, run_id, first=first, query=query)
    assert sent == [{"error": {"code": "invalid_request", "message": message}}]
    assert code == 1008


async def test_a_websocket_at_the_last_cursor_of_a_finished_run_closes_1000_at_once(
    server: Server, client: httpx2.AsyncClient
) -> None:
    done = await _start(client, "scripted:echo")
    await read_run(client, done)
    assert await _ws_events(server, done, query=f"?after={MAX_SEQ}") == []


async def test_a_websocket_for_a_missing_run_says_which(server: Server) -> None:
    sent, code = await _ws_session(server, "no-such-run")
    assert sent == [{"error": {"code": "not_found", "message": "run 'no-such-run' not found"}}]
    assert code == 4404


async def test_a_ping_is_a_comment_framed_like_the_events(make_server: ServerFactory) -> None:
    """Every line of the stream ends with ``\\n`` (events and pings alike)."""
    async with make_server(sse_ping_seconds=0.1) as server:
        server.engine.scripts.register("idle", {"turns": [[{"delay": 0.5}, {"text": "x"}]]})
        async with httpx2.AsyncClient(base_url=server.url, timeout=10) as client:
            run_id = await _start(client, "scripted:idle")
            async with client.stream("GET", f"/v1/runs/{run_id}/events") as response:
                raw = b"".join([chunk async for chunk in response.aiter_bytes()])
    assert b": ping\n\n" in raw
    assert b"\r" not in raw
