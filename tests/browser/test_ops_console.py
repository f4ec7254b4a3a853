"""The ops console in a real headless Chromium against a real web process, worker and Redis.

The module's tests share one stack and run in order: the "crm" sink fails
(its directory is a file) until the replay test fixes it.
"""

from __future__ import annotations

import re
import time
from typing import Any

import requests

from tests.browser.conftest import METRICS_TOKEN, Stack, lines_for, log_in
from tests.support.processes import wait_for

CUSTOMER = "09812345678"  # ends in 5678
AGENT = "09123456789"


def delivered_to_files(stack: Stack, call_sid: str) -> bool:
    return lines_for(stack.files_sink(), call_sid) == 1


def test_log_in_and_see_the_overview(page: Any, stack: Stack) -> None:
    page.goto(f"{stack.url}/ops/")
    assert "/ops/login" in page.url
    page.fill("input[name=user]", "ops")
    page.fill("input[name=password]", "not-the-password")
    page.click("form button:has-text('Log in')")
    assert "wrong user name or password" in page.inner_text("main")
    log_in(page, stack)
    text = page.inner_text("main").lower()  # the strip's headings are styled upper-case
    for heading in ("redis", "spool", "pumps alive", "backlog", "sinks", "exotel accounts"):
        assert heading in text
    assert "noeviction" in text
    assert page.locator("tr[data-sink=files]").count() == 1
    assert page.errors == []  # no CSP violation, no script error


def test_a_calls_timeline_with_numbers_masked(page: Any, stack: Stack) -> None:
    stack.callback("CAtimeline01", From=CUSTOMER, To=AGENT)
    wait_for(lambda: delivered_to_files(stack, "CAtimeline01"), timeout=30)
    log_in(page, stack)
    page.fill("header input[name=q]", "5678")
    page.click("header button:has-text('Find call')")
    page.click("#matches a:has-text('CAtimeline01')")
    page.wait_for_url(re.compile(r".*/ops/calls/CAtimeline01$"))
    timeline = page.inner_text("#timeline")
    assert "callback" in timeline and "terminal" in timeline
    assert re.search(r"legs: done\s+200", timeline), timeline
    assert "deliver → files: delivered" in timeline
    assert "files" in page.inner_text("#call-sinks") and "delivered" in page.inner_text(
        "#call-sinks"
    )
    body = page.content()
    assert "9812345678" not in body and "•••5678" in body
    page.screenshot(path=str(stack.shots / "call.png"), full_page=True)
    masked = page.locator("#numbers li", has_text="•••5678")
    masked.locator("button:has-text('reveal')").click()
    page.wait_for_selector("#numbers .revealed")
    assert CUSTOMER in page.inner_text("#numbers")
    page.goto(f"{stack.url}/ops/audit")
    assert re.search(r"ops\s+reveal\s+CAtimeline01\s+number •••5678", page.inner_text("#audit"))
    assert page.errors == []


def test_dead_letters_filter_replay_once_and_purge(page: Any, stack: Stack) -> None:
    for sid in ("CAdead01", "CAdead02"):
        stack.callback(sid, From=CUSTOMER, To=AGENT)
    for sid in ("CAdead01", "CAdead02"):
        wait_for(lambda s=sid: delivered_to_files(stack, s), timeout=30)
    log_in(page, stack)

    def letters(**query: str) -> int:
        page.goto(f"{stack.url}/ops/dead")
        for name, value in query.items():
            if name == "sink":
                page.select_option("select[name=sink]", value)
            else:
                page.fill(f"input[name={name}]", value)
        page.click("form.filter button")
        return int(page.inner_text("#dead-count"))

    wait_for(lambda: letters(sink="crm") >= 3, timeout=30)  # with CAtimeline01's
    assert letters(sink="files") == 0
    assert letters(sink="crm", reason="retries exhausted") == 3
    assert letters(sink="crm", older_than_hours="1") == 0
    assert letters(sink="crm") == 3
    page.screenshot(path=str(stack.shots / "dead-letters.png"), full_page=True)

    stack.blocked.unlink()  # the crm sink works again
    page.locator("tr[data-job='deliver:CAdead01:crm'] button:has-text('Replay')").click()
    page.wait_for_selector("#dead-count")
    wait_for(lambda: lines_for(stack.crm_sink(), "CAdead01") == 1, timeout=30)
    time.sleep(2)  # a second delivery would have happened by now
    assert lines_for(stack.crm_sink(), "CAdead01") == 1
    assert lines_for(stack.crm_sink(), "CAdead02") == 0
    assert letters(sink="crm") == 2

    page.click("button:has-text('Purge all 2 matching')")
    assert page.inner_text("#confirm-count") == "2"
    page.screenshot(path=str(stack.shots / "purge-confirm.png"), full_page=True)
    assert letters(sink="crm") == 2  # nothing purged without the confirmation
    page.click("button:has-text('Purge all 2 matching')")
    page.click("button:has-text('Yes, purge 2 dead letter(s)')")
    assert int(page.inner_text("#dead-count")) == 0
    page.goto(f"{stack.url}/ops/audit")
    audit = page.inner_text("#audit")
    assert re.search(r"ops\s+replay\s+deliver:CAdead01:crm", audit)
    assert re.search(r"ops\s+purge\s+2 dead letter\(s\)\s+sink=crm", audit)
    assert lines_for(stack.crm_sink(), "CAdead02") == 0
    assert page.errors == []


def test_posts_without_the_csrf_token_are_refused(page: Any, stack: Stack) -> None:
    log_in(page, stack)
    stack.callback("CAcsrf01")
    statuses = page.evaluate(
        """async () => {
          const post = (path, body, headers) => fetch(path, {method: 'POST', body, headers,
              credentials: 'same-origin'}).then(r => r.status);
          const form = () => new URLSearchParams({confirm: '0'});
          return [
            await post('/ops/dead/purge', form(), {}),
            await post('/ops/dead/purge', form(), {'X-CSRF-Token': 'forged'}),
            await post('/ops/api/dead/purge', '{"confirm": 0}',
                       {'Content-Type': 'application/json'}),
          ];
        }"""
    )
    assert statuses == [403, 403, 403]
    # Another site's form, with the operator's cookie: refused too (SameSite and Origin).
    other = requests.post(
        f"{stack.url}/ops/dead/purge",
        data={"confirm": "0"},
        cookies={c["name"]: c["value"] for c in page.context.cookies()},
        headers={"Origin": "https://evil.example"},
        timeout=5,
    )
    assert other.status_code == 403


def test_metrics_count_what_was_sent(stack: Stack) -> None:
    text = requests.get(
        f"{stack.url}/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"}, timeout=5
    ).text
    series = r'exolegs_callbacks_total\{account="default",outcome="accepted"\} (\d+)'
    accepted = re.search(series, text)
    assert accepted and int(accepted.group(1)) == 4  # the callbacks the tests above sent
    assert 'exolegs_deliveries_total{account="default",outcome="delivered",sink="files"}' in text


def test_the_overview_counts_what_happened_and_refreshes_itself(page: Any, stack: Stack) -> None:
    log_in(page, stack)

    def cell(sink: str, n: int) -> str:
        return str(page.locator(f"tr[data-sink={sink}] td").nth(n).inner_text())

    assert cell("files", 2) == "4"  # ok in the last hour: the 4 calls above
    assert cell("crm", 2) == "2" and cell("crm", 4) == "3"  # replayed + CAcsrf01; 3 dead
    assert cell("files", 1) != "never"
    before = page.inner_text(".hint:last-child")
    stack.callback("CArefresh01")
    wait_for(lambda: delivered_to_files(stack, "CArefresh01"), timeout=30)
    # htmx swaps the overview in place every 5 s: no reload, the new call counted
    page.wait_for_function(
        "() => document.querySelector('tr[data-sink=files] td:nth-child(3)').innerText === '5'",
        timeout=15000,
    )
    assert page.inner_text(".hint:last-child") != before
    page.screenshot(path=str(stack.shots / "overview.png"), full_page=True)
    assert page.errors == []


def test_an_open_overview_goes_to_the_login_when_its_session_ends(
    page: Any, stack: Stack, redis_server: Any
) -> None:
    log_in(page, stack)
    store = redis_server.client()
    for key in store.scan_iter(match="exolegs:ops:session:*"):
        store.delete(key)  # as if it had expired
    page.wait_for_url(re.compile(r".*/ops/login\?next=.*"), timeout=15000)
    assert "Log in" in page.inner_text("main")
