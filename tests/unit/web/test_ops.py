"""The console's access rules through Flask's test client: credential, sessions, CSRF, CSP, masking.

The browser tests (tests/browser/) do the same through a real Chromium.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.security import generate_password_hash

from tests.conftest import CALLBACK_TOKEN
from tests.unit.web.conftest import URL
from web.ops import audit
from web.ops.auth import COOKIE, session_key
from worker import keys
from worker.errors import SettingsError
from worker.settings import Settings

PASSWORD = "correct-horse-battery"
CUSTOMER = "+919876543210"


@pytest.fixture
def ops_app(make_app: Callable[..., Flask]) -> Flask:
    return make_app(OPS_PASSWORD=PASSWORD)


def csrf_of(page: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert match, page[:500]
    return match.group(1)


def login(client: FlaskClient, user: str = "ops", password: str = PASSWORD) -> str:
    """Log in through the form; returns the session's CSRF token."""
    form = client.get("/ops/login")
    response = client.post(
        "/ops/login",
        data={"user": user, "password": password, "csrf_token": csrf_of(form.text)},
    )
    assert response.status_code == 303, response.text
    return csrf_of(client.get("/ops/").text)


def test_no_credential_no_console(make_app: Callable[..., Flask]) -> None:
    client = make_app().test_client()
    assert client.get("/ops/").status_code == 404
    assert client.get("/ops/api/overview").status_code == 404


def test_ops_password_must_not_be_a_callback_token() -> None:
    with pytest.raises(SettingsError, match="OPS_PASSWORD: must not be a callback token"):
        Settings.from_env(
            {"CALLBACK_TOKEN": CALLBACK_TOKEN, "OPS_PASSWORD": CALLBACK_TOKEN}, dotenv=False
        )
    with pytest.raises(SettingsError, match="OPS_PASSWORD: must be 12 or more"):
        Settings.from_env({"OPS_PASSWORD": "short"}, dotenv=False)


def test_pages_need_a_login_and_the_api_says_401(ops_app: Flask) -> None:
    client = ops_app.test_client()
    page = client.get("/ops/dead?sink=jsonl")
    assert page.status_code == 303
    assert page.headers["Location"].startswith("/ops/login?next=")
    polled = client.get("/ops/partials/overview", headers={"HX-Request": "true"})
    assert polled.headers["HX-Redirect"].startswith("/ops/login")
    api = client.get("/ops/api/overview")
    assert api.status_code == 401
    assert "log in" in api.get_json()["error"]


def test_wrong_password_is_refused_and_the_callback_token_is_no_credential(
    ops_app: Flask,
) -> None:
    client = ops_app.test_client()
    for password in ("wrong-password-123", CALLBACK_TOKEN):
        form = client.get("/ops/login")
        response = client.post(
            "/ops/login",
            data={"user": "ops", "password": password, "csrf_token": csrf_of(form.text)},
        )
        assert response.status_code == 401
        assert "wrong user name or password" in response.text
    assert client.get("/ops/").status_code == 303


def test_login_form_needs_its_own_csrf_cookie(ops_app: Flask) -> None:
    client = ops_app.test_client()
    response = client.post(
        "/ops/login", data={"user": "ops", "password": PASSWORD, "csrf_token": "forged"}
    )
    assert response.status_code == 403


def test_overview_has_strict_csp_and_no_inline_script(ops_app: Flask) -> None:
    client = ops_app.test_client()
    login(client)
    page = client.get("/ops/")
    assert page.status_code == 200
    csp = page.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    assert page.headers["X-Frame-Options"] == "DENY"
    assert page.headers["Cache-Control"] == "no-store"
    assert "<script>" not in page.text and " style=" not in page.text
    assert "/ops/static/htmx.min.js" in page.text
    htmx = client.get("/ops/static/htmx.min.js")
    assert htmx.status_code == 200 and b"htmx" in htmx.data
    overview = client.get("/ops/api/overview").get_json()
    assert set(overview) >= {"status", "backlog", "sinks", "accounts"}
    assert overview["status"]["redis"]["maxmemory_policy"] == "noeviction"


def test_posts_without_the_csrf_token_are_refused(
    ops_app: Flask, redis_client: redis.Redis
) -> None:
    client = ops_app.test_client()
    csrf = login(client)
    assert client.post("/ops/dead/purge", data={}).status_code == 403
    assert client.post("/ops/dead/purge", data={"csrf_token": "nope"}).status_code == 403
    assert client.post("/ops/api/dead/purge", json={"confirm": 0}).status_code == 403
    other_site = client.post(
        "/ops/dead/purge", data={"csrf_token": csrf}, headers={"Origin": "https://evil.example"}
    )
    assert other_site.status_code == 403
    assert client.post("/ops/dead/purge", data={"csrf_token": csrf}).status_code == 200


def test_logout_ends_the_session_everywhere(ops_app: Flask) -> None:
    client = ops_app.test_client()
    csrf = login(client)
    cookie = client.get_cookie(COOKIE, path="/ops")
    assert cookie is not None
    client.post("/ops/logout", data={"csrf_token": csrf})
    replayed = ops_app.test_client()
    replayed.set_cookie(COOKIE, cookie.value, path="/ops")
    assert replayed.get("/ops/api/overview").status_code == 401


def test_sessions_expire(ops_app: Flask, redis_client: redis.Redis) -> None:
    client = ops_app.test_client()
    login(client)
    cookie = client.get_cookie(COOKIE, path="/ops")
    assert cookie is not None
    key = session_key(cookie.value)
    ttl = redis_client.ttl(key)
    assert 0 < ttl <= 3600  # OPS_SESSION_MINUTES=60 by default
    redis_client.expire(key, 100)
    client.get("/ops/partials/overview")  # the overview's own refresh keeps nothing alive
    assert 0 < redis_client.ttl(key) <= 100
    client.get("/ops/api/overview")  # an operator's request does
    assert redis_client.ttl(key) > 3500
    redis_client.pexpire(key, 1)  # as if the hour had passed
    time.sleep(0.01)
    assert client.get("/ops/api/overview").status_code == 401


def test_users_file_with_hashed_passwords(make_app: Callable[..., Flask], tmp_path: Path) -> None:
    users = tmp_path / "ops-users"
    users.write_text(f"# name:hash\nana:{generate_password_hash('ana-password-123')}\n")
    app = make_app(OPS_USERS_FILE=str(users))
    client = app.test_client()
    login(client, "ana", "ana-password-123")
    assert "Log out ana" in client.get("/ops/").text
    plain = tmp_path / "plain"
    plain.write_text("bob:secret-password\n")
    with pytest.raises(SettingsError, match="OPS_USERS_FILE: line 1: the password of 'bob'"):
        Settings.from_env({"OPS_USERS_FILE": str(plain)}, dotenv=False)


def seed_call(client: redis.Redis, call_sid: str = "CAmask01") -> None:
    record = {
        "call_sid": call_sid,
        "status": "completed",
        "from": [{"contact_uri": "09876543210", "phone_e164": CUSTOMER, "role": "customer"}],
        "to": [{"contact_uri": "sip:agent@example.com", "phone_e164": None, "role": "agent"}],
        "customer": {"contact_uri": "09876543210", "phone_e164": CUSTOMER},
        "started_at": "2026-12-01T10:00:00+05:30",
    }
    client.set(keys.record(call_sid), json.dumps(record))


def test_numbers_are_masked_until_revealed_and_the_reveal_is_audited(
    ops_app: Flask, redis_client: redis.Redis
) -> None:
    client = ops_app.test_client()
    csrf = login(client)
    seed_call(redis_client)
    page = client.get("/ops/calls/CAmask01")
    assert page.status_code == 200
    assert "9876543210" not in page.text and "•••3210" in page.text
    assert "2026-12-01T10:00:00+05:30" in page.text  # dates are not numbers
    api = client.get("/ops/api/calls/CAmask01").get_json()
    assert "9876543210" not in json.dumps(api)
    index = next(n["index"] for n in api["numbers"] if n["masked"] == "•••3210")
    assert client.post("/ops/calls/CAmask01/reveal", data={"index": index}).status_code == 403
    shown = client.post(
        "/ops/calls/CAmask01/reveal",
        data={"index": index, "csrf_token": csrf},
        headers={"HX-Request": "true"},
    )
    assert shown.status_code == 200 and "9876543210" in shown.text
    entries = audit.recent(redis_client)
    assert entries[0]["action"] == "reveal" and entries[0]["target"] == "CAmask01"
    assert "9876543210" not in json.dumps(entries)
    assert "reveal" in client.get("/ops/audit").text


def test_lookup_by_sid_and_by_last_digits(ops_app: Flask, redis_client: redis.Redis) -> None:
    from worker.calls import timeline

    client = ops_app.test_client()
    login(client)
    seed_call(redis_client, "CAdigits1")
    pipe = redis_client.pipeline()
    timeline.index_numbers(pipe, "CAdigits1", [CUSTOMER], 3600)
    pipe.execute()
    assert client.get("/ops/calls?q=CAdigits1").headers["Location"] == "/ops/calls/CAdigits1"
    match = [{"account": "default", "call_sid": "CAdigits1"}]
    assert client.get("/ops/api/calls?q=3210").get_json()["calls"] == match
    assert client.get("/ops/api/calls?q=43210").get_json()["calls"] == match
    assert client.get("/ops/api/calls?q=53210").get_json()["calls"] == []
    assert client.get("/ops/api/calls/CAnothing").status_code == 404


def test_callback_is_counted_in_metrics(make_app: Callable[..., Flask]) -> None:
    app = make_app(METRICS_TOKEN="metrics-token-0123456789")
    client = app.test_client()
    client.post(URL, data={"CallSid": "CAm1", "Status": "completed"})
    client.post(URL, data={"CallSid": "CAm1", "Status": "completed"})
    client.post("/exotel/callback/wrong-token-0123456789", data={"CallSid": "CAm2"})
    app.extensions["exolegs"].counts.flush()  # refusals are added once a second
    assert client.get("/metrics").status_code == 401
    wrong = client.get("/metrics", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    text = client.get(
        "/metrics", headers={"Authorization": "Bearer metrics-token-0123456789"}
    ).text
    assert 'exolegs_callbacks_total{account="default",outcome="accepted"} 1' in text
    assert 'exolegs_callbacks_total{account="default",outcome="duplicate"} 1' in text
    assert 'exolegs_callbacks_total{outcome="rejected"} 1' in text
    assert "exolegs_jobs_booked 1" in text
    assert "# TYPE exolegs_callback_to_last_sink_seconds histogram" in text


def test_metrics_absent_without_a_token(make_app: Callable[..., Flask]) -> None:
    assert make_app().test_client().get("/metrics").status_code == 404


def test_every_account_has_its_row_and_its_calls_are_found(
    make_app: Callable[..., Flask], redis_client: redis.Redis, tmp_path: Path
) -> None:
    accounts = {
        "acme": {
            "sid": "acme1", "api_key": "k", "api_token": "acme-token-123",
            "callback_tokens": "acme-callback-token-0123456789", "rate_limit": "60/minute",
            "sinks": f"jsonl://{tmp_path}/acme.jsonl?name=acme-file",
        },
    }  # fmt: skip
    app = make_app(OPS_PASSWORD=PASSWORD, EXOTEL_ACCOUNTS=json.dumps(accounts))
    client = app.test_client()
    login(client)
    client.post("/exotel/callback/acme-callback-token-0123456789", data={"CallSid": "CAacme1"})
    rows = {a["name"]: a for a in client.get("/ops/api/overview").get_json()["accounts"]}
    assert set(rows) == {"default", "acme"}
    assert rows["acme"]["limit_per_minute"] == 60 and rows["acme"]["sinks"] == ["acme-file"]
    found = client.get("/ops/api/calls?q=CAacme1").get_json()["calls"]
    assert found == [{"account": "acme", "call_sid": "CAacme1"}]
    assert client.get("/ops/calls?q=CAacme1").headers["Location"] == (
        "/ops/calls/CAacme1?account=acme"
    )
    view = client.get("/ops/api/calls/CAacme1?account=acme").get_json()
    assert view["account"] == "acme" and view["timeline"][0]["k"] == "callback"
    assert [s["name"] for s in view["sinks"]] == ["acme-file"]
    assert client.get("/ops/api/calls/CAacme1").status_code == 404  # not the default's


def test_redis_down_is_said_not_a_500(tmp_path: Path) -> None:
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    from tests.support.redis_server import free_port
    from tests.unit.web.conftest import base_env
    from web.app import create_app
    from worker.runtime import Runtime

    port = free_port()
    env = {**base_env(f"redis://127.0.0.1:{port}/0", tmp_path), "OPS_PASSWORD": PASSWORD}
    settings = Settings.from_env(env, dotenv=False)
    dead = redis.Redis(port=port, socket_connect_timeout=0.5, retry=Retry(NoBackoff(), 0))
    app = create_app(settings, runtime=Runtime(settings, client=dead))
    try:
        client = app.test_client()
        client.set_cookie("exolegs_ops", "some-session", path="/ops")
        page = client.get("/ops/")
        assert page.status_code == 503 and "Redis is unreachable" in page.text
        api = client.get("/ops/api/overview")
        assert api.status_code == 503 and "Redis is unreachable" in api.get_json()["error"]
    finally:
        app.extensions["exolegs"].drainer.stop()
