"""The sign-in cookie over HTTP: what it opens, what it refuses (CSRF), and how it ends."""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx2
import pytest
import websockets

import culm
from culm.api import cookie
from tests.api.conftest import running_server

KEY = "s3cret-key"


@pytest.fixture
def keyed(tmp_path: Path) -> culm.Settings:
    return culm.Settings(home=tmp_path / "home", api_key=KEY)


def test_a_minted_value_is_good_for_its_key_until_it_expires() -> None:
    value = cookie.mint(KEY, now=1_000_000)
    assert cookie.valid(KEY, value, now=1_000_000)
    assert cookie.valid(KEY, value, now=1_000_000 + 12 * 3600)  # the last second of 12 hours
    assert not cookie.valid(KEY, value, now=1_000_000 + 12 * 3600 + 1)
    assert not cookie.valid("other-key", value, now=1_000_000)
    assert KEY not in value  # the key itself never sits in the browser
    expires, _, signature = value.partition(".")
    for forged in [
        f"{int(expires) + 1}.{signature}",
        f"{expires}.{signature[:-1]}0",
        "",
        ".",
        "x.y",
        f"{expires}.\xe9",  # not ASCII: refused, not a TypeError
        f"{expires}.{signature[:-1]}\xe9",
        f"{expires}.{signature.upper()}",
    ]:
        assert not cookie.valid(KEY, forged, now=1_000_000)


async def test_a_crafted_non_ascii_cookie_is_a_401_not_a_500(keyed: culm.Settings) -> None:
    async with running_server(keyed) as server, httpx2.AsyncClient(base_url=server.url) as client:
        for value in ['"1999999999.\\351"', "1999999999.\xe9"]:
            crafted = f"{cookie.COOKIE}={value}".encode("latin-1")
            response = await client.get("/v1/runs", headers={"cookie": crafted})
            assert response.status_code == 401, value
            state = await client.get("/dashboard/session", headers={"cookie": crafted})
            assert state.json() == {"auth": True, "signed_in": False}


async def test_sign_in_sets_a_strict_httponly_cookie_that_opens_reads(keyed: culm.Settings) -> None:
    async with running_server(keyed) as server, httpx2.AsyncClient(base_url=server.url) as client:
        assert (await client.get("/dashboard")).status_code == 200  # the page itself is open
        script = await client.get("/dashboard/static/js/app.js")  # and its assets, revalidated
        assert script.status_code == 200 and script.headers["cache-control"] == "no-cache"
        assert "javascript" in script.headers["content-type"]
        assert (await client.get("/dashboard/static/nope.js")).status_code == 404
        assert (await client.get("/dashboard/session")).json() == {"auth": True, "signed_in": False}
        wrong = await client.post("/dashboard/session", json={"api_key": "nope"})
        assert wrong.status_code == 401
        assert wrong.json()["error"]["code"] == "unauthorized"
        assert (await client.get("/v1/runs")).status_code == 401

        signed = await client.post("/dashboard/session", json={"api_key": KEY})
        assert signed.status_code == 204
        header = signed.headers["set-cookie"].lower()
        assert "httponly" in header and "samesite=strict" in header and "path=/" in header
        assert (await client.get("/dashboard/session")).json() == {"auth": True, "signed_in": True}
        assert (await client.get("/v1/runs")).status_code == 200
        assert (await client.get("/openapi.json")).status_code == 200

        await client.delete("/dashboard/session")  # sign out
        assert (await client.get("/v1/runs")).status_code == 401


async def test_the_cookie_is_secure_when_a_proxy_says_the_browser_used_https(
    keyed: culm.Settings,
) -> None:
    """uvicorn rewrites the scheme from ``X-Forwarded-Proto`` only for proxies it trusts (by
    default 127.0.0.1); the cookie honours the headers of any proxy (they only make it stricter)."""
    async with running_server(keyed) as server, httpx2.AsyncClient(base_url=server.url) as client:
        for headers, secure in [
            ({}, False),
            ({"forwarded": 'for=10.0.0.1;proto="https";host=example.com'}, True),
            ({"forwarded": "for=10.0.0.1;proto=http"}, False),
            ({"x-forwarded-proto": "https"}, True),
        ]:
            signed = await client.post("/dashboard/session", json={"api_key": KEY}, headers=headers)
            assert signed.status_code == 204
            assert ("secure" in signed.headers["set-cookie"].lower()) is secure, headers


async def test_a_cookie_write_needs_the_csrf_header_and_a_bearer_write_does_not(
    keyed: culm.Settings,
) -> None:
    async with running_server(keyed) as server, httpx2.AsyncClient(base_url=server.url) as client:
        await client.post("/dashboard/session", json={"api_key": KEY})
        body = {"message": "hi", "model": "scripted:echo"}
        forged = await client.post("/v1/runs", json=body)
        assert forged.status_code == 403
        assert forged.json()["error"]["code"] == "csrf"
        made = await client.post("/v1/runs", json=body, headers={"x-culm-csrf": "1"})
        assert made.status_code == 202
        run_id = made.json()["run_id"]
        # the run's stream with the cookie alone (an EventSource cannot set headers)
        async with client.stream("GET", f"/v1/runs/{run_id}/events") as events:
            assert events.status_code == 200
            text = "".join([chunk async for chunk in events.aiter_text()])
        assert "event: complete" in text
        client.cookies.clear()
        bearer = {"authorization": f"Bearer {KEY}"}
        assert (await client.post("/v1/runs", json=body, headers=bearer)).status_code == 202


async def test_a_cookie_websocket_must_come_from_this_origin(keyed: culm.Settings) -> None:
    async with running_server(keyed) as server, httpx2.AsyncClient(base_url=server.url) as client:
        await client.post("/dashboard/session", json={"api_key": KEY})
        headers = {"authorization": f"Bearer {KEY}"}
        run = await client.post(
            "/v1/runs", json={"message": "hi", "model": "scripted:echo"}, headers=headers
        )
        run_id = run.json()["run_id"]
        value = client.cookies[cookie.COOKIE]
        host = server.url.removeprefix("http://")
        url = f"ws://{host}/v1/runs/{run_id}/ws?after=0"
        jar = {"cookie": f"{cookie.COOKIE}={value}"}
        async with websockets.connect(url, additional_headers=jar, origin=f"http://{host}") as ws:
            assert json.loads(await ws.recv())["seq"] == 1
        with pytest.raises(websockets.InvalidStatus) as refused:
            async with websockets.connect(
                url, additional_headers=jar, origin="http://evil.example"
            ):
                pass
        assert refused.value.response.status_code == 403


async def test_the_assets_are_gzipped_and_revalidated(keyed: culm.Settings) -> None:
    async with running_server(keyed) as server, httpx2.AsyncClient(base_url=server.url) as client:
        script = await client.get("/dashboard/static/js/run.js")  # httpx2 accepts gzip
        assert script.status_code == 200 and script.headers["content-encoding"] == "gzip"
        assert "export function render" in script.text
        assert script.headers["cache-control"] == "no-cache"
        again = await client.get(
            "/dashboard/static/js/run.js", headers={"if-none-match": script.headers["etag"]}
        )
        assert again.status_code == 304  # revalidated: nothing sent again
        # the API's answers are not the mount's: not gzipped (its SSE streams must not be)
        state = await client.get("/dashboard/session")
        assert "content-encoding" not in state.headers


async def test_the_page_names_its_assets_version_and_they_are_cached_for_good(
    keyed: culm.Settings,
) -> None:
    async with running_server(keyed) as server, httpx2.AsyncClient(base_url=server.url) as client:
        page = await client.get("/dashboard")
        assert page.headers["cache-control"] == "no-cache"
        again = await client.get("/dashboard", headers={"if-none-match": page.headers["etag"]})
        assert again.status_code == 304
        (app,) = re.findall(r'src="(/dashboard/v/[0-9a-f]{12}/js/app\.js)"', page.text)
        script = await client.get(app)
        assert script.headers["cache-control"] == "public, max-age=31536000, immutable"
        assert script.headers["content-encoding"] == "gzip"  # from memory, gzipped once
        assert script.text == (await client.get("/dashboard/static/js/app.js")).text
        # an older page's version gets today's file, revalidated
        old = await client.get("/dashboard/v/000000000000/js/app.js")
        assert old.status_code == 200 and old.headers["cache-control"] == "no-cache"
        assert (await client.get("/dashboard/v/000000000000/routes.py")).status_code == 404
