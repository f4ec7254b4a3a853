"""Fixtures for the web edge: apps built from settings variants on the private Redis."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import redis
import yaml
from flask import Flask
from flask.testing import FlaskClient

from tests.conftest import CALLBACK_TOKEN
from tests.support.redis_server import RedisServer
from web.app import create_app
from worker.settings import Settings

URL = f"/exotel/callback/{CALLBACK_TOKEN}"
SPEC = Path(__file__).resolve().parents[3] / "docs" / "openapi.yaml"
OLD_TOKEN = "old-callback-token-9876543210"


def base_env(redis_url: str, tmp: Path) -> dict[str, str]:
    return {
        "REDIS_URL": redis_url,
        "CALLBACK_TOKEN": CALLBACK_TOKEN,
        "SINKS": f"jsonl://{tmp}/calls.jsonl",
        "FETCH_DELAY_SECONDS": "0",
        "SPOOL_DIR": str(tmp / "spool"),
    }


def state_keys(client: redis.Redis) -> set[bytes]:
    """Every exolegs key a callback can create.

    Rate-limit buckets and metrics are not callback state, nor is the Redis
    epoch that /readyz's safety look creates (worker/checks.py).
    """
    return {
        k for k in client.keys("exolegs:*")
        if isinstance(k, bytes)
        and not k.startswith((b"exolegs:bucket:", b"exolegs:metrics:"))
        and k != b"exolegs:epoch"
    }


def snapshot(client: redis.Redis) -> dict[bytes, object]:
    """The content of every callback-state key, to prove it did not change."""
    out: dict[bytes, object] = {}
    for key in sorted(state_keys(client)):
        kind = client.type(key)
        if kind == b"hash":
            out[key] = client.hgetall(key)
        elif kind == b"zset":
            out[key] = client.zrange(key, 0, -1, withscores=True)
        elif kind == b"string":
            out[key] = client.get(key)
        else:
            out[key] = kind
    return out


@functools.cache
def spec() -> dict[str, Any]:
    """docs/openapi.yaml as a dict."""
    loaded: dict[str, Any] = yaml.safe_load(SPEC.read_text())
    return loaded


def body_schema(documented: dict[str, Any]) -> jsonschema.Draft202012Validator:
    """A validator for a documented JSON body, its $refs resolved inside the spec."""
    schema = documented["content"]["application/json"]["schema"]
    return jsonschema.Draft202012Validator({**schema, "components": spec()["components"]})


def assert_conforms(response: Any, method: str, path: str, template: str | None = None) -> None:
    """The response is one docs/openapi.yaml documents for this operation.

    Status among the operation's responses, required headers present, JSON body
    valid against the response schema. Paths and methods outside the spec must be
    a JSON 404 or a 405 with ``Allow``.
    """
    raw = spec()
    given = template
    path = "/" + path.lstrip("/")  # the router ignores leading slashes
    token = path.removeprefix("/exotel/callback/")
    template = "/exotel/callback/{token}" if token != path and token else path
    if "/" in token:
        template = path
    template = given or template
    if method == "HEAD" and template in ("/healthz", "/readyz"):
        assert response.status_code in (200, 503), (path, response.status_code)
        return
    operation = raw["paths"].get(template, {}).get(method.lower())
    if operation is None:
        assert response.status_code in (404, 405), (method, path, response.status_code)
        if response.status_code == 405:
            assert response.headers["Allow"]
        if method != "HEAD":
            assert list(response.get_json()) == ["error"]
        return
    responses = operation["responses"]
    assert str(response.status_code) in responses, (method, path, response.status_code)
    documented = responses[str(response.status_code)]
    if "$ref" in documented:
        documented = raw["components"]["responses"][documented["$ref"].rsplit("/", 1)[1]]
    for header in documented.get("headers", {}):
        assert response.headers.get(header), (header, response.status_code)
    if method != "HEAD":
        assert response.mimetype == "application/json"
        body_schema(documented).validate(response.get_json())


@pytest.fixture
def make_app(
    redis_server: RedisServer, redis_client: redis.Redis, tmp_path: Path
) -> Iterator[Callable[..., Flask]]:
    """Build an app with extra environment variables; every app is stopped afterwards."""
    apps: list[Flask] = []

    def build(**extra: str) -> Flask:
        env = {**base_env(redis_server.url, tmp_path), **extra}
        app = create_app(Settings.from_env(env, dotenv=False))
        apps.append(app)
        return app

    yield build
    for app in apps:
        app.extensions["exolegs"].drainer.stop()


@pytest.fixture
def client(make_app: Callable[..., Flask]) -> FlaskClient:
    return make_app().test_client()
