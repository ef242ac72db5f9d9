"""The forward proxy honours the environment's ``HTTPS_PROXY`` and ``SSL_CERT_FILE``: a real
culm server forwards to a TLS provider (a self-signed certificate, trusted only through
``SSL_CERT_FILE``) through a ``CONNECT`` proxy, all on 127.0.0.1."""

from __future__ import annotations

import json
from pathlib import Path

import openai
import pytest

from tests.proxy import wire
from tests.proxy.conftest import ProxyFactory
from tests.proxy.tunnel import answering, http_proxy, self_signed, serving


def use_proxy(monkeypatch: pytest.MonkeyPatch, url: str, cert_file: Path) -> None:
    for name in ("NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy", "SSL_CERT_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTPS_PROXY", url)
    monkeypatch.setenv("SSL_CERT_FILE", str(cert_file))


async def test_forwarded_through_https_proxy_trusting_ssl_cert_file(
    make_proxy: ProxyFactory, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    server_context, cert_file = self_signed(tmp_path)
    body = json.dumps(wire.chat_completion({"role": "assistant", "content": "via tunnel"}))
    async with (
        serving(answering("application/json", body.encode()), server_context) as port,
        http_proxy() as tunnel,
    ):
        use_proxy(monkeypatch, tunnel.url, cert_file)
        async with make_proxy(openai_base_url=f"https://127.0.0.1:{port}/v1") as proxy:
            async with proxy.openai() as client:
                answer = await client.chat.completions.create(
                    model=wire.CHAT_MODEL, messages=[{"role": "user", "content": "Hi"}]
                )
            record = await proxy.record()
    assert answer.choices[0].message.content == "via tunnel"
    assert (record.status, record.status_code) == ("success", 200)
    assert tunnel.tunnels == [f"127.0.0.1:{port}"]


async def test_without_the_certificate_the_upstream_is_not_trusted(
    make_proxy: ProxyFactory, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    server_context, _ = self_signed(tmp_path)
    (tmp_path / "other").mkdir()
    _, other_cert = self_signed(tmp_path / "other")  # SSL_CERT_FILE trusts another one
    async with (
        serving(answering("application/json", b"{}"), server_context) as port,
        http_proxy() as tunnel,
    ):
        use_proxy(monkeypatch, tunnel.url, other_cert)
        async with make_proxy(openai_base_url=f"https://127.0.0.1:{port}/v1") as proxy:
            async with proxy.openai() as client:
                with pytest.raises(openai.InternalServerError, match="cannot reach openai"):
                    await client.models.list()
            record = await proxy.record()
    assert "CERTIFICATE_VERIFY_FAILED" in (record.error or "")
    assert tunnel.tunnels == [f"127.0.0.1:{port}"]
