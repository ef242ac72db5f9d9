"""``GET /metrics`` after real runs and requests: ``promtool check metrics`` finds nothing wrong,
and the series dashboards are built on are there (time to first chunk, cost, HTTP requests by
route template, the process's own), with no ``_created`` series."""

from __future__ import annotations

import os
import shutil
import subprocess

import httpx2
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.api.conftest import ServerFactory

PRICED = {"scripted:priced": {"price": {"input": 2.0, "output": 10.0}}}


# Without promtool the test is skipped locally, and fails under CI=true (.ci/run installs it).
NO_PROMTOOL = shutil.which("promtool") is None and not os.environ.get("CI")


@pytest.mark.skipif(NO_PROMTOOL, reason="promtool missing (Debian package prometheus)")
async def test_the_exposition_is_promtool_clean_and_complete(make_server: ServerFactory) -> None:
    async with make_server(models=PRICED) as server:
        script = {
            "turns": [[{"text": "hi"}, {"usage": {"prompt_tokens": 100, "completion_tokens": 10}}]]
        }
        server.engine.scripts.register("priced", script)
        async with httpx2.AsyncClient(base_url=server.url, trust_env=False, timeout=10) as http:
            for _ in range(2):
                run = (
                    await http.post("/v1/runs", json={"message": "go", "model": "scripted:priced"})
                ).json()
                waited = await http.get(f"/v1/runs/{run['run_id']}/wait", params={"timeout": 20})
                assert waited.json()["status"] == "completed"
                assert waited.json()["cost_usd"] == pytest.approx(300 / 1e6)
            assert (await http.get("/v1/runs/not-a-run")).status_code == 404
            assert (await http.get("/no/such/path")).status_code == 404
            text = (await http.get("/metrics")).text
    checked = subprocess.run(
        ["promtool", "check", "metrics"], input=text, capture_output=True, text=True, timeout=30
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert checked.stdout.strip() == "" and checked.stderr.strip() == ""

    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    names = {name for name, _ in samples}
    assert not [name for name in names if name.endswith("_created")]
    assert "process_cpu_seconds_total" in names
    genai = (
        ("culm_source", "run"),
        ("gen_ai_operation_name", "chat"),
        ("gen_ai_provider_name", "scripted"),
        ("gen_ai_request_model", "priced"),
        ("gen_ai_response_model", ""),
        ("server_address", ""),
    )
    assert samples[("culm_cost_usd_total", genai)] == pytest.approx(2 * 300 / 1e6)
    assert samples[("gen_ai_client_operation_time_to_first_chunk_seconds_count", genai)] == 2

    def requests(method: str, route: str, status: int) -> float:
        labels = (
            ("http_request_method", method),
            ("http_response_status_code", str(status)),
            ("http_route", route),
        )
        return samples[("http_server_request_duration_seconds_count", labels)]

    assert requests("POST", "/v1/runs", 202) == 2
    assert requests("GET", "/v1/runs/{run_id}/wait", 200) == 2
    assert requests("GET", "/v1/runs/{run_id}", 404) == 1  # the template, never the id
    assert requests("GET", "unmatched", 404) == 1
