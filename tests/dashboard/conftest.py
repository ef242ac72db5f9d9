"""The dashboard's browser tests: a real ``culm serve`` process and Debian's chromium, driven by
Playwright for Python (never ``playwright install``: .ci/run installs the ``chromium`` package).

One browser per module; each test gets a fresh context (cookies, storage) and leaves a
screenshot in ``$CULM_TEST_ARTIFACTS`` (default ``test-artifacts/``) under ``dashboard/``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from tests.processes import CI

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
# A loaded machine (two cores, many test processes) is slow, not wrong: wait generously.
expect.set_options(timeout=15_000)
ARTIFACTS = Path(os.environ.get("CULM_TEST_ARTIFACTS", "test-artifacts")) / "dashboard"

# Scripts of the scripted model the tests run (a name of their own: built-ins win over files).
SCRIPTS: dict[str, dict[str, Any]] = {
    # streams for minutes, one word every 0.1 s, until cancelled
    "dash-ticking": {
        "turns": [[step for i in range(1, 3000) for step in ({"text": f"w{i} "}, {"delay": 0.1})]]
    },
    # a finite stream: 60 words over about 6 s, then the answer ends
    "dash-finite": {
        "turns": [[step for i in range(1, 61) for step in ({"text": f"w{i} "}, {"delay": 0.1})]]
    },
    # spawns a sub-agent ("scout"), then answers
    "dash-parent": {
        "turns": [
            [
                {
                    "tool_call": {
                        "name": "spawn_agent",
                        "arguments": {
                            "task": "look around",
                            "model": "scripted:dash-child",
                            "title": "scout",
                        },
                    }
                }
            ],
            [{"text": "Parent done."}],
        ]
    },  # fmt: skip
    "dash-child": {"turns": [[{"reasoning": "child thinking"}, {"text": "child says hi"}]]},
    # spawns a sub-agent that calls list_dir (which its session, like the parent's, must have
    # approved), then answers
    "dash-ask-parent": {
        "turns": [
            [
                {
                    "tool_call": {
                        "name": "spawn_agent",
                        "arguments": {
                            "task": "look",
                            "model": "scripted:dash-ask-child",
                            "tools": ["list_dir"],
                        },
                    }
                }
            ],
            [{"text": "Parent done."}],
        ]
    },  # fmt: skip
    "dash-ask-child": {
        "turns": [
            [{"tool_call": {"name": "list_dir", "arguments": {"path": "."}}}],
            [{"text": "Child done."}],
        ]
    },  # fmt: skip
    # calls list_dir, then answers
    "dash-tool": {
        "turns": [
            [{"text": "Looking."}, {"tool_call": {"name": "list_dir", "arguments": {"path": "."}}}],
            [{"text": "All done."}],
        ]
    },
}


@dataclass
class Server:
    url: str
    home: Path
    process: subprocess.Popen[bytes]
    key: str | None = None

    def client(self) -> httpx2.Client:
        headers = {"authorization": f"Bearer {self.key}"} if self.key else {}
        return httpx2.Client(base_url=self.url, headers=headers, timeout=30)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def start_server(home: Path, **env: str) -> Server:
    """``culm serve`` on a free port with the tests' scripts, once ``/health`` answers."""
    (home / "scripts").mkdir(parents=True, exist_ok=True)
    for name, script in SCRIPTS.items():
        (home / "scripts" / f"{name}.json").write_text(json.dumps(script))
    port = free_port()
    clean = {
        k: v for k, v in os.environ.items() if not k.startswith(("CULM_", "OPENAI_", "ANTHROPIC_"))
    }
    with (home / "serve.log").open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "culm", "serve", "--port", str(port)],
            env={**clean, "CULM_HOME": str(home), **env},
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
    server = Server(
        url=f"http://127.0.0.1:{port}", home=home, process=process, key=env.get("CULM_API_KEY")
    )
    deadline = time.monotonic() + 30
    while True:
        assert process.poll() is None, (home / "serve.log").read_text()
        try:
            if httpx2.get(server.url + "/health", timeout=2).status_code == 200:
                return server
        except httpx2.TransportError:
            pass
        assert time.monotonic() < deadline, "culm serve did not start within 30 s"
        time.sleep(0.05)


def stop_server(server: Server) -> None:
    if server.process.poll() is None:
        server.process.send_signal(signal.SIGTERM)
        try:
            server.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    started = start_server(tmp_path_factory.mktemp("dash-home"))
    yield started
    stop_server(started)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not Path(CHROMIUM).exists():
        if CI:
            pytest.fail(f"{CHROMIUM} is missing; CI=true requires it (.ci/run installs chromium)")
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium)")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Browser, request: pytest.FixtureRequest) -> Iterator[Page]:
    """A fresh 1280×800 context; its page's errors fail the test; a screenshot at the end."""
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    context.set_default_timeout(15_000)
    opened = context.new_page()
    errors: list[str] = []
    opened.on("pageerror", lambda error: errors.append(str(error)))
    yield opened
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    opened.screenshot(path=str(ARTIFACTS / f"{request.node.name}.png"))
    context.close()
    assert not errors, errors


class Relay:
    """A TCP relay between the browser and the server whose connections the test can cut
    (a dropped network, as the browser sees it); it keeps listening, so clients reconnect."""

    def __init__(self, target_port: int) -> None:
        self.target = target_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.sockets: list[socket.socket] = []
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target))
            with self.lock:
                self.sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()

    def cut(self) -> None:
        """Reset every open connection (both sides)."""
        with self.lock:
            open_now, self.sockets = self.sockets, []
        for sock in open_now:
            try:
                sock.shutdown(socket.SHUT_RDWR)
                sock.close()
            except OSError:
                pass

    def close(self) -> None:
        self.listener.close()
        self.cut()


def wait_terminal(server: Server, run_id: str) -> dict[str, Any]:
    with server.client() as client:
        run: dict[str, Any] = client.get(f"/v1/runs/{run_id}/wait", params={"timeout": 30}).json()
        return run


def start_run(server: Server, model: str, **fields: Any) -> str:
    with server.client() as client:
        response = client.post("/v1/runs", json={"message": "go", "model": model, **fields})
        assert response.status_code == 202, response.text
        run_id: str = response.json()["run_id"]
        return run_id


def copy_screenshot(name: str, destination: Path) -> None:
    shutil.copy(ARTIFACTS / name, destination)
