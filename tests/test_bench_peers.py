"""bench/peers.py's culm side at tiny sizes, so that the side-by-side benchmark cannot rot: the
script starts its fake upstream, runs culm's runner in its own process, checks the model calls
and the tokens, and writes its JSON and table. The peers' venv is not needed (culm alone)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx2

BENCH = Path(__file__).resolve().parent.parent / "bench"


def peers(tmp_path: Path, *arguments: str) -> tuple[dict[str, Any], str]:
    result = tmp_path / "peers.json"
    command = [sys.executable, str(BENCH / "peers.py"), "--systems", "culm", "--pairs", "1"]
    command += ["--tokens", "5", "--token-delay-ms", "1", "--json", str(result), *arguments]
    done = subprocess.run(command, capture_output=True, text=True, timeout=50)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(result.read_text()), done.stdout


def figures(data: dict[str, Any], scenario: str) -> dict[str, Any]:
    (measured,) = [s for s in data["sets"] if s["scenario"] == scenario]
    (result,) = measured["results"]
    assert result["system"] == "culm"
    assert result["error_count"] == 0, result["errors"]
    return result


def test_concurrent_streaming_runs_are_measured_and_checked(tmp_path: Path) -> None:
    data, table = peers(
        tmp_path, "--only", "conc", "--modes", "stream", "--conc-runs", "4", "--concurrency", "2"
    )
    result = figures(data, "conc")
    assert result["runs_started"] == 4 + 2
    assert result["token_events"] == 6 * 5  # every token of every run, seen by its subscriber
    assert result["model_calls"] == 6 * 2  # the tool round and the answer round, per run
    assert result["runs_per_s"] > 0
    assert 0 < result["first_token_ms_p50"] <= result["first_token_ms_p99"]
    assert "| conc | stream | runs/s" in table
    assert data["meta"]["versions"]["culm"]


def test_parked_runs_all_reach_the_upstream(tmp_path: Path) -> None:
    data, table = peers(tmp_path, "--only", "parked", "--parked", "5")
    result = figures(data, "parked")
    assert result["requests_seen"] == 5
    assert result["model_calls"] == 5  # round 1 of each run, held by the upstream
    assert result["all_waiting_s"] > 0
    assert result["held_before"] == 0  # peers.py waited for the upstream to hold nothing
    assert result["connections"] == 5  # one per waiting request, none reopened
    assert result["cpu_s"] > 0
    assert "| parked | parked | all waiting" in table


def test_a_parked_request_leaves_the_count_when_its_client_hangs_up() -> None:
    """A parked sample's process exits with its requests held: the next sample must not find
    them still counted (the upstream's ``parked_now`` at its start is subtracted)."""
    sys.path.insert(0, str(BENCH / "peers"))
    from upstream import Upstream  # bench/peers/upstream.py

    with Upstream("parked", 3, 0.0, park_s=60) as upstream:
        host, port = upstream.base_url.split("//")[1].split("/")[0].split(":")
        body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "go"}]})
        head = f"POST /v1/chat/completions HTTP/1.1\r\ncontent-length: {len(body)}\r\n\r\n"
        with socket.create_connection((host, int(port))) as client:
            client.sendall((head + body).encode())
            while upstream.stats()["tool_rounds"] == 0:  # until the upstream has read it
                pass
            assert upstream.stats()["parked_now"] == 1  # held: no answer for 60 s
        assert upstream.drained(timeout=10) == 0  # long before the 60 s it would hold it
        assert upstream.stats()["tool_rounds"] == 1


def test_culm_serve_is_measured_over_http(tmp_path: Path) -> None:
    data, table = peers(
        tmp_path, "--only", "http", "--modes", "write", "--conc-runs", "3", "--concurrency", "3"
    )
    result = figures(data, "http")  # a real `culm serve`: POST /v1/runs, then its SSE stream
    assert result["token_events"] == (3 + 2) * 5
    assert result["model_calls"] == (3 + 2) * 2
    assert result["server_cpu_ms_per_run"] > 0
    assert "| http | write | runs/s" in table


def test_the_fake_upstream_plays_the_two_round_tool_task() -> None:
    command = [sys.executable, str(BENCH / "fake_openai.py"), "--port", "0", "--chunks", "3"]
    with subprocess.Popen([*command, "--tool", "noop"], stdout=subprocess.PIPE, text=True) as up:
        try:
            check_two_rounds(up)
        finally:
            up.terminate()


def check_two_rounds(upstream: subprocess.Popen[str]) -> None:
    assert upstream.stdout is not None
    base = upstream.stdout.readline().split()[-1]
    tools = [{"type": "function", "function": {"name": "list_dir", "parameters": {}}}]
    first = {"model": "m", "messages": [{"role": "user", "content": "go"}]}
    call = httpx2.post(f"{base}/chat/completions", json=first).json()["choices"][0]
    assert call["finish_reason"] == "tool_calls"  # no tools offered: --tool's
    assert call["message"]["tool_calls"][0]["function"] == {"name": "noop", "arguments": "{}"}
    offered = httpx2.post(f"{base}/chat/completions", json={**first, "tools": tools}).json()
    assert offered["choices"][0]["message"]["tool_calls"][0]["function"]["name"] == "list_dir"
    result = {"role": "tool", "tool_call_id": "call_bench", "content": "ok"}
    second = {**first, "messages": [*first["messages"], result], "stream": True}
    streamed = httpx2.post(f"{base}/chat/completions", json=second).text
    assert streamed.count('"content":"w') == 3 and streamed.endswith("data: [DONE]\n\n")
    stats = httpx2.get(base.removesuffix("/v1") + "/stats").json()
    assert (stats["tool_rounds"], stats["answer_rounds"], stats["chat"]) == (2, 1, 3)
