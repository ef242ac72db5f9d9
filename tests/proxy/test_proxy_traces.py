"""With traces exported, a proxied call made by a run's tool joins the run's trace: its span is
below the tool call's, and the call is still linked to the run in the metrics, with its cost."""

from __future__ import annotations

import uuid
from pathlib import Path

import httpx2
import pytest

from tests.proxy import wire
from tests.proxy.conftest import ProxyFactory
from tests.proxy.test_proxy import body_reply, proxy_call_command
from tests.tracing.receiver import OTLPReceiver


async def test_a_tools_proxied_call_joins_the_runs_trace(
    make_proxy: ProxyFactory, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    with OTLPReceiver() as receiver:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint)
        async with make_proxy() as proxy:
            proxy.upstream.push(
                body_reply(wire.chat_completion({"role": "assistant", "content": "pong"}))
            )
            url = f"{proxy.openai_url}/chat/completions"
            command = proxy_call_command(url, "traceparent", "TRACEPARENT")
            call = {"tool_call": {"name": "bash", "arguments": {"command": command}}}
            proxy.server.engine.scripts.register("proxied", {"turns": [[call], [{"text": "ok"}]]})
            async with httpx2.AsyncClient(base_url=proxy.url, trust_env=False) as http:
                created = await http.post(
                    "/v1/runs",
                    json={"message": "go", "model": "scripted:proxied", "tools": ["bash"]},
                )
                run = created.json()
                waited = await http.get(f"/v1/runs/{run['run_id']}/wait", params={"timeout": 20})
                assert waited.json()["status"] == "completed"
            record = await proxy.record()
            assert record.trace_id == run["run_id"]  # still linked to the run
            assert record.cost_usd == pytest.approx(
                proxy.server.engine.pricer.cost("openai:gpt-4o", wire.CHAT_USAGE_MAPPED)
            )
        spans = receiver.spans
    (bash,) = [s for s in spans if s.name == "execute_tool bash"]
    (proxied,) = [s for s in spans if s.name == "chat gpt-4o"]
    assert proxied.trace_id == bash.trace_id == uuid.UUID(run["run_id"]).hex
    assert proxied.parent_span_id == bash.span_id
    assert proxied.attributes["server.address"] == "127.0.0.1"
    assert proxied.attributes["gen_ai.provider.name"] == "openai"
    assert proxied.attributes["gen_ai.request.model"] == "gpt-4o"
    assert proxied.attributes["http.response.status_code"] == 200
    usage = wire.CHAT_USAGE_MAPPED
    assert proxied.attributes["gen_ai.usage.input_tokens"] == usage.prompt_tokens
    assert proxied.attributes["gen_ai.usage.output_tokens"] == usage.completion_tokens
