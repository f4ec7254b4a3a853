"""A real stack (Redis, the simulator, a worker, the web app under gunicorn) and a real Chromium.

Chromium is Debian's package (``apt-get install -y chromium``), driven by
Playwright from PyPI with ``executable_path``: nothing is downloaded at run
time (never ``playwright install``). Without the browser these tests skip
with a loud reason; with ``EXOLEGS_REQUIRE_BROWSER=1`` (set by .ci/run) they
fail instead.

``EXOLEGS_SCREENSHOTS=docs/ops`` makes the tests save the screenshots used in
docs/ops.md there; otherwise they go to a temporary directory.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.conftest import CALLBACK_TOKEN
from tests.support.processes import Proc, start_web, start_worker, wait_for
from tests.support.redis_server import RedisServer, free_port
from worker.calls.simulator import SimulatorConfig, start_in_thread

CHROMIUM = os.environ.get("EXOLEGS_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
OPS_PASSWORD = "browser-test-password"
METRICS_TOKEN = "browser-metrics-token-0123456789"


def _missing_browser() -> str | None:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "Playwright is not installed (pip install -e '.[dev]')"
    if not (Path(CHROMIUM).is_file() or shutil.which(CHROMIUM)):
        return f"{CHROMIUM} not found (apt-get install -y chromium; .ci/run does this)"
    return None


@pytest.fixture(scope="session")
def chromium() -> Iterator[Any]:
    missing = _missing_browser()
    if missing:
        message = f"BROWSER TESTS NOT RUN: {missing}"
        if os.environ.get("EXOLEGS_REQUIRE_BROWSER") == "1":
            pytest.fail(message)
        print(f"\n{'!' * 72}\n{message}\n{'!' * 72}")
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@dataclass
class Stack:
    url: str
    callback_url: str
    root: Path
    blocked: Path  # a file where the "crm" sink's directory should be: it fails until removed
    web: Proc
    worker: Proc
    shots: Path

    def files_sink(self) -> Path:
        return self.root / "files.jsonl"

    def crm_sink(self) -> Path:
        return self.blocked / "crm.jsonl"

    def callback(self, call_sid: str, **fields: str) -> None:
        data = {
            "CallSid": call_sid,
            "Status": "completed",
            "EventType": "terminal",
            "Direction": "outbound-api",
            **fields,
        }
        answer = requests.post(self.callback_url, data=data, timeout=5)
        assert answer.status_code == 200, answer.text


@pytest.fixture(scope="module")
def stack(
    chromium: Any, redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    client = redis_server.client()
    client.flushall()  # our own private server
    root = tmp_path_factory.mktemp("ops-stack")
    blocked = root / "crm"
    blocked.write_text("a file where a directory should be: the crm sink fails\n")
    config = SimulatorConfig()
    sim, sim_url = start_in_thread(config)
    shots = Path(os.environ.get("EXOLEGS_SCREENSHOTS") or root / "shots")
    shots.mkdir(parents=True, exist_ok=True)
    env = {
        "REDIS_URL": redis_server.url,
        "CALLBACK_TOKEN": CALLBACK_TOKEN,
        "OPS_PASSWORD": OPS_PASSWORD,
        "METRICS_TOKEN": METRICS_TOKEN,
        "SINKS": f"jsonl://{root}/files.jsonl?name=files jsonl://{blocked}/crm.jsonl?name=crm",
        "FETCH_DELAY_SECONDS": "0",
        "RETRY_BASE_SECONDS": "0.2",
        "RETRY_MAX_SECONDS": "0.5",
        "RETRY_MAX_ATTEMPTS": "1",
        "CIRCUIT_PROBE_SECONDS": "1",
        "SPOOL_DIR": str(root / "spool"),
        "EXOTEL_BASE_URL": sim_url,
        "EXOTEL_ACCOUNT_SID": config.account_sid,
        "EXOTEL_API_KEY": config.api_key,
        "EXOTEL_API_TOKEN": config.api_token,
        "WEB_CONCURRENCY": "1",
    }
    port = free_port()
    worker = start_worker(env, root / "worker.log")
    web = start_web(env, root / "web.log", port)
    url = f"http://127.0.0.1:{port}"
    yield Stack(url, f"{url}/exotel/callback/{CALLBACK_TOKEN}", root, blocked, web, worker, shots)
    web.stop()
    worker.stop()
    sim.shutdown()
    client.close()


@pytest.fixture
def page(chromium: Any, stack: Stack) -> Iterator[Any]:
    """A fresh browser context (no cookies), its console errors collected."""
    context = chromium.new_context(viewport={"width": 1360, "height": 900})
    tab = context.new_page()
    tab.errors = []

    def console(message: Any) -> None:
        # A 401 or 404 answer is logged as "Failed to load resource"; that is not a page error.
        if message.type == "error" and not message.text.startswith("Failed to load resource"):
            tab.errors.append(message.text)

    tab.on("console", console)
    tab.on("pageerror", lambda e: tab.errors.append(str(e)))
    yield tab
    context.close()


def log_in(page: Any, stack: Stack) -> None:
    page.goto(f"{stack.url}/ops/")
    page.fill("input[name=user]", "ops")
    page.fill("input[name=password]", OPS_PASSWORD)
    page.click("form button:has-text('Log in')")
    page.wait_for_load_state()
    assert page.url == f"{stack.url}/ops/", page.inner_text("main")


def lines_for(path: Path, call_sid: str) -> int:
    if not path.exists():
        return 0
    return sum(1 for line in path.read_text().splitlines() if f'"call_sid":"{call_sid}"' in line)


__all__ = ["Stack", "lines_for", "log_in", "wait_for"]
