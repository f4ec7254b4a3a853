"""ExotelClient against Exotel's documented answers, faked with ``responses``."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from email.utils import formatdate
from typing import Any

import pytest
import requests
import responses

from worker.calls.exotel import POOL_SIZE, ExotelClient, parse_retry_after
from worker.errors import (
    ConfigFaultError,
    ExolegsError,
    Kind,
    PermanentError,
    RateLimitedError,
    TransientError,
)
from worker.settings import Settings

ACCOUNT = "acme_corp1"
KEY = "apikey_5f1e9b7c"
TOKEN = "apitoken_d41d8cd98f00b204"
SID = "80bfbec2d78bbbf10fb851f4fa165211"
SG = "https://ccm-api.exotel.com"
IN = "https://ccm-api.in.exotel.com"
URL = f"{SG}/v3/accounts/{ACCOUNT}/calls/{SID}/legs"
SECRETS = (KEY, TOKEN, base64.b64encode(f"{KEY}:{TOKEN}".encode()).decode())


def make_settings(**env: str) -> Settings:
    base = {"EXOTEL_ACCOUNT_SID": ACCOUNT, "EXOTEL_API_KEY": KEY, "EXOTEL_API_TOKEN": TOKEN}
    return Settings.from_env({**base, **env}, dotenv=False)


def success_body(call_sid: str = SID) -> dict[str, Any]:
    return {
        "request_id": "3f2d5b1c0e5a4d6fb1c2a3e4f5a6b7c8",
        "method": "GET",
        "http_code": 200,
        "metadata": None,
        "response": {
            "code": 200,
            "error_data": None,
            "status": "success",
            "leg_details": {
                "call_sid": call_sid,
                "account_sid": ACCOUNT,
                "from": [
                    {
                        "sid": "leg1",
                        "name": "Priya Sharma",
                        "contact_uri": "+919876543210",
                        "date_created": "2025-01-15T14:25:10+05:30",
                        "date_updated": "2025-01-15T14:30:45+05:30",
                        "status": "completed",
                        "group_id": "g1",
                        "group_name": "Sales",
                    }
                ],
                "to": [
                    {
                        "sid": "leg2",
                        "name": None,
                        "contact_uri": "09123456789",
                        "date_created": "2025-01-15T14:25:14+05:30",
                        "date_updated": "2025-01-15T14:30:44+05:30",
                        "status": "completed",
                    }
                ],
            },
        },
    }


def error_body(status: int, code: int | None, message: str = "boom") -> dict[str, Any]:
    return {
        "request_id": "c6084ac2e9a44812824b42577f01937b",
        "method": "GET",
        "http_code": status,
        "response": {
            "code": status,
            "error_data": {"code": code, "message": message, "description": message},
            "status": "failure",
            "data": None,
        },
    }


@pytest.fixture
def client() -> Iterator[ExotelClient]:
    c = ExotelClient(make_settings())
    yield c
    c.close()


def fetch_error(client: ExotelClient, call_sid: str = SID) -> ExolegsError:
    with pytest.raises(ExolegsError) as info:
        client.fetch_legs(call_sid)
    err = info.value
    text = f"{err} {err!r} {err.message}"
    for secret in SECRETS:
        assert secret not in text
    return err


# ---------------------------------------------------------------- success
@responses.activate
def test_success_returns_the_full_parsed_body(client: ExotelClient) -> None:
    responses.get(URL, json=success_body())
    body = client.fetch_legs(SID)
    assert body == success_body()
    details = body["response"]["leg_details"]
    assert details["from"][0]["group_name"] == "Sales"
    assert details["to"][0]["contact_uri"] == "09123456789"


@responses.activate
def test_request_uses_basic_auth_json_and_explicit_timeouts(client: ExotelClient) -> None:
    responses.get(URL, json=success_body())
    client.fetch_legs(SID)
    assert len(responses.calls) == 1
    sent = responses.calls[0].request
    expected = base64.b64encode(f"{KEY}:{TOKEN}".encode()).decode()
    assert sent.headers["Authorization"] == f"Basic {expected}"
    assert sent.headers["Accept"] == "application/json"
    assert sent.url == URL
    for secret in SECRETS:
        assert secret not in str(sent.url)
    connect, read = sent.req_kwargs["timeout"]  # type: ignore[attr-defined]
    assert read == 10.0
    assert 0 < connect <= read


def test_session_is_pooled() -> None:
    with ExotelClient(make_settings()) as c:
        adapter = c.session.get_adapter(SG)
        assert isinstance(adapter, requests.adapters.HTTPAdapter)
        assert adapter._pool_maxsize == POOL_SIZE  # type: ignore[attr-defined]


def test_timeout_setting_is_used() -> None:
    c = ExotelClient(make_settings(EXOTEL_TIMEOUT_SECONDS="2.5"))
    assert c.timeout == (2.5, 2.5)
    c = ExotelClient(make_settings(EXOTEL_TIMEOUT_SECONDS="30"))
    assert c.timeout[1] == 30.0 and c.timeout[0] <= 5.0


@pytest.mark.parametrize(("region", "host"), [("sg", SG), ("in", IN)])
@responses.activate
def test_singapore_and_mumbai_hosts(region: str, host: str) -> None:
    url = f"{host}/v3/accounts/{ACCOUNT}/calls/{SID}/legs"
    responses.get(url, json=success_body())
    with ExotelClient(make_settings(EXOTEL_REGION=region)) as c:
        assert c.legs_url(SID) == url
        assert c.fetch_legs(SID)["response"]["status"] == "success"
    assert responses.calls[0].request.url == url


def test_base_url_override_keeps_port_and_drops_userinfo() -> None:
    c = ExotelClient(make_settings(EXOTEL_BASE_URL="http://someone:pw@127.0.0.1:8099/"))
    assert c.legs_url("CA1") == f"http://127.0.0.1:8099/v3/accounts/{ACCOUNT}/calls/CA1/legs"
    assert c.host == "127.0.0.1:8099"


# ----------------------------------------------------- documented errors
@pytest.mark.parametrize(
    ("status", "code", "cls", "kind"),
    [
        (401, 1010, ConfigFaultError, Kind.CONFIG),
        (404, 1017, ConfigFaultError, Kind.CONFIG),
        (404, 10744, TransientError, Kind.TRANSIENT),
        (429, 10724, RateLimitedError, Kind.RATE_LIMITED),
        (500, 10715, TransientError, Kind.TRANSIENT),
        (500, 10743, TransientError, Kind.TRANSIENT),
    ],
)
@responses.activate
def test_documented_errors_map_to_their_kind(
    client: ExotelClient, status: int, code: int, cls: type[ExolegsError], kind: Kind
) -> None:
    responses.get(URL, json=error_body(status, code, "Documented failure"), status=status)
    err = fetch_error(client)
    assert type(err) is cls
    assert err.kind is kind
    assert (err.upstream_status, err.upstream_code) == (status, code)
    assert SID in err.message and f"{status}/{code}" in err.message
    assert "Documented failure" in err.message


@responses.activate
def test_call_not_found_is_retried_a_few_times_only(client: ExotelClient) -> None:
    responses.get(URL, json=error_body(404, 10744, "Call not found"), status=404)
    err = fetch_error(client)
    assert err.kind is Kind.TRANSIENT and err.retryable
    assert err.max_attempts == 3


@responses.activate
def test_too_many_requests_honours_retry_after(client: ExotelClient) -> None:
    responses.get(
        URL,
        json=error_body(429, 10724, "Too many requests"),
        status=429,
        headers={"Retry-After": "2"},
    )
    err = fetch_error(client)
    assert isinstance(err, RateLimitedError)
    assert err.kind is Kind.RATE_LIMITED
    assert err.retry_after == 2.0


@responses.activate
def test_retry_after_as_http_date(client: ExotelClient) -> None:
    import time

    when = formatdate(time.time() + 60, usegmt=True)
    responses.get(URL, json=error_body(429, 10724), status=429, headers={"Retry-After": when})
    err = fetch_error(client)
    assert err.retry_after is not None and 55 <= err.retry_after <= 61


@responses.activate
def test_rate_limit_reset_is_used_when_retry_after_is_absent(client: ExotelClient) -> None:
    responses.get(
        URL,
        json=error_body(429, 10724),
        status=429,
        headers={
            "X-RateLimit-Limit": "200",
            "X-RateLimit-Remaining": "0",
            "X-RateLimit-Reset": "7",
        },
    )
    assert fetch_error(client).retry_after == 7.0


@responses.activate
def test_rate_limit_reset_as_epoch_seconds(client: ExotelClient) -> None:
    import time

    reset = str(int(time.time()) + 30)
    headers = {"X-RateLimit-Reset": reset}
    responses.get(URL, json=error_body(429, 10724), status=429, headers=headers)
    delay = fetch_error(client).retry_after
    assert delay is not None and 25 <= delay <= 31


@responses.activate
def test_v1_rest_exception_envelope(client: ExotelClient) -> None:
    body = {"RestException": {"Status": 429, "Message": "Slow down", "Code": "RATE_LIMIT_EXCEEDED"}}
    responses.get(URL, json=body, status=429, headers={"Retry-After": "30"})
    err = fetch_error(client)
    assert isinstance(err, RateLimitedError)
    assert err.retry_after == 30.0
    assert "Slow down" in err.message and "RATE_LIMIT_EXCEEDED" in err.message


@pytest.mark.parametrize("status", [500, 502, 503, 504])
@responses.activate
def test_bare_server_errors_are_transient(client: ExotelClient, status: int) -> None:
    responses.get(URL, body="", status=status)
    err = fetch_error(client)
    assert type(err) is TransientError
    assert err.upstream_status == status and err.upstream_code is None


@responses.activate
def test_html_502_from_a_proxy_is_transient(client: ExotelClient) -> None:
    html = "<html><head><title>502 Bad Gateway</title></head><body><h1>502</h1></body></html>"
    responses.get(URL, body=html, status=502, content_type="text/html")
    err = fetch_error(client)
    assert type(err) is TransientError
    assert "text/html" in err.message
    assert "<html>" not in err.message


@responses.activate
def test_500_envelope_without_error_data_is_transient(client: ExotelClient) -> None:
    body = error_body(500, None)
    body["response"]["error_data"] = None
    responses.get(URL, json=body, status=500)
    assert type(fetch_error(client)) is TransientError


@responses.activate
def test_403_is_a_configuration_fault_and_400_is_permanent(client: ExotelClient) -> None:
    responses.get(URL, json={"message": "Forbidden"}, status=403)
    assert fetch_error(client).kind is Kind.CONFIG
    responses.replace(responses.GET, URL, json={"message": "Bad request"}, status=400)
    assert type(fetch_error(client)) is PermanentError


@responses.activate
def test_redirect_is_a_configuration_fault(client: ExotelClient) -> None:
    responses.get(URL, status=301, headers={"Location": "https://elsewhere.example/x"})
    err = fetch_error(client)
    assert err.kind is Kind.CONFIG
    assert "EXOTEL_BASE_URL" in err.message
    assert len(responses.calls) == 1  # not followed


# ------------------------------------------------------ glitchy success
@pytest.mark.parametrize(
    "body",
    [
        "not json at all",
        json.dumps({"request_id": "x", "http_code": 200, "response": {"status": "success"}}),
        json.dumps({"response": {"status": "success", "leg_details": {"from": "nope"}}}),
        json.dumps([1, 2, 3]),
        json.dumps({"response": {"status": "pending", "leg_details": {"from": [], "to": []}}}),
    ],
)
@responses.activate
def test_200_that_is_not_the_success_envelope_is_transient(client: ExotelClient, body: str) -> None:
    responses.get(URL, body=body, status=200, content_type="application/json")
    err = fetch_error(client)
    assert type(err) is TransientError
    assert err.upstream_status == 200


@responses.activate
def test_200_carrying_a_failure_envelope_trusts_the_envelope(client: ExotelClient) -> None:
    responses.get(URL, json=error_body(500, 10743, "Legs not found"), status=200)
    err = fetch_error(client)
    assert type(err) is TransientError
    assert (err.upstream_status, err.upstream_code) == (500, 10743)


# ------------------------------------------------------- network errors
@pytest.mark.parametrize(
    "exc",
    [
        requests.ConnectTimeout("connect timed out"),
        requests.ReadTimeout("read timed out"),
        requests.ConnectionError("connection refused"),
        requests.exceptions.SSLError("bad handshake"),
        requests.exceptions.ChunkedEncodingError("connection broken"),
    ],
)
@responses.activate
def test_network_errors_are_transient_and_chained(
    client: ExotelClient, exc: requests.RequestException
) -> None:
    responses.get(URL, body=exc)
    err = fetch_error(client)
    assert type(err) is TransientError
    assert err.__cause__ is exc
    assert SID in err.message
    assert "ccm-api.exotel.com" in err.message


# -------------------------------------------------- refused before sending
@pytest.mark.parametrize(
    "bad",
    ["../legs", "..", "a/b", "CA1/../../v1", "%2e%2e", "a b", "", "x" * 65, "CA1?x=1", "ç"],
)
@responses.activate
def test_malformed_call_sid_is_refused_before_any_request(client: ExotelClient, bad: str) -> None:
    with pytest.raises(PermanentError):
        client.legs_url(bad)
    with pytest.raises(PermanentError):
        client.fetch_legs(bad)
    assert len(responses.calls) == 0


@responses.activate
def test_not_configured_is_a_configuration_fault() -> None:
    c = ExotelClient(Settings.from_env({}, dotenv=False))
    with pytest.raises(ConfigFaultError) as info:
        c.fetch_legs(SID)
    assert "EXOTEL_ACCOUNT_SID/EXOTEL_API_KEY/EXOTEL_API_TOKEN are not set" in str(info.value)
    assert len(responses.calls) == 0


@responses.activate
def test_upstream_message_echoing_credentials_is_scrubbed(client: ExotelClient) -> None:
    responses.get(URL, json=error_body(401, 1010, f"bad token {TOKEN} for {KEY}"), status=401)
    err = fetch_error(client)  # asserts no secret in the message
    assert "***" in err.message


@responses.activate
def test_injected_session_is_used_and_not_closed() -> None:
    session = requests.Session()
    responses.get(URL, json=success_body())
    c = ExotelClient(make_settings(), session=session)
    assert c.session is session
    c.fetch_legs(SID)
    c.close()
    assert len(responses.calls) == 1


# ------------------------------------------------------- parse_retry_after
def test_parse_retry_after() -> None:
    now = 1_700_000_000.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("") is None
    assert parse_retry_after("2") == 2.0
    assert parse_retry_after(" 1.5 ") == 1.5
    assert parse_retry_after("0") == 0.0
    assert parse_retry_after("-3") is None
    assert parse_retry_after("nan") is None
    assert parse_retry_after("soon") is None
    assert parse_retry_after(formatdate(now + 120, usegmt=True), now=now) == 120.0
    assert parse_retry_after(formatdate(now - 120, usegmt=True), now=now) == 0.0


def test_a_dated_retry_after_is_read_by_the_servers_clock_not_ours() -> None:
    """A host whose clock is a minute off still waits what the server asked."""
    from worker.calls.exotel import server_now

    headers = {"Date": "Tue, 01 Dec 2026 10:00:00 GMT"}
    now = server_now(headers)
    assert now is not None
    assert parse_retry_after("Tue, 01 Dec 2026 10:00:30 GMT", now) == 30
    assert server_now({}) is None and server_now({"Date": "garbage"}) is None
