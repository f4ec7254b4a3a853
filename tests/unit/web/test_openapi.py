"""Schemathesis drives docs/openapi.yaml against the app: every answer matches the spec.

Each generated case is sent four ways, each response checked for no server
error and for conformance (status, content type, headers, body schema):

- as generated (a random token: 403 on the callback);
- with the real token but no credentials (401, Basic auth is on);
- with the real token and credentials (the body is really parsed: 200/400/413/415);
- to an app whose rate limit is used up (429 with Retry-After).
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import schemathesis
from flask import Flask
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
    unsupported_method,
)

from tests.conftest import CALLBACK_TOKEN
from tests.support.redis_server import RedisServer
from tests.unit.web.conftest import base_env, state_keys
from web.app import create_app
from worker.settings import Settings

SPEC = Path(__file__).resolve().parents[3] / "docs" / "openapi.yaml"
# The callback edge and health checks; /metrics and /ops/api are checked against
# the spec with a logged-in client in test_ops_api.py.
schema = schemathesis.openapi.from_path(SPEC).include(path_regex="^/(exotel|healthz|readyz)")
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    unsupported_method,
]
AUTH = {"Authorization": "Basic " + base64.b64encode(b"exotel:s3cret-pass").decode()}


def build(redis_server: RedisServer, tmp: Path, **extra: str) -> Flask:
    env = {**base_env(redis_server.url, tmp), "CALLBACK_BASIC_AUTH": "exotel:s3cret-pass", **extra}
    return create_app(Settings.from_env(env, dotenv=False))


@pytest.fixture(scope="module")
def apps(redis_server: RedisServer, tmp_path_factory: Any) -> Iterator[dict[str, Flask]]:
    client = redis_server.client()
    client.flushall()
    built = {
        "open": build(redis_server, tmp_path_factory.mktemp("openapi")),
        "throttled": build(
            redis_server, tmp_path_factory.mktemp("openapi-429"), CALLBACK_RATE_LIMIT="1/hour"
        ),
    }
    # use up the throttled app's allowance, whatever address the WSGI transport reports
    for remote in ("127.0.0.1", ""):
        built["throttled"].test_client().get(
            "/exotel/callback/x", environ_overrides={"REMOTE_ADDR": remote}
        )
    yield built
    for app in built.values():
        app.extensions["exolegs"].drainer.stop()
    client.close()


@schema.parametrize()
@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
def test_every_response_matches_the_spec(
    case: schemathesis.Case, apps: dict[str, Flask], redis_server: RedisServer
) -> None:
    store: redis.Redis = redis_server.client()
    case.call_and_validate(app=apps["open"], checks=CHECKS)
    if "token" not in case.path_parameters or case.method.upper() not in ("GET", "POST"):
        return
    case.path_parameters = {**case.path_parameters, "token": CALLBACK_TOKEN}
    before = state_keys(store)
    unauthenticated = case.call_and_validate(app=apps["open"], checks=CHECKS)
    assert unauthenticated.status_code == 401
    assert state_keys(store) == before
    answer = case.call_and_validate(app=apps["open"], checks=CHECKS, headers=AUTH)
    assert answer.status_code in (200, 400, 413, 415)
    if answer.status_code != 200:
        assert state_keys(store) == before
    throttled = case.call_and_validate(app=apps["throttled"], checks=CHECKS, headers=AUTH)
    assert throttled.status_code == 429
    store.close()


def test_answers_while_redis_is_down_match_the_spec(tmp_path: Path) -> None:
    """Readiness 503, a spooled 200, and the 503 when the spool cannot be written either."""
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    from tests.support.redis_server import free_port
    from worker.runtime import Runtime

    port = free_port()
    env = {
        **base_env(f"redis://127.0.0.1:{port}/0", tmp_path),
        "CALLBACK_BASIC_AUTH": "exotel:s3cret-pass",
    }

    def app_on_dead_redis(**extra: str) -> Flask:
        settings = Settings.from_env({**env, **extra}, dotenv=False)
        dead = redis.Redis(port=port, socket_connect_timeout=0.5, retry=Retry(NoBackoff(), 0))
        return create_app(settings, runtime=Runtime(settings, client=dead))

    app = app_on_dead_redis()
    blocked = tmp_path / "not-a-dir"
    blocked.write_text("a file where the spool directory should be")
    broken = app_on_dead_redis(SPOOL_DIR=str(blocked))
    checks = [c for c in CHECKS if c is not not_a_server_error]  # these 503s are documented
    try:
        ready = schema["/readyz"]["GET"].Case().call_and_validate(app=app, checks=checks)
        assert ready.status_code == 503
        callback = schema["/exotel/callback/{token}"]["POST"]
        case = callback.Case(
            path_parameters={"token": CALLBACK_TOKEN},
            body={"CallSid": "spooled-1", "Status": "completed"},
            media_type="application/x-www-form-urlencoded",
        )
        spooled = case.call_and_validate(app=app, checks=checks, headers=AUTH)
        assert spooled.status_code == 200 and spooled.json()["spooled"] is True
        unavailable = case.call_and_validate(app=broken, checks=checks, headers=AUTH)
        assert unavailable.status_code == 503
    finally:
        for each in (app, broken):
            each.extensions["exolegs"].drainer.stop()
