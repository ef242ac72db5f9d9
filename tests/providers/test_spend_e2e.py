"""A real provider's round (the local fake OpenAI server): its cost is the price table's, the
model that answered is recorded, and /metrics labels it with the provider's host."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

import culm
from culm.metrics.prometheus import PrometheusExporter
from culm.settings import Settings
from tests.providers.fakes import FakeUpstream, Reply, openai_events
from tests.support import collect

ANSWERED_BY = "gpt-4o-2024-08-06"


async def test_a_priced_models_round_costs_what_the_table_says(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    usage = {
        "prompt_tokens": 1000,
        "completion_tokens": 100,
        "total_tokens": 1100,
        "prompt_tokens_details": {"cached_tokens": 200},
    }
    upstream.push(
        Reply(
            chunks=openai_events(
                {"model": ANSWERED_BY, "choices": [{"index": 0, "delta": {"content": "hi"}}]},
                {
                    "model": ANSWERED_BY,
                    "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
                },
                {"model": ANSWERED_BY, "choices": [], "usage": usage},
                "[DONE]",
            )
        )
    )
    settings = Settings(
        home=tmp_path, openai_api_key="sk-test", openai_base_url=f"{upstream.url}/v1"
    )
    async with culm.Engine(settings) as engine:
        exporter = PrometheusExporter(
            engine.metrics,
            active_runs=lambda: 0,
            price=engine.pricer.cost,
            server_of=lambda p: "127.0.0.1",
        )
        run = await engine.run("hello", model="openai:gpt-4o")
        events = await collect(engine.subscribe(run.run_id))
        ended = await engine.get_run(run.run_id)
        text = exporter.render().decode()
    (round_done,) = [e for e in events if e.type == "round_completed"]
    # gpt-4o: $2.50 / M input, $1.25 / M cached input, $10 / M output (genai-prices' table).
    expected = (800 * 2.50 + 200 * 1.25 + 100 * 10.0) / 1_000_000
    assert round_done.cost_usd == pytest.approx(expected)  # type: ignore[union-attr]
    assert round_done.response_model == ANSWERED_BY  # type: ignore[union-attr]
    assert round_done.first_chunk_ms is not None  # type: ignore[union-attr]
    assert ended.cost_usd == pytest.approx(expected)
    labels = {
        "gen_ai_operation_name": "chat",
        "gen_ai_provider_name": "openai",
        "gen_ai_request_model": "gpt-4o",
        "gen_ai_response_model": ANSWERED_BY,
        "server_address": "127.0.0.1",
        "culm_source": "run",
    }
    samples = {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    assert samples[("culm_cost_usd_total", frozenset(labels.items()))] == pytest.approx(expected)
    assert (
        samples[
            ("gen_ai_client_operation_time_to_first_chunk_seconds_count", frozenset(labels.items()))
        ]
        == 1
    )
