"""Generated requests through the Flask test client: never a 5xx, always a documented answer.

The app runs with every guard on (Basic auth off so the token path is reachable,
a rate limit high enough not to trip) on the private Redis. After each request
that is not a 200, the callback state in Redis must be exactly what it was.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote_to_bytes, urlencode

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tests.conftest import CALLBACK_TOKEN
from tests.support.redis_server import RedisServer
from tests.unit.web.conftest import URL, assert_conforms, base_env, state_keys
from web.app import create_app
from web.guard import client_address
from worker.settings import Settings

#: Every status the endpoints may answer (docs/openapi.yaml); 503 only when Redis and disk fail.
DOCUMENTED = {200, 400, 401, 403, 404, 405, 413, 415, 429, 503}
LIMIT = 64 * 1024
FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "callbacks"
FORM = "application/x-www-form-urlencoded"
JSON = "application/json"
PROPERTY = settings(
    max_examples=250,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@pytest.fixture(scope="module")
def store(redis_server: RedisServer) -> Iterator[redis.Redis]:
    client = redis_server.client()
    client.flushall()
    yield client
    client.close()


@pytest.fixture(scope="module")
def app(redis_server: RedisServer, store: redis.Redis, tmp_path_factory: Any) -> Iterator[Flask]:
    env = base_env(redis_server.url, tmp_path_factory.mktemp("props"))
    env["CALLBACK_RATE_LIMIT"] = "1000000/second"
    env["CALLBACK_BASIC_AUTH"] = "exotel:s3cret-pass"
    built = create_app(Settings.from_env(env, dotenv=False))
    yield built
    built.extensions["exolegs"].drainer.stop()


@pytest.fixture(scope="module")
def web(app: Flask) -> FlaskClient:
    return app.test_client()


AUTH = "Basic " + base64.b64encode(b"exotel:s3cret-pass").decode()

# ---------------------------------------------------------------- strategies
methods = st.sampled_from(
    ["POST"] * 6 + ["GET"] * 3 + ["PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "TRACE"]
)
segment = st.text(max_size=40).map(lambda s: quote(s, safe=""))
paths = st.one_of(
    st.just(URL),
    st.just(URL),
    st.just(URL),
    st.just(URL),
    segment.map(lambda s: f"/exotel/callback/{s}"),
    st.sampled_from(["/healthz", "/readyz", "/", "/static/x", f"{URL}/", "/exotel/callback/"]),
    st.lists(segment, max_size=4).map(lambda parts: "/" + "/".join(parts)),
)
content_types = st.one_of(
    st.sampled_from(
        [
            FORM,
            JSON,
            "multipart/form-data; boundary=XyZ",
            "multipart/form-data",
            "text/plain",
            "application/vnd.exotel+json",
            "application/json; charset=utf-16",
            "",
        ]
    ),
    st.none(),
    st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=60),
)
keys = st.one_of(
    st.sampled_from(["CallSid", "call_sid", "Sid", "Status", "EventType", "CallType",
                     "DialCallStatus", "Direction", "Legs[0][Status]", "Legs[][x]", "a[b][c]"]),
    st.text(max_size=20),
)
sids = st.one_of(
    st.from_regex(r"[A-Za-z0-9_-]{1,64}", fullmatch=True),
    st.text(max_size=80),
)
values = st.one_of(sids, st.sampled_from(["completed", "terminal", "busy", "no-answer", ""]))
pairs = st.lists(st.tuples(keys, values), max_size=12)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner,
                                                                max_size=4),
    max_leaves=20,
)


def multipart(parts: list[tuple[str, str]]) -> bytes:
    out = b""
    for name, value in parts:
        out += b"--XyZ\r\nContent-Disposition: form-data; name=\"" + name.encode(
            "utf-8", "surrogatepass"
        ) + b'"\r\n\r\n' + value.encode("utf-8", "surrogatepass") + b"\r\n"
    return out + b"--XyZ--\r\n"


bodies = st.one_of(
    st.binary(max_size=300),
    pairs.map(lambda p: urlencode(p).encode()),
    pairs.map(multipart),
    st.dictionaries(keys, json_values, max_size=8).map(lambda d: json.dumps(d).encode()),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.integers(LIMIT - 50, LIMIT + 50).map(lambda n: b"CallSid=big&x=" + b"y" * n),
    st.integers(1, 3000).map(lambda n: b'{"CallSid": "deep", "x": ' + b"[" * n + b"]" * n + b"}"),
)
good_sids = st.from_regex(r"[A-Za-z0-9_-]{1,64}", fullmatch=True)
callbacks = st.fixed_dictionaries(
    {"CallSid": good_sids},
    optional={"Status": values, "EventType": values, "CallType": values, "Direction": values,
              "DialCallStatus": values, "Legs[0][Status]": values, "From": st.text(max_size=20)},
)
#: (content type, body) pairs that agree with each other: these get past the decoder.
coherent = st.one_of(
    callbacks.map(lambda d: (FORM, urlencode(d).encode())),
    callbacks.map(lambda d: (JSON, json.dumps(d).encode())),
    callbacks.map(lambda d: ("multipart/form-data; boundary=XyZ", multipart(list(d.items())))),
    callbacks.map(lambda d: (None, b"")),
)
queries = st.one_of(st.just(""), pairs.map(urlencode), st.text(max_size=60))
# what an HTTP header can carry: latin-1 without control characters
header_text = st.text(
    alphabet=st.characters(min_codepoint=32, max_codepoint=255, exclude_characters="\x7f"),
    max_size=60,
)
authorizations = st.one_of(
    st.just(AUTH), st.just(AUTH), st.just(AUTH), st.none(), header_text,
    header_text.map("Basic ".__add__)
)
forwarded = st.one_of(
    st.none(), header_text, st.lists(st.ip_addresses().map(str), max_size=4).map(", ".join)
)


def check_answer(method: str, path: str, status: int, response: Any) -> None:
    assert status < 500 or status == 503, (method, path, status, response.get_data())
    assert status in DOCUMENTED, (method, path, status)
    assert_conforms(response, method, path)
    if method == "HEAD":
        return
    assert response.mimetype == "application/json", response.get_data()
    body = response.get_json()
    assert isinstance(body, dict)
    if status == 200 and path == URL:
        assert body["accepted"] is True and isinstance(body["call_sid"], str)
    elif status != 200:
        assert set(body) == {"error"} and isinstance(body["error"], str)
        assert "\n" not in body["error"] and 0 < len(body["error"]) <= 200
    if status == 405:
        assert response.headers.get("Allow")
    if status == 401:
        assert response.headers["WWW-Authenticate"].startswith("Basic ")
    if status == 429:
        assert int(response.headers["Retry-After"]) >= 1


@PROPERTY
@given(
    method=methods,
    path=paths,
    content_type=content_types,
    body=bodies,
    query=queries,
    authorization=authorizations,
    xff=forwarded,
)
def test_any_request_gets_a_documented_json_answer_and_refusals_book_nothing(
    web: FlaskClient,
    store: redis.Redis,
    method: str,
    path: str,
    content_type: str | None,
    body: bytes,
    query: str,
    authorization: str | None,
    xff: str | None,
) -> None:
    headers: dict[str, str] = {}
    if authorization is not None:
        headers["Authorization"] = authorization
    if xff is not None:
        headers["X-Forwarded-For"] = xff
    before = state_keys(store)
    kwargs: dict[str, Any] = {"method": method, "data": body, "headers": headers,
                              "query_string": query}
    if content_type is not None:
        kwargs["content_type"] = content_type
    # PATH_INFO exactly as a server would decode it ("//x" included, no netloc guessing)
    raw = unquote_to_bytes(path).decode("latin-1")
    response = web.open("/", environ_overrides={"PATH_INFO": raw}, **kwargs)
    status = response.status_code
    event(f"status {status}")
    check_answer(method, raw, status, response)
    if status != 200 or path != URL:
        assert state_keys(store) == before, (method, path, status)


@PROPERTY
@given(
    method=st.sampled_from(["POST", "GET"]),
    request=st.one_of(coherent, coherent, st.tuples(content_types, bodies)),
    query=st.one_of(queries, callbacks.map(urlencode)),
)
def test_authenticated_requests_are_accepted_or_a_clean_4xx(
    web: FlaskClient,
    store: redis.Redis,
    method: str,
    request: tuple[str | None, bytes],
    query: str,
) -> None:
    """Past the guard: whatever the body, 200 or 400/413/415, and a refusal books nothing."""
    content_type, body = request
    before = state_keys(store)
    kwargs: dict[str, Any] = {"method": method, "data": body, "query_string": query,
                              "headers": {"Authorization": AUTH}}
    if content_type is not None:
        kwargs["content_type"] = content_type
    response = web.open(URL, **kwargs)
    event(f"status {response.status_code}")
    assert response.status_code in (200, 400, 413, 415), response.get_data()
    check_answer(method, URL, response.status_code, response)
    if response.status_code != 200:
        assert state_keys(store) == before


def fixture_bodies() -> list[tuple[str, bytes]]:
    out = []
    for file in sorted(FIXTURES.iterdir()):
        kind = {".form": FORM, ".json": JSON}.get(file.suffix)
        if kind:
            out.append((kind, file.read_bytes().strip()))
    return out


@PROPERTY
@given(
    sample=st.sampled_from(fixture_bodies()),
    cut=st.one_of(st.just(0), st.integers(0, 2000)),
    flips=st.lists(st.tuples(st.integers(60, 2000), st.integers(0, 255)), max_size=4),
    insert=st.binary(max_size=20),
)
def test_mangled_real_callbacks_are_accepted_or_a_clean_4xx(
    web: FlaskClient,
    store: redis.Redis,
    sample: tuple[str, bytes],
    cut: int,
    flips: list[tuple[int, int]],
    insert: bytes,
) -> None:
    """Real Exotel callbacks, truncated, with bytes flipped and garbage inserted."""
    content_type, original = sample
    body = bytearray(original[: max(1, len(original) - cut)])
    for position, byte in flips:
        body[position % len(body)] = byte
    middle = len(body) // 2
    body[middle:middle] = insert
    before = state_keys(store)
    response = web.post(URL, data=bytes(body), content_type=content_type,
                        headers={"Authorization": AUTH})
    assert response.status_code in (200, 400, 413, 415), response.get_data()
    event(f"status {response.status_code}")
    check_answer("POST", URL, response.status_code, response)
    if response.status_code != 200:
        assert state_keys(store) == before


@settings(max_examples=300, deadline=None)
@given(
    remote=st.one_of(st.ip_addresses().map(str), st.text(max_size=40)),
    xff=st.one_of(st.none(), st.text(max_size=80),
                  st.lists(st.ip_addresses().map(str), max_size=5).map(", ".join)),
    hops=st.integers(0, 6),
    proxies=st.sampled_from(["10.0.0.0/8", "0.0.0.0/0, ::/0", "192.0.2.1"]),
)
def test_client_address_never_raises_and_reads_the_header_only_from_trusted_proxies(
    remote: str, xff: str | None, hops: int, proxies: str
) -> None:
    trusted = {"TRUSTED_PROXIES": str(hops), "TRUSTED_PROXY_IPS": proxies} if hops else {}
    config = Settings.from_env({"CALLBACK_TOKEN": CALLBACK_TOKEN, **trusted}, dotenv=False)
    direct = Settings.from_env({"CALLBACK_TOKEN": CALLBACK_TOKEN}, dotenv=False)
    environ: dict[str, Any] = {"REMOTE_ADDR": remote}
    if xff is not None:
        environ["HTTP_X_FORWARDED_FOR"] = xff
    found = client_address(environ, config)
    peer = client_address({"REMOTE_ADDR": remote}, direct)
    if hops == 0 or not config.trusts_proxy(peer):
        assert found == peer
    elif xff is not None and xff and len(xff.split(",")) >= hops:
        assert found == client_address({"REMOTE_ADDR": xff.split(",")[-hops]}, direct)


def test_the_token_in_the_property_app_is_the_configured_one(web: FlaskClient) -> None:
    """Guards the properties above against testing only 403s."""
    response = web.post(URL, data={"CallSid": "prop-sanity"}, headers={"Authorization": AUTH})
    assert response.status_code == 200
    assert CALLBACK_TOKEN in URL
