"""The simulator's Calls.json (v1 Bulk Call Details), placed calls, dropped callbacks, late legs."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl

import pytest
import requests

from worker.calls.exotel import ExotelClient
from worker.calls.reconcile import INDIA, stamp
from worker.calls.simulator import SimulatorConfig, SimulatorServer, start_in_thread
from worker.errors import ConfigFaultError, ExolegsError
from worker.settings import Settings


@pytest.fixture
def sim() -> Iterator[tuple[SimulatorServer, str, SimulatorConfig]]:
    config = SimulatorConfig()
    server, url = start_in_thread(config)
    yield server, url, config
    server.shutdown()


def client_for(url: str, config: SimulatorConfig, token: str | None = None) -> ExotelClient:
    return ExotelClient(
        Settings.from_env(
            {
                "EXOTEL_ACCOUNT_SID": config.account_sid,
                "EXOTEL_API_KEY": config.api_key,
                "EXOTEL_API_TOKEN": token or config.api_token,
                "EXOTEL_BASE_URL": url,
            },
            dotenv=False,
        )
    )


def place(url: str, sids: list[str], **extra: Any) -> dict[str, Any]:
    answer = requests.post(f"{url}/_sim/calls", json={"sids": sids, **extra}, timeout=60)
    answer.raise_for_status()
    body: dict[str, Any] = answer.json()
    return body


def window() -> tuple[str, str]:
    now = datetime.now(INDIA)
    return stamp(now - timedelta(hours=1)), stamp(now + timedelta(minutes=1))


def test_calls_json_envelope_paging_and_order(
    sim: tuple[SimulatorServer, str, SimulatorConfig],
) -> None:
    _, url, config = sim
    place(url, [f"cj{n:03d}" for n in range(120)])
    client = client_for(url, config)
    since, until = window()
    first = client.list_calls(since, until, page_size=50)
    assert len(first.calls) == 50 and first.total == 120 and first.next_uri
    assert first.next_uri.startswith(f"/v1/Accounts/{config.account_sid}/Calls.json?")
    created = [c["DateCreated"] for c in first.calls]
    assert created == sorted(created)
    seen = [c["Sid"] for c in first.calls]
    uri: str | None = first.next_uri
    while uri:
        page = client.list_calls(since, until, page_uri=uri)
        seen += [c["Sid"] for c in page.calls]
        uri = page.next_uri
    assert sorted(seen) == [f"cj{n:03d}" for n in range(120)] and len(set(seen)) == 120
    call = first.calls[0]
    for key in ("Sid", "DateCreated", "DateUpdated", "AccountSid", "To", "From", "Status",
                "StartTime", "EndTime", "Duration", "Direction", "RecordingUrl"):  # fmt: skip
        assert key in call


def test_the_date_filter_is_ist_and_excludes_other_times(
    sim: tuple[SimulatorServer, str, SimulatorConfig],
) -> None:
    _, url, config = sim
    place(url, ["df1"])
    client = client_for(url, config)
    now = datetime.now(INDIA)
    earlier = client.list_calls(stamp(now - timedelta(days=2)), stamp(now - timedelta(days=1)))
    assert earlier.calls == [] and earlier.next_uri is None
    assert [c["Sid"] for c in client.list_calls(*window()).calls] == ["df1"]
    raw = requests.get(
        f"{url}/v1/Accounts/{config.account_sid}/Calls.json",
        params={"DateCreated": "gte:2025-01-01 00:00:00;lte:2025-03-01 00:00:00"},
        auth=(config.api_key, config.api_token),
        timeout=5,
    )
    assert raw.status_code == 400 and "1 month" in raw.json()["RestException"]["Message"]


def test_listing_errors_use_the_error_vocabulary(
    sim: tuple[SimulatorServer, str, SimulatorConfig],
) -> None:
    _, url, config = sim
    with pytest.raises(ConfigFaultError, match="Exotel call listing"):
        client_for(url, config, token="wrong-token-0000").list_calls(*window())


def test_a_share_of_callbacks_is_dropped(sim: tuple[SimulatorServer, str, SimulatorConfig]) -> None:
    _, url, _ = sim
    got: list[dict[str, str]] = []

    class Edge(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers["Content-Length"])
            got.append(dict(parse_qsl(self.rfile.read(length).decode())))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *_: Any) -> None:
            return None

    edge = ThreadingHTTPServer(("127.0.0.1", 0), Edge)
    threading.Thread(target=edge.serve_forever, daemon=True).start()
    try:
        sids = [f"dr{n:03d}" for n in range(100)]
        answer = place(url, sids, callback_url=f"http://127.0.0.1:{edge.server_port}/cb",
                       drop=0.3, seed=7)  # fmt: skip
    finally:
        edge.shutdown()
    assert len(answer["sent"]) + len(answer["dropped"]) == 100
    assert 15 <= len(answer["dropped"]) <= 45
    assert sorted(c["CallSid"] for c in got) == sorted(answer["sent"])
    callback = got[0]
    assert callback["EventType"] == "terminal" and callback["Status"]
    assert set(callback) >= {"CallSid", "Status", "DateUpdated", "From", "To", "Direction"}


def test_legs_are_ready_only_after_a_delay() -> None:
    config = SimulatorConfig(legs_ready_after=3600)
    server, url = start_in_thread(config)
    try:
        place(url, ["late1"])
        with pytest.raises(ExolegsError) as caught:
            client_for(url, config).fetch_legs("late1")
        assert caught.value.upstream_code == 10743
    finally:
        server.shutdown()
    ready = SimulatorConfig(legs_ready_after=0.01)
    server, url = start_in_thread(ready)
    try:
        place(url, ["late2"])
        threading.Event().wait(0.05)
        assert client_for(url, ready).fetch_legs("late2")["response"]["leg_details"]
    finally:
        server.shutdown()
