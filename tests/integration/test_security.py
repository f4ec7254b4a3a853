"""The callback edge under attack, with real processes: gunicorn, the worker, Redis, the simulator.

- Bytes on a raw socket (chunked bodies over the limit, lying Content-Length,
  broken chunk framing, garbage request lines) never get a 5xx, and the server
  still accepts a good callback afterwards.
- The per-client rate limit is one budget across two gunicorn processes.
- The allow-list sees the client behind one proxy and cannot be fooled by a
  forged X-Forwarded-For when there is no proxy.
- Garbage thrown at an accepted call leaves its state alone and its legs fetch
  still happens, once.
"""

from __future__ import annotations

import base64
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import requests
from flask import Flask

from tests.conftest import CALLBACK_TOKEN
from tests.support.processes import Proc, Simulator, read_jsonl, start_web, start_worker, wait_for
from tests.support.redis_server import free_port
from tests.unit.web.conftest import snapshot, state_keys
from web.app import create_app
from worker.settings import Settings

URL = f"/exotel/callback/{CALLBACK_TOKEN}"
LIMIT = 64 * 1024
FORM = "application/x-www-form-urlencoded"


def terminal(call_sid: str) -> dict[str, str]:
    return {"CallSid": call_sid, "Status": "completed", "EventType": "terminal",
            "Direction": "outbound-api"}


class Web:
    """A real ``exolegs web`` (gunicorn) on a free port."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.port = free_port()
        self.proc: Proc = start_web({**env, "WEB_CONCURRENCY": "1"}, log, self.port)
        self.base = f"http://127.0.0.1:{self.port}"

    def raw(self, data: bytes, *, half_close: bool = False, timeout: float = 10) -> bytes:
        """Send bytes, read the whole answer (the server closes: Connection: close)."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=timeout) as sock:
            try:
                sock.sendall(data)
            except OSError:
                pass  # the server may answer and close before reading everything
            if half_close:
                sock.shutdown(socket.SHUT_WR)
            out = b""
            while True:
                try:
                    chunk = sock.recv(65536)
                except (ConnectionResetError, TimeoutError):
                    break
                if not chunk:
                    break
                out += chunk
        return out


def status_of(answer: bytes) -> int:
    assert answer.startswith(b"HTTP/1.1 "), answer[:200]
    return int(answer[9:12])


def json_body(answer: bytes) -> Any:
    head, _, body = answer.partition(b"\r\n\r\n")
    assert b"application/json" in head, head
    return json.loads(body)


def chunked(body: bytes, size: int = 8192) -> bytes:
    out = b""
    for start in range(0, len(body), size):
        part = body[start : start + size]
        out += b"%x\r\n" % len(part) + part + b"\r\n"
    return out + b"0\r\n\r\n"


def head(extra: str = "", path: str = URL) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: edge\r\nContent-Type: {FORM}\r\n"
        f"Connection: close\r\n{extra}"
    ).encode()


@pytest.fixture
def web_proc(env: dict[str, str], redis_client: redis.Redis, tmp_path: Path) -> Iterator[Web]:
    web = Web(env, tmp_path / "web.log")
    yield web
    web.proc.stop()


APP, SERVER = "app", "gunicorn"  # who answers: our JSON, or gunicorn's own HTML 4xx


def test_raw_http_abuse_never_gets_a_5xx(web_proc: Web, redis_client: redis.Redis) -> None:
    big = b"CallSid=raw-big&Status=completed&x=" + b"y" * (LIMIT + 100)
    cases: list[tuple[str, bytes, bool, set[int], str]] = [
        ("chunked over the limit",
         head("Transfer-Encoding: chunked\r\n\r\n") + chunked(big), False, {413}, APP),
        ("content-length over the limit, no body",
         head("Content-Length: 10000000\r\n\r\n"), False, {413}, APP),
        ("content-length over the limit with the body",
         head(f"Content-Length: {len(big)}\r\n\r\n") + big, False, {413}, APP),
        ("body longer than its content-length: only the declared bytes count",
         head("Content-Length: 10\r\n\r\n") + b"CallSid=ab" + b"&CallSid=evil" * 1000, False,
         {200}, APP),
        ("body shorter than its content-length, then EOF",
         head("Content-Length: 500\r\n\r\n") + b"CallSid=short", True, {400}, APP),
        ("malformed chunk size",
         head("Transfer-Encoding: chunked\r\n\r\n") + b"zz\r\nabc\r\n0\r\n\r\n", False, {400},
         APP),
        ("chunk without terminator, then EOF",
         head("Transfer-Encoding: chunked\r\n\r\n") + b"5\r\nCallSid=x", True, {400}, APP),
        ("content-length and chunked together",
         head("Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n") + chunked(b"a=b"),
         False, {400}, SERVER),
        ("negative content-length", head("Content-Length: -1\r\n\r\n"), False, {400}, SERVER),
        ("garbage request line", b"\x00\x01\x02 garbage\r\n\r\n", False, {400}, SERVER),
        ("header too large", head(f"X-Big: {'a' * 9000}\r\n\r\n"), False, {431}, SERVER),
        ("nul in the path",
         b"GET /exotel/callback/a%00b HTTP/1.1\r\nHost: e\r\nConnection: close\r\n\r\n", False,
         {403}, APP),
        ("absolute-form target",
         f"GET http://evil.example{URL}?CallSid=abs HTTP/1.1\r\nHost: e\r\n"
         "Connection: close\r\n\r\n".encode(), False, {200}, APP),
    ]
    for name, data, half_close, expected, who in cases:
        answer = web_proc.raw(data, half_close=half_close)
        status = status_of(answer)
        assert status in expected, (name, answer[:300])
        if who == APP:
            body = json_body(answer)
            assert isinstance(body, dict) and ("error" in body or body.get("accepted")), name
        else:  # malformed HTTP never reaches the app: gunicorn's plain 4xx, never a 5xx
            assert 400 <= status < 500, name
    assert not any(b"raw-big" in key or b"short" in key for key in state_keys(redis_client))
    # ... and a good callback still goes through
    good = requests.post(web_proc.base + URL, data=terminal("after-abuse"), timeout=5)
    assert good.status_code == 200 and good.json()["call_sid"] == "after-abuse"
    log = web_proc.proc.output()
    assert "Traceback" not in log and "internal error" not in log


def test_the_rate_limit_is_one_budget_across_web_processes(
    env: dict[str, str], redis_client: redis.Redis, tmp_path: Path
) -> None:
    limited = {**env, "CALLBACK_RATE_LIMIT": "6/minute"}
    one, two = Web(limited, tmp_path / "one.log"), Web(limited, tmp_path / "two.log")
    try:
        answers = []
        for n in range(12):
            web = (one, two)[n % 2]
            token = CALLBACK_TOKEN if n % 3 else "guessing-the-token-0000"
            answers.append(requests.post(f"{web.base}/exotel/callback/{token}",
                                         data=terminal(f"flood-{n}"), timeout=5))
        statuses = [a.status_code for a in answers]
        assert statuses[:6] == [403, 200, 200, 403, 200, 200], statuses
        assert statuses[6:] == [429] * 6, statuses
        for answer in answers[6:]:
            assert answer.json() == {"error": "too many requests"}
            assert 1 <= int(answer.headers["Retry-After"]) <= 11
        assert not any(f"flood-{n}".encode() in k for n in range(6, 12)
                       for k in state_keys(redis_client))
    finally:
        one.proc.stop()
        two.proc.stop()


def test_the_allow_list_behind_a_proxy_and_without_one(
    env: dict[str, str], redis_client: redis.Redis, tmp_path: Path
) -> None:
    listed = {**env, "CALLBACK_ALLOWED_IPS": "203.0.113.0/24"}
    direct = Web(listed, tmp_path / "direct.log")
    behind = Web({**listed, "TRUSTED_PROXIES": "1", "TRUSTED_PROXY_IPS": "127.0.0.1"},
                 tmp_path / "behind.log")
    try:
        forged = requests.post(direct.base + URL, data=terminal("forged"), timeout=5,
                               headers={"X-Forwarded-For": "203.0.113.7"})
        assert forged.status_code == 403
        assert forged.json() == {"error": "client address not allowed"}
        # as Heroku's router would forward it: the real client appended last
        routed = requests.post(behind.base + URL, data=terminal("routed"), timeout=5,
                               headers={"X-Forwarded-For": "198.51.100.1, 203.0.113.7"})
        assert routed.status_code == 200
        spoofed = requests.post(behind.base + URL, data=terminal("spoofed"), timeout=5,
                                headers={"X-Forwarded-For": "203.0.113.7, 198.51.100.1"})
        assert spoofed.status_code == 403
        assert {k for k in state_keys(redis_client) if b"forged" in k or b"spoofed" in k} == set()
    finally:
        direct.proc.stop()
        behind.proc.stop()


# ------------------------------------------------ garbage vs an accepted call
#: (path, request, send the Basic credentials) - every one of them must be refused.
GARBAGE: list[tuple[str, dict[str, Any], bool]] = [
    ("/exotel/callback/wrong-token-0000000000", {"data": terminal("victim")}, True),
    (URL, {"data": {**terminal("victim"), "Status": "busy"}}, False),
    (URL, {"data": b"CallSid=victim&x=" + b"y" * LIMIT, "content_type": FORM}, True),
    (URL, {"data": b'{"CallSid": "victim", "Status": "busy", "x": NaN}',
           "content_type": "application/json"}, True),
    (URL, {"data": b'[{"CallSid": "victim"}]', "content_type": "application/json"}, True),
    (URL, {"data": b"CallSid=victim&Status=busy", "content_type": "text/plain"}, True),
    (URL, {"data": b"CallSid=victim&Status=busy&x=%00", "content_type": FORM}, True),
    (URL, {"data": b"CallSid=victim%ff&Status=busy", "content_type": FORM}, True),
    (URL, {"data": {"CallSid": "victim/../other", "Status": "busy"}}, True),
    (URL, {"data": b"CallSid=victim&Legs[99999][Status]=busy", "content_type": FORM}, True),
    (URL, {"data": b'{"CallSid": "victim", "x": ' + b"[" * 5000 + b"]" * 5000 + b"}",
           "content_type": "application/json"}, True),
]


@pytest.fixture
def slow_fetch_env(pipeline_env: dict[str, str]) -> dict[str, str]:
    """The fetch waits 3 s, so the garbage lands between the acceptance and the fetch."""
    return {**pipeline_env, "FETCH_DELAY_SECONDS": "3", "CALLBACK_BASIC_AUTH": "exotel:pw-1234"}


def test_garbage_never_disturbs_an_accepted_call_and_its_fetch_happens_once(
    slow_fetch_env: dict[str, str],
    redis_client: redis.Redis,
    simulator: Simulator,
    tmp_path: Path,
) -> None:
    settings = Settings.from_env(slow_fetch_env, dotenv=False)
    app: Flask = create_app(settings)
    worker = start_worker(slow_fetch_env, tmp_path / "worker.log")
    jsonl = Path(settings.sinks[0].removeprefix("jsonl://"))
    auth = {"Authorization": "Basic " + base64.b64encode(b"exotel:pw-1234").decode()}
    try:
        client = app.test_client()
        accepted = client.post(URL, data=terminal("victim"), headers=auth)
        assert accepted.status_code == 200
        started = time.monotonic()
        before = snapshot(redis_client)
        for path, kwargs, with_auth in GARBAGE:
            answer = client.post(path, headers=auth if with_auth else {}, **kwargs)
            assert 400 <= answer.status_code < 500, (path, answer.status_code)
        assert time.monotonic() - started < 3, "the garbage must land before the fetch"
        assert snapshot(redis_client) == before
        records = wait_for(lambda: [r for r in read_jsonl(jsonl) if r["call_sid"] == "victim"],
                           timeout=30)
        assert len(records) == 1
        assert records[0]["status"] == "completed"  # not "busy" from the garbage
        time.sleep(1)
        assert len(simulator.requests_for("victim")) == 1
        assert len([r for r in read_jsonl(jsonl) if r["call_sid"] == "victim"]) == 1
        # the worker's reconcile sweeper may have listed calls meanwhile: only legs count
        assert simulator.legs_requests() == {"victim": 1}
    finally:
        worker.stop()
        app.extensions["exolegs"].drainer.stop()
