"""The Exotel simulator, driven over real HTTP by the real ExotelClient."""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import pytest
import requests

from worker.calls.exotel import ExotelClient
from worker.calls.simulator import SimulatorConfig, SimulatorServer, legs_for, start_in_thread
from worker.errors import (
    ConfigFaultError,
    Kind,
    RateLimitedError,
    TransientError,
)
from worker.settings import Rate, Settings

IST = timedelta(hours=5, minutes=30)
PHONE = re.compile(r"^(\+91[6-9]\d{9}|0\d{10})$")
SIP = re.compile(r"^sip:[a-z]+@acme\.sip\.exotel\.com$")
STATUSES = {"completed", "no-answer", "busy", "failed", "canceled"}


def client_for(base_url: str, config: SimulatorConfig, **env: str) -> ExotelClient:
    settings = Settings.from_env(
        {
            "EXOTEL_ACCOUNT_SID": config.account_sid,
            "EXOTEL_API_KEY": config.api_key,
            "EXOTEL_API_TOKEN": config.api_token,
            "EXOTEL_BASE_URL": base_url,
            **env,
        },
        dotenv=False,
    )
    return ExotelClient(settings)


@pytest.fixture
def sim() -> Iterator[tuple[SimulatorServer, str, SimulatorConfig]]:
    config = SimulatorConfig(seed=7)
    server, url = start_in_thread(config)
    yield server, url, config
    server.shutdown()


@pytest.fixture
def client(sim: tuple[SimulatorServer, str, SimulatorConfig]) -> Iterator[ExotelClient]:
    _server, url, config = sim
    c = client_for(url, config)
    yield c
    c.close()


def post(url: str, path: str, body: dict[str, Any]) -> requests.Response:
    answer = requests.post(f"{url}{path}", json=body, timeout=5)
    assert answer.status_code == 200, answer.text
    return answer


def check_legs(details: dict[str, Any], call_sid: str, account_sid: str) -> None:
    assert details["call_sid"] == call_sid
    assert details["account_sid"] == account_sid
    sides = [details["from"], details["to"]]
    agent_sides = [side for side in sides if all("group_id" in leg for leg in side)]
    customer_sides = [side for side in sides if not any("group_id" in leg for leg in side)]
    assert len(agent_sides) == 1 and len(customer_sides) == 1
    assert len(customer_sides[0]) == 1
    assert 1 <= len(agent_sides[0]) <= 3
    for leg in agent_sides[0]:
        assert leg["group_name"] and leg["group_id"]
        assert leg["name"]
        assert PHONE.match(leg["contact_uri"]) or SIP.match(leg["contact_uri"])
    assert PHONE.match(customer_sides[0][0]["contact_uri"])
    for leg in details["from"] + details["to"]:
        assert set(leg) >= {"sid", "name", "contact_uri", "date_created", "date_updated", "status"}
        assert re.fullmatch(r"[0-9a-f]{32}", leg["sid"])
        assert leg["status"] in STATUSES
        created = datetime.fromisoformat(leg["date_created"])
        updated = datetime.fromisoformat(leg["date_updated"])
        assert created.utcoffset() == IST and updated.utcoffset() == IST
        assert leg["date_created"].endswith("+05:30")
        assert updated >= created


# ------------------------------------------------------------- happy path
def test_plausible_legs_over_http(
    sim: tuple[SimulatorServer, str, SimulatorConfig], client: ExotelClient
) -> None:
    _server, _url, config = sim
    body = client.fetch_legs("CAplausible01")
    assert body["http_code"] == 200 and body["method"] == "GET"
    assert body["response"]["status"] == "success"
    assert body["response"]["error_data"] is None
    assert "metadata" in body and body["request_id"]
    check_legs(body["response"]["leg_details"], "CAplausible01", config.account_sid)


def test_generated_legs_are_plausible_and_varied() -> None:
    sids = [f"{i:032x}" for i in range(300)]
    all_details = [legs_for(sid, "acme") for sid in sids]
    for sid, details in zip(sids, all_details, strict=True):
        check_legs(details, sid, "acme")
    agent_legs = []
    for d in all_details:
        agent_legs.append(d["from"] if "group_id" in d["from"][0] else d["to"])
    uris = [leg["contact_uri"] for legs in agent_legs for leg in legs]
    assert any(u.startswith("sip:") for u in uris)
    assert any(u.startswith("+9198") for u in uris)
    customers = [(d["to"] if "group_id" in d["from"][0] else d["from"])[0] for d in all_details]
    assert any(c["contact_uri"].startswith("0") for c in customers)
    assert any(all(leg["status"] != "completed" for leg in legs) for legs in agent_legs)
    assert any(any(leg["status"] == "completed" for leg in legs) for legs in agent_legs)
    assert {len(legs) for legs in agent_legs} == {1, 2, 3}
    # Both directions: agents on the "from" side (outbound) and on the "to" side (inbound).
    assert any("group_id" in d["from"][0] for d in all_details)
    assert any("group_id" in d["to"][0] for d in all_details)


def test_same_sid_same_legs(client: ExotelClient) -> None:
    first = client.fetch_legs("CAsame123")["response"]["leg_details"]
    second = client.fetch_legs("CAsame123")["response"]["leg_details"]
    other = client.fetch_legs("CAother456")["response"]["leg_details"]
    assert first == second
    assert first != other


# ---------------------------------------------------------------- scripts
def test_script_two_500s_then_success(
    sim: tuple[SimulatorServer, str, SimulatorConfig], client: ExotelClient
) -> None:
    _server, url, _config = sim
    post(
        url,
        "/_sim/script",
        {"call_sid": "CAflaky", "responses": [{"status": 500, "code": 10715}] * 2},
    )
    for _ in range(2):
        with pytest.raises(TransientError) as info:
            client.fetch_legs("CAflaky")
        assert (info.value.upstream_status, info.value.upstream_code) == (500, 10715)
        assert "Error retrieving leg details" in info.value.message
    assert client.fetch_legs("CAflaky")["response"]["status"] == "success"
    assert client.fetch_legs("CAflaky")["response"]["status"] == "success"


def test_script_429_with_retry_after(
    sim: tuple[SimulatorServer, str, SimulatorConfig], client: ExotelClient
) -> None:
    _server, url, _config = sim
    post(
        url,
        "/_sim/script",
        {"call_sid": "CAbusy", "responses": [{"status": 429, "code": 10724, "retry_after": 2}]},
    )
    raw = requests.get(
        f"{url}/v3/accounts/exotel_sim/calls/CAbusy/legs", auth=("sim_key", "sim_token"), timeout=5
    )
    assert raw.status_code == 429
    assert raw.headers["Retry-After"] == "2"
    assert raw.json()["response"]["error_data"]["code"] == 10724

    post(
        url,
        "/_sim/script",
        {"call_sid": "CAbusy", "responses": [{"status": 429, "code": 10724, "retry_after": 2}]},
    )
    with pytest.raises(RateLimitedError) as info:
        client.fetch_legs("CAbusy")
    assert info.value.retry_after == 2.0
    assert info.value.kind is Kind.RATE_LIMITED


def test_script_other_shapes(
    sim: tuple[SimulatorServer, str, SimulatorConfig], client: ExotelClient
) -> None:
    _server, url, _config = sim
    post(
        url,
        "/_sim/script",
        {
            "call_sid": "CAshapes",
            "responses": [
                {"status": 502},  # an HTML page from a proxy
                {"status": 429, "code": 10724, "envelope": "v1", "retry_after": 1},
                {"status": 500, "code": 10743},
            ],
        },
    )
    with pytest.raises(TransientError) as info:
        client.fetch_legs("CAshapes")
    assert info.value.upstream_status == 502 and "text/html" in info.value.message
    with pytest.raises(RateLimitedError) as rate:
        client.fetch_legs("CAshapes")
    assert rate.value.retry_after == 1.0
    with pytest.raises(TransientError) as legs:
        client.fetch_legs("CAshapes")
    assert legs.value.upstream_code == 10743


def test_bad_control_requests_are_400(sim: tuple[SimulatorServer, str, SimulatorConfig]) -> None:
    _server, url, _config = sim
    for path, body in [
        ("/_sim/script", {"call_sid": "x", "responses": []}),
        ("/_sim/script", {"call_sid": "x", "responses": [{"status": "five hundred"}]}),
        ("/_sim/mode", {"mode": "chaos"}),
        ("/_sim/mode", {"mode": "slow", "delay": -1}),
    ]:
        assert requests.post(f"{url}{path}", json=body, timeout=5).status_code == 400


# ------------------------------------------------------- documented errors
def test_wrong_token_is_a_configuration_fault(
    sim: tuple[SimulatorServer, str, SimulatorConfig],
) -> None:
    _server, url, config = sim
    with client_for(url, config, EXOTEL_API_TOKEN="not_the_token") as c:
        with pytest.raises(ConfigFaultError) as info:
            c.fetch_legs("CAany")
    assert (info.value.upstream_status, info.value.upstream_code) == (401, 1010)
    assert "not_the_token" not in str(info.value)


def test_unknown_account_is_tenant_not_found(
    sim: tuple[SimulatorServer, str, SimulatorConfig],
) -> None:
    _server, url, config = sim
    with client_for(url, config, EXOTEL_ACCOUNT_SID="someone_else") as c:
        with pytest.raises(ConfigFaultError) as info:
            c.fetch_legs("CAany")
    assert (info.value.upstream_status, info.value.upstream_code) == (404, 1017)


def test_missing_call_is_call_not_found(client: ExotelClient) -> None:
    with pytest.raises(TransientError) as info:
        client.fetch_legs("missing-call-1")
    assert (info.value.upstream_status, info.value.upstream_code) == (404, 10744)
    assert info.value.max_attempts == 3


# ------------------------------------------------------------------ modes
def test_unauthorized_mode_then_reset(
    sim: tuple[SimulatorServer, str, SimulatorConfig], client: ExotelClient
) -> None:
    _server, url, _config = sim
    post(url, "/_sim/mode", {"mode": "unauthorized"})
    for _ in range(3):
        with pytest.raises(ConfigFaultError):
            client.fetch_legs("CAstorm")
    post(url, "/_sim/mode", {"mode": "normal"})
    assert client.fetch_legs("CAstorm")["response"]["status"] == "success"


def test_slow_mode_times_the_client_out(sim: tuple[SimulatorServer, str, SimulatorConfig]) -> None:
    _server, url, config = sim
    post(url, "/_sim/mode", {"mode": "slow", "delay": 1.0})
    with client_for(url, config, EXOTEL_TIMEOUT_SECONDS="0.2") as c:
        with pytest.raises(TransientError) as info:
            c.fetch_legs("CAslow")
    assert isinstance(info.value.__cause__, requests.Timeout)
    assert "CAslow" in info.value.message and "127.0.0.1" in info.value.message
    post(url, "/_sim/reset", {})


# ------------------------------------------------------- injected faults
def test_fail_rate_and_latency() -> None:
    config = SimulatorConfig(fail_rate=1.0, fail_code=10743, latency_ms=50, seed=1)
    server, url = start_in_thread(config)
    try:
        with client_for(url, config) as c:
            with pytest.raises(TransientError) as info:
                c.fetch_legs("CAfail")
            assert (info.value.upstream_status, info.value.upstream_code) == (500, 10743)
    finally:
        server.shutdown()


def test_global_rate_limit_answers_429_with_headers() -> None:
    config = SimulatorConfig(rate_limit=Rate(3, 60), retry_after=5)
    server, url = start_in_thread(config)
    try:
        legs = f"{url}/v3/accounts/{config.account_sid}/calls/CArl/legs"
        auth = (config.api_key, config.api_token)
        answers = [requests.get(legs, auth=auth, timeout=5) for _ in range(4)]
        assert [a.status_code for a in answers] == [200, 200, 200, 429]
        assert answers[0].headers["X-RateLimit-Limit"] == "3"
        assert answers[0].headers["X-RateLimit-Remaining"] == "2"
        limited = answers[3]
        assert limited.headers["Retry-After"] == "5"
        assert limited.headers["X-RateLimit-Remaining"] == "0"
        assert 0 < int(limited.headers["X-RateLimit-Reset"]) <= 60
        assert limited.json()["response"]["error_data"]["code"] == 10724
        with client_for(url, config) as c:
            with pytest.raises(RateLimitedError) as info:
                c.fetch_legs("CArl2")
        assert info.value.retry_after == 5.0
        requests.post(f"{url}/_sim/reset", timeout=5)
        assert requests.get(legs, auth=auth, timeout=5).status_code == 200
    finally:
        server.shutdown()


# ------------------------------------------------------------ request log
def test_request_log_counts_and_reset(
    sim: tuple[SimulatorServer, str, SimulatorConfig], client: ExotelClient
) -> None:
    _server, url, _config = sim
    for _ in range(3):
        client.fetch_legs("CAone")
    client.fetch_legs("CAtwo")
    with pytest.raises(TransientError):
        client.fetch_legs("missing1")
    log = requests.get(f"{url}/_sim/requests", timeout=5).json()
    assert log["total"] == 5
    assert {sid: len(times) for sid, times in log["by_call"].items()} == {
        "CAone": 3,
        "CAtwo": 1,
        "missing1": 1,
    }
    assert log["by_status"] == {"200": 4, "404": 1}
    times = log["by_call"]["CAone"]
    assert times == sorted(times) and all(t > 1_600_000_000 for t in times)
    post(url, "/_sim/reset", {})
    assert requests.get(f"{url}/_sim/requests", timeout=5).json()["total"] == 0


def test_concurrent_requests_are_all_counted(
    sim: tuple[SimulatorServer, str, SimulatorConfig], client: ExotelClient
) -> None:
    _server, url, _config = sim
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            for i in range(10):
                client.fetch_legs(f"CAc{n}x{i}")
        except BaseException as err:
            errors.append(err)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    log = requests.get(f"{url}/_sim/requests", timeout=5).json()
    assert log["total"] == 80 and len(log["by_call"]) == 80


def test_no_access_log_lines(caplog: pytest.LogCaptureFixture, client: ExotelClient) -> None:
    with caplog.at_level(logging.DEBUG, logger="werkzeug"):
        client.fetch_legs("CAquiet")
    assert not [r for r in caplog.records if r.name == "werkzeug"]


# ------------------------------------------------------------ several accounts
def test_several_accounts_each_with_its_own_credentials_mode_and_limit() -> None:
    from worker.calls.simulator import SimAccount

    north = SimAccount("acme_north", "k_north", "t_north", Rate(2, 60))
    south = SimAccount("acme_south", "k_south", "t_south")
    config = SimulatorConfig(accounts=(north, south))
    server, url = start_in_thread(config)

    def get(account: str, auth: tuple[str, str], call: str = "CAx") -> requests.Response:
        legs = f"{url}/v3/accounts/{account}/calls/{call}/legs"
        return requests.get(legs, auth=auth, timeout=5)

    try:
        good = get("acme_north", ("k_north", "t_north"))
        assert good.status_code == 200
        assert good.json()["response"]["leg_details"]["account_sid"] == "acme_north"
        assert get("acme_south", ("k_south", "t_south")).status_code == 200
        assert get(config.account_sid, (config.api_key, config.api_token)).status_code == 200
        # Another account's key and token do not open this one; an unknown sid is 1017.
        crossed = get("acme_south", ("k_north", "t_north"))
        assert crossed.status_code == 401
        assert crossed.json()["response"]["error_data"]["code"] == 1010
        assert get("acme_west", ("k_north", "t_north")).json()["http_code"] == 404
        # North's own limit (2/minute) runs out; south is untouched.
        assert get("acme_north", ("k_north", "t_north")).status_code == 200
        assert get("acme_north", ("k_north", "t_north")).status_code == 429
        assert get("acme_south", ("k_south", "t_south")).status_code == 200
        # A storm on one account only.
        post(url, "/_sim/mode", {"mode": "unauthorized", "account": "acme_south"})
        assert get("acme_south", ("k_south", "t_south")).status_code == 401
        post(url, "/_sim/mode", {"mode": "rate-limited", "account": "acme_south"})
        limited = get("acme_south", ("k_south", "t_south"))
        assert limited.status_code == 429 and limited.headers["Retry-After"] == "2"
        assert get(config.account_sid, (config.api_key, config.api_token)).status_code == 200
        log = requests.get(f"{url}/_sim/requests", timeout=5).json()
        assert log["by_account"]["acme_south"] == {"200": 2, "401": 2, "429": 1}
        assert log["modes"] == {"acme_south": "rate-limited"}
        refused = requests.post(
            f"{url}/_sim/mode", json={"mode": "unauthorized", "account": "nobody"}, timeout=5
        )
        assert refused.status_code == 400
    finally:
        server.shutdown()


# ------------------------------------------------------ legs from the callback
DEMO = {
    "CallSid": "demo1700000000",
    "Status": "completed",
    "Direction": "outbound-api",
    "From": "09876543210",
    "To": "09123456789",
}


def test_outbound_callback_numbers_become_the_legs() -> None:
    details = legs_for("demo1700000000", "acme", DEMO)
    check_legs(details, "demo1700000000", "acme")
    [agent], [customer] = details["from"], details["to"]
    assert (agent["contact_uri"], agent["status"]) == ("09876543210", "completed")
    assert (customer["contact_uri"], customer["status"]) == ("09123456789", "completed")


@pytest.mark.parametrize("status", ["busy", "no-answer", "failed", "canceled"])
def test_an_unanswered_callback_gives_unanswered_legs(status: str) -> None:
    for n in range(20):
        details = legs_for(f"demo{n}", "acme", {**DEMO, "Status": status})
        [agent] = details["from"]
        assert agent["contact_uri"] == "09876543210" and agent["status"] != "completed"


def test_inbound_callback_caller_is_the_customer_and_the_dialled_agent_answers() -> None:
    callback = {
        "Direction": "incoming",
        "From": "09812345678",
        "To": "08047112233",
        "DialWhomNumber": "09700000001",
        "Status": "completed",
    }
    for n in range(20):
        details = legs_for(f"in{n}", "acme", callback)
        check_legs(details, f"in{n}", "acme")
        [customer] = details["from"]
        assert customer["contact_uri"] == "09812345678"
        answered = [leg for leg in details["to"] if leg["status"] == "completed"]
        assert [leg["contact_uri"] for leg in answered] == ["09700000001"]


def test_without_a_callback_the_legs_are_as_before() -> None:
    assert (
        legs_for("CAsame", "acme")
        == legs_for("CAsame", "acme", None)
        == legs_for("CAsame", "acme", {})
    )


def test_the_simulator_looks_up_the_callback_and_survives_a_failing_lookup() -> None:
    def lookup(call_sid: str) -> dict[str, str] | None:
        if call_sid == "broken":
            raise ConnectionError("redis is gone")
        return DEMO if call_sid == "demo1700000000" else None

    config = SimulatorConfig(callbacks=lookup)
    server, url = start_in_thread(config)
    c = client_for(url, config)
    try:
        legs = c.fetch_legs("demo1700000000")["response"]["leg_details"]
        assert legs["from"][0]["contact_uri"] == "09876543210"
        assert legs["to"][0]["contact_uri"] == "09123456789"
        check_legs(c.fetch_legs("broken")["response"]["leg_details"], "broken", config.account_sid)
    finally:
        c.close()
        server.shutdown()
