"""The dashboard in a real browser against a real ``culm serve`` (see conftest.py)."""

from __future__ import annotations

import re

from playwright.sync_api import Page, expect

from tests.dashboard.conftest import ARTIFACTS, Relay, Server, start_run, wait_terminal

LIST_CALLS_UNTIL_DRAWN = """() => {
  const drawn = performance.getEntriesByName("culm:runs-drawn")[0].startTime;
  return performance.getEntriesByType("resource").map((e) => [new URL(e.name), e.startTime])
    .filter(([url, start]) => url.pathname === "/v1/runs" && start < drawn)
    .map(([url]) => url.pathname + url.search);
}"""


def _words(text: str) -> list[str]:
    return re.findall(r"w\d+", text)


def test_the_run_list_updates_live_tokens_arrive_and_cancel_ends_the_run(
    page: Page, server: Server
) -> None:
    page.goto(server.url + "/dashboard#/runs")
    expect(page.get_by_role("heading", name="Runs")).to_be_visible()
    # the list was asked for once until drawn: index.html's early call, taken by the page
    page.wait_for_function("performance.getEntriesByName('culm:runs-drawn').length")
    calls = page.evaluate(LIST_CALLS_UNTIL_DRAWN)
    assert len(calls) == 1 and calls[0] == "/v1/runs?limit=51&offset=0", calls
    run_id = start_run(server, "scripted:dash-ticking")
    row = page.locator(f'tr[data-run-id="{run_id}"]')
    expect(row).to_be_visible()  # appeared without a reload
    expect(row).to_have_attribute("data-status", "running")

    row.get_by_role("link", name=run_id[:8]).click()
    transcript = page.locator("#transcript")
    expect(transcript).to_contain_text("w2 ")
    seen = len(_words(transcript.inner_text()))
    # more words stream in on the same page: a later word than any shown so far appears
    expect(transcript).to_contain_text(f"w{seen + 3} ")
    expect(page.locator("#stream-state")).to_have_attribute("data-state", "live")

    # the session page: a new message while the run is active is refused, and says why
    page.get_by_role("region", name="Run facts").get_by_role("link").first.click()
    page.get_by_label("New message (starts a run)").fill("again")
    page.get_by_role("button", name="Send").click()
    refusal = page.get_by_role("alert")
    expect(refusal).to_contain_text("already has an active run")
    refusal.get_by_role("link", name="open the active run").click()

    page.get_by_role("button", name="Cancel run").click()
    expect(page.locator("#run-status")).to_have_text("cancelled")
    expect(transcript).to_contain_text("Cancelled")
    assert wait_terminal(server, run_id)["status"] == "cancelled"

    page.get_by_role("link", name="Runs", exact=True).click()
    expect(row).to_have_attribute("data-status", "cancelled")


def test_a_dropped_stream_resumes_from_its_cursor_without_duplicates(
    page: Page, server: Server
) -> None:
    relay = Relay(int(server.url.rsplit(":", 1)[1]))
    try:
        run_id = start_run(server, "scripted:dash-finite")
        page.goto(f"{relay.url}/dashboard#/runs/{run_id}")
        transcript = page.locator("#transcript")
        expect(transcript).to_contain_text("w3 ")
        relay.cut()  # every connection of the page is reset mid-stream
        expect(page.locator("#run-status")).to_have_text("completed", timeout=30_000)
        expect(transcript).to_contain_text("Complete")
        connects = page.locator("#stream-state").get_attribute("data-connects")
        assert connects is not None and int(connects) >= 2  # it did reconnect
        # every word once, in order: nothing lost, nothing shown twice
        assert _words(transcript.inner_text()) == [f"w{i}" for i in range(1, 61)]
        last_seq = wait_terminal(server, run_id)["last_seq"]
        expect(page.get_by_role("heading", name="Event log")).to_contain_text(f"({last_seq})")
    finally:
        relay.close()


def test_a_bad_cron_shows_the_apis_message_and_a_good_one_reads_in_plain_words(
    page: Page, server: Server
) -> None:
    page.goto(server.url + "/dashboard#/schedules")
    page.get_by_role("button", name="New schedule").click()
    form = page.get_by_role("form", name="New schedule")
    form.get_by_label("Name").fill("nightly")
    form.get_by_label("Cron expression").fill("61 * * * *")
    form.get_by_label("Time zone").fill("Europe/Paris")
    form.get_by_label("Message").fill("report")
    form.get_by_label("Model").fill("scripted:echo")
    form.get_by_role("button", name="Create").click()
    problem = page.locator("#schedule-problem")
    expect(problem).to_contain_text("trigger.expr")

    form.get_by_label("Cron expression").fill("0 9 * * 1-5")
    form.get_by_role("button", name="Create").click()
    card = page.get_by_role("region", name="Schedule nightly")
    expect(card).to_contain_text("at 09:00 on Monday through Friday")
    expect(card).to_contain_text("Europe/Paris")
    card.get_by_role("button", name="Pause").click()
    expect(card.get_by_role("button", name="Resume")).to_be_visible()


def test_usage_charts_are_drawn_from_the_metrics(page: Page, server: Server) -> None:
    wait_terminal(server, start_run(server, "scripted:echo"))
    with server.client() as client:  # the metrics pipeline records runs in the background
        for _ in range(300):
            models = client.get("/v1/metrics/models").json()["models"]
            if any(row["model"] == "scripted:echo" for row in models):
                break
            page.wait_for_timeout(100)
    page.goto(server.url + "/dashboard#/usage")
    expect(page.locator("#chart-daily svg rect.bar").first).to_be_attached()
    expect(page.locator("#chart-models svg rect.bar").first).to_be_attached()
    expect(page.get_by_role("table", name="Usage by model")).to_contain_text("scripted:echo")


def test_a_sub_agent_shows_its_own_transcript_in_the_tree(page: Page, server: Server) -> None:
    run_id = start_run(server, "scripted:dash-parent", tools=["spawn_agent"])
    page.goto(f"{server.url}/dashboard#/runs/{run_id}")
    child = page.locator("#transcript details[data-child-run-id]")
    expect(child).to_contain_text("scout")
    expect(child).to_contain_text("child says hi")
    expect(child.locator("details[data-kind=reasoning]")).not_to_have_attribute("open", "")
    expect(page.locator("#run-status")).to_have_text("completed")
    expect(page.locator("#transcript")).to_contain_text("Parent done.")
    child_id = child.get_attribute("data-child-run-id")
    assert child_id is not None
    expect(page.locator("#children")).to_contain_text(child_id[:8])


def test_approving_a_pending_tool_call(page: Page, server: Server) -> None:
    run_id = start_run(
        server, "scripted:dash-tool", tools=["list_dir"], require_approval=["list_dir"]
    )
    page.goto(f"{server.url}/dashboard#/runs/{run_id}")
    request = page.locator("form.input-request")
    expect(request).to_contain_text("list_dir")
    expect(page.locator("#run-status")).to_have_text("waiting")
    request.get_by_role("button", name="Approve").click()
    expect(page.locator("#run-status")).to_have_text("completed")
    expect(page.locator("#transcript")).to_contain_text("All done.")


def test_a_sub_agents_request_is_approved_from_its_parents_page(page: Page, server: Server) -> None:
    """The child inherits the parent's ``require_approval``; the parent's page shows that it
    waits on that child, and answers the child's request on the child's run id."""
    run_id = start_run(
        server,
        "scripted:dash-ask-parent",
        tools=["spawn_agent", "list_dir"],
        require_approval=["list_dir"],
    )
    page.goto(f"{server.url}/dashboard#/runs/{run_id}")
    child = page.locator("#transcript details[data-child-run-id]")
    expect(child).to_have_attribute("data-waiting", "true")
    expect(child.locator("summary .status")).to_have_text("waiting")
    expect(page.locator("#transcript")).to_contain_text("waiting on sub-agent")
    request = page.locator("form.input-request")
    expect(request).to_contain_text("list_dir")
    child_id = child.get_attribute("data-child-run-id")
    assert child_id is not None
    expect(request.get_by_role("link")).to_have_text(f"Sub-agent {child_id[:8]}")
    expect(page.locator("#run-status")).to_have_text("running")  # the parent itself is not asked
    expect(page.locator("#waiting-on")).to_have_text(f"sub-agent {child_id[:8]}")

    request.get_by_role("button", name="Approve").click()
    expect(request).to_have_count(0)
    expect(child).to_have_attribute("data-waiting", "false")
    expect(page.locator("#waiting-on")).to_have_count(0)
    expect(page.locator("#run-status")).to_have_text("completed")
    expect(child).to_contain_text("Child done.")
    expect(page.locator("#transcript")).to_contain_text("Parent done.")
    assert wait_terminal(server, child_id)["status"] == "completed"


def test_phone_width_dark_mode_and_docs_without_a_cdn(page: Page, server: Server) -> None:
    outside: list[str] = []
    page.route(
        re.compile(r"^(?!http://127\.0\.0\.1[:/]).*"),
        lambda route: (outside.append(route.request.url), route.abort()),
    )
    page.set_viewport_size({"width": 390, "height": 844})
    page.emulate_media(color_scheme="dark")
    page.goto(server.url + "/dashboard#/runs")
    expect(page.get_by_role("table", name="Runs")).to_be_visible()
    background = page.evaluate("getComputedStyle(document.body).backgroundColor")
    assert background == "rgb(21, 23, 26)"  # the dark palette
    page.keyboard.press("Tab")  # the first stop is the skip link, then the sections
    assert page.evaluate("document.activeElement.textContent") == "Skip to content"

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "phone-dark-runs.png"), full_page=True)

    page.goto(server.url + "/docs")
    expect(page.locator(".swagger-ui .info .title")).to_contain_text("culm")
    assert outside == []


def test_workers_and_mcp_pages_by_keyboard(page: Page, server: Server) -> None:
    page.goto(server.url + "/dashboard#/runs")
    expect(page.get_by_role("table", name="Runs")).to_be_visible()
    nav = page.get_by_role("navigation", name="Sections")
    nav.get_by_role("link", name="Workers").focus()
    page.keyboard.press("Enter")
    workers = page.get_by_role("table", name="Workers")
    expect(workers.locator("tbody tr").first).to_be_visible()  # this server's own worker
    expect(page.get_by_role("region", name="Run queue")).to_contain_text("Running")
    nav.get_by_role("link", name="MCP servers").focus()
    page.keyboard.press("Enter")
    expect(page.get_by_text("No MCP servers are configured.")).to_be_visible()
