"""The providers' HTTP client honours ``HTTPS_PROXY`` and ``SSL_CERT_FILE``: a run's model
calls reach a TLS server (a self-signed certificate trusted only through ``SSL_CERT_FILE``)
through a ``CONNECT`` proxy, all on 127.0.0.1."""

from __future__ import annotations

from pathlib import Path

import pytest

import culm
from culm.settings import Settings
from tests.providers.fakes import openai_events
from tests.proxy.tunnel import answering, http_proxy, self_signed, serving

STREAM = b"".join(
    openai_events(
        {"choices": [{"index": 0, "delta": {"content": "via tunnel"}, "finish_reason": "stop"}]},
        {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}},
        "[DONE]",
    )
)


async def test_model_calls_go_through_https_proxy_trusting_ssl_cert_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    server_context, cert_file = self_signed(tmp_path)
    for name in ("NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy", "SSL_CERT_DIR"):
        monkeypatch.delenv(name, raising=False)
    async with (
        serving(answering("text/event-stream", STREAM), server_context) as port,
        http_proxy() as tunnel,
    ):
        monkeypatch.setenv("HTTPS_PROXY", tunnel.url)
        monkeypatch.setenv("SSL_CERT_FILE", str(cert_file))
        settings = Settings(home=tmp_path / "home", openai_base_url=f"https://127.0.0.1:{port}/v1")
        async with culm.Engine(settings) as engine:
            run = await engine.run("hi", model="openai:local-model")
            done = await engine.wait(run.run_id, timeout=10)
    assert (done.status, done.error) == (culm.RunStatus.COMPLETED, None)
    assert done.usage.total_tokens == 5
    assert tunnel.tunnels == [f"127.0.0.1:{port}"]
