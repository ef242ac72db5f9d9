"""Signing in to a server that has ``CULM_API_KEY``, in the browser."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from playwright.sync_api import Page, expect

from tests.dashboard.conftest import Server, start_run, start_server, stop_server

KEY = "browser-s3cret"


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    started = start_server(tmp_path_factory.mktemp("dash-keyed"), CULM_API_KEY=KEY)
    yield started
    stop_server(started)


def test_sign_in_with_the_key_streams_a_run_and_sign_out(page: Page, keyed: Server) -> None:
    page.goto(keyed.url + "/dashboard#/runs")
    key = page.get_by_label("API key")
    key.fill("wrong")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_contain_text("not the server's API key")

    key.fill(KEY)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name="Runs")).to_be_visible()
    (session,) = [c for c in page.context.cookies() if c["name"] == "culm_session"]
    assert session["httpOnly"] and session["sameSite"] == "Strict"
    assert "culm_session" not in page.evaluate("document.cookie")  # out of scripts' reach
    assert KEY not in session["value"]

    run_id = start_run(keyed, "scripted:echo")
    page.goto(f"{keyed.url}/dashboard#/runs/{run_id}")
    expect(page.locator("#transcript")).to_contain_text("You said: go")  # the stream
    expect(page.locator("#run-status")).to_have_text("completed")

    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    assert page.request.get(keyed.url + "/v1/runs").status == 401
