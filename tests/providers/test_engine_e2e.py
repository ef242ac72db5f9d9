"""Whole runs through the Engine against the local fake upstream, one per wire format."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import culm
from culm.settings import Settings
from tests.providers.fakes import FakeUpstream, Reply, anthropic_events, json_reply, openai_events
from tests.support import collect, types


def _settings(upstream: FakeUpstream, home: Path) -> Settings:
    return Settings(
        home=home,
        openai_api_key="sk-test",
        openai_base_url=f"{upstream.url}/v1",
        anthropic_api_key="ak-test",
        anthropic_base_url=upstream.url,
        model_retry_base_delay=0.01,
    )


def _openai_chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


def _openai_usage(prompt: int, completion: int, cached: int = 0) -> dict[str, Any]:
    return {
        "choices": [],
        "usage": {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": cached},
        },
    }


async def test_openai_run_with_a_split_tool_call(upstream: FakeUpstream, tmp_path: Path) -> None:
    (tmp_path / "ws").mkdir()
    (tmp_path / "ws" / "notes.txt").write_text("hello")
    call = {"index": 0, "id": "call_1", "type": "function", "function": {"name": "list_dir"}}
    upstream.push(
        Reply(
            chunks=openai_events(
                _openai_chunk({"role": "assistant", "content": ""}),
                _openai_chunk(
                    {"tool_calls": [call | {"function": {"name": "list_dir", "arguments": '{"pa'}}]}
                ),
                _openai_chunk(
                    {"tool_calls": [{"index": 0, "function": {"arguments": 'th": "."}'}}]}
                ),
                _openai_chunk({}, finish="tool_calls"),
                _openai_usage(50, 9, cached=10),
                "[DONE]",
            )
        ),
        Reply(
            chunks=openai_events(
                _openai_chunk({"content": "One file: "}),
                _openai_chunk({"content": "notes.txt"}, finish="stop"),
                _openai_usage(80, 4),
                "[DONE]",
            )
        ),
    )
    async with culm.Engine(_settings(upstream, tmp_path)) as engine:
        run = await engine.run(
            "what is here?", model="openai:gpt-4o-mini", tools=["read"], workspace=tmp_path / "ws"
        )
        events = await collect(engine.subscribe(run.run_id))
    assert types(events)[-1] == "complete"
    tool_done = next(e for e in events if e.type == "tool_complete")
    assert "notes.txt" in tool_done.result
    assert events[-1].final_message == "One file: notes.txt"
    assert events[-1].usage == culm.Usage(
        prompt_tokens=130, completion_tokens=13, total_tokens=143, cache_read_tokens=10
    )
    second = upstream.requests[1].json()
    assert second["messages"][-1]["role"] == "tool"
    assert second["messages"][-1]["tool_call_id"] == "call_1"
    assert second["stream_options"] == {"include_usage": True}
    assert upstream.requests[0].headers["authorization"] == "Bearer sk-test"


def _anthropic_turn(blocks: list[dict[str, Any]], usage_in: int, usage_out: int) -> Reply:
    events: list[dict[str, Any]] = [
        {
            "type": "message_start",
            "message": {"usage": {"input_tokens": usage_in, "output_tokens": 1}},
        }
    ]
    for index, block in enumerate(blocks):
        if block["type"] == "text":
            events += [
                {
                    "type": "content_block_start",
                    "index": index,
                    "content_block": {"type": "text", "text": ""},
                },
                {
                    "type": "content_block_delta",
                    "index": index,
                    "delta": {"type": "text_delta", "text": block["text"]},
                },
            ]
        else:
            start = {"type": "tool_use", "id": block["id"], "name": block["name"], "input": {}}
            raw = json.dumps(block["input"])
            events += [
                {"type": "content_block_start", "index": index, "content_block": start},
                {
                    "type": "content_block_delta",
                    "index": index,
                    "delta": {"type": "input_json_delta", "partial_json": raw[:5]},
                },
                {
                    "type": "content_block_delta",
                    "index": index,
                    "delta": {"type": "input_json_delta", "partial_json": raw[5:]},
                },
            ]
        events.append({"type": "content_block_stop", "index": index})
    stop = "tool_use" if any(b["type"] == "tool_use" for b in blocks) else "end_turn"
    events += [
        {
            "type": "message_delta",
            "delta": {"stop_reason": stop},
            "usage": {"output_tokens": usage_out},
        },
        {"type": "message_stop"},
    ]
    return Reply(chunks=anthropic_events(*events))


async def test_anthropic_run_with_tool_use(upstream: FakeUpstream, tmp_path: Path) -> None:
    upstream.push(
        _anthropic_turn(
            [
                {"type": "text", "text": "Looking."},
                {"type": "tool_use", "id": "tu_1", "name": "glob", "input": {"pattern": "*"}},
            ],
            usage_in=40,
            usage_out=12,
        ),
        _anthropic_turn([{"type": "text", "text": "Nothing here."}], usage_in=70, usage_out=5),
    )
    async with culm.Engine(_settings(upstream, tmp_path)) as engine:
        run = await engine.run("look", model="anthropic:claude-sonnet-4-5", tools=["glob"])
        events = await collect(engine.subscribe(run.run_id))
    assert types(events)[-1] == "complete"
    assert [e.content for e in events if e.type == "token"] == ["Looking.", "Nothing here."]
    assert events[-1].usage == culm.Usage(prompt_tokens=110, completion_tokens=17, total_tokens=127)
    follow_up = upstream.requests[1].json()["messages"][-1]
    assert follow_up["role"] == "user"
    assert follow_up["content"][0]["type"] == "tool_result"
    assert follow_up["content"][0]["tool_use_id"] == "tu_1"


async def test_a_429_with_retry_after_is_retried_over_the_wire(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    upstream.push(
        json_reply(429, {"error": {"message": "Rate limit reached"}}, {"retry-after": "0"}),
        Reply(
            chunks=openai_events(
                _openai_chunk({"content": "ok"}, finish="stop"), _openai_usage(3, 1), "[DONE]"
            )
        ),
    )
    async with culm.Engine(_settings(upstream, tmp_path)) as engine:
        run = await engine.run("hi", model="openai:gpt-4o-mini")
        done = await engine.wait(run.run_id, timeout=10)
    assert done.status is culm.RunStatus.COMPLETED
    assert len(upstream.requests) == 2
    assert done.usage.total_tokens == 4


async def test_an_auth_error_fails_the_run_naming_the_cause(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    upstream.push(json_reply(401, {"error": {"message": "Incorrect API key provided"}}))
    async with culm.Engine(_settings(upstream, tmp_path)) as engine:
        run = await engine.run("hi", model="openai:gpt-4o-mini")
        events = await collect(engine.subscribe(run.run_id))
    assert events[-1].type == "error"
    assert events[-1].code == "model_auth_error"
    assert "Incorrect API key provided" in events[-1].message
    assert len(upstream.requests) == 1


async def test_local_servers_need_no_api_key(
    upstream: FakeUpstream, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(f"CULM_{name}", raising=False)
    upstream.push(
        _anthropic_turn([{"type": "text", "text": "local"}], usage_in=3, usage_out=1),
        Reply(
            chunks=openai_events(
                _openai_chunk({"content": "local"}, finish="stop"), _openai_usage(3, 1), "[DONE]"
            )
        ),
    )
    settings = Settings(
        home=tmp_path, openai_base_url=f"{upstream.url}/v1", anthropic_base_url=upstream.url
    )
    async with culm.Engine(settings) as engine:
        for model in ("anthropic:claude-sonnet-4-5", "openai:llama3.2"):
            run = await engine.run("hi", model=model)
            done = await engine.wait(run.run_id, timeout=10)
            assert (done.status, done.error) == (culm.RunStatus.COMPLETED, None), model
    assert len(upstream.requests) == 2
    for request in upstream.requests:
        assert "x-api-key" not in request.headers
        assert "authorization" not in request.headers
