"""Bounded intake: no request under the body limit grows Redis by more than twice its size.

Each shape below used to amplify (bracketed keys padded with ``{}``, control
characters stored as six-byte escapes, non-ASCII stored as ``\\uXXXX``, an
unbounded number of events per call) or is the largest legitimate request.
The memory of every key (``MEMORY USAGE``) is compared before and after
many such requests.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from urllib.parse import quote

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient

from tests.unit.web.conftest import URL
from web.payload import MAX_INDEX

FORM = "application/x-www-form-urlencoded"
LIMIT = 64 * 1024


def used(client: redis.Redis) -> int:
    """Bytes held by every key (MEMORY USAGE, exact): steadier than INFO's used_memory."""
    return sum(int(client.memory_usage(k, samples=0) or 0) for k in client.scan_iter(count=1000))


def padded(n: int) -> bytes:
    """Bracketed keys with list gaps, as many as fit under the limit (mostly refused now)."""
    parts = [f"CallSid=pad{n}", "Status=completed"]
    k = 0
    while sum(len(p) + 1 for p in parts) < LIMIT - 40:
        parts.append(f"a{k}[100][100]=1")
        k += 1
    return "&".join(parts).encode()


def gaps_under_the_cap(n: int) -> bytes:
    """The most list padding still accepted: as many gaps as items, every other index."""
    items = "&".join(f"L[{2 * k + 1}]=x" for k in range(MAX_INDEX // 2))
    return f"CallSid=gap{n}&Status=completed&{items}".encode()


def one_far_index(n: int) -> bytes:
    return f"CallSid=far{n}&Status=completed&Legs[{MAX_INDEX}][Status]=x".encode()


def controls(n: int) -> bytes:
    return f"CallSid=ctl{n}&Status=completed&x=".encode() + b"\x01" * (LIMIT - 60)


def wide_form(n: int) -> bytes:
    """999 short fields: each costs 4 more bytes as JSON than in the form."""
    fields = [f"CallSid=wide{n}", "Status=completed"]
    fields += [f"f{k}=" + "v" * 50 for k in range(997)]
    return "&".join(fields).encode()[:LIMIT]


def unicode_json(n: int) -> bytes:
    body = {"CallSid": f"uni{n}", "Status": "completed", "note": "😀é" * 10_000}
    return json.dumps(body, ensure_ascii=False).encode()


def escaped_json(n: int) -> bytes:
    body = {"CallSid": f"esc{n}", "Status": "completed", "note": '"\\' * 15_000}
    return json.dumps(body).encode()


SHAPES: dict[str, tuple[Callable[[int], bytes], str, int]] = {
    # name: (body, content type, expected status)
    "padded bracket keys": (padded, FORM, 400),
    "padding under the cap": (gaps_under_the_cap, FORM, 200),
    "one far list index": (one_far_index, FORM, 400),
    "control characters": (controls, FORM, 400),
    "1000 fields": (wide_form, FORM, 200),
    "non-ASCII JSON": (unicode_json, "application/json", 200),
    "escapes in JSON": (escaped_json, "application/json", 200),
}


def minimal(n: int) -> bytes:
    return f"CallSid=min{n}&Status=completed".encode()


def growth(client: FlaskClient, store: redis.Redis, make_body: Callable[[int], bytes],
           content_type: str, status: int, calls: int = 20) -> tuple[int, int]:
    """(bytes Redis grew, bytes sent) for ``calls`` new calls of one shape."""
    before, sent = used(store), 0
    for n in range(calls):
        body = make_body(n)
        assert len(body) <= LIMIT
        answer = client.post(URL, data=body, content_type=content_type)
        assert answer.status_code == status, answer.get_json()
        sent += len(body) + len(URL)
    return used(store) - before, sent


@pytest.mark.parametrize("shape", SHAPES)
def test_no_request_grows_redis_by_more_than_twice_its_size(
    shape: str, make_app: Callable[..., Flask], redis_client: redis.Redis
) -> None:
    """Beyond the state every new call has (its hash, timeline and job), measured first."""
    make_body, content_type, status = SHAPES[shape]
    client = make_app().test_client()
    client.post(URL, data=b"CallSid=warm&Status=completed", content_type=FORM)  # scripts loaded
    per_call, _ = growth(client, redis_client, minimal, FORM, 200)
    grown, sent = growth(client, redis_client, make_body, content_type, status)
    extra = grown - (per_call if status == 200 else 0)
    assert extra <= 2 * sent, (
        f"{shape}: Redis grew {grown} bytes ({per_call} for as many minimal callbacks) "
        f"for {sent} bytes sent"
    )


def test_events_over_the_cap_are_answered_counted_and_not_kept(
    make_app: Callable[..., Flask], redis_client: redis.Redis
) -> None:
    client = make_app(CALLBACK_MAX_EVENTS="10").test_client()
    answers = [
        client.post(URL, data={"CallSid": "chatty", "Status": f"state{n}", "x": "y" * 2000})
        for n in range(25)
    ]
    assert all(a.status_code == 200 for a in answers)
    assert [a.get_json().get("dropped", False) for a in answers] == [False] * 10 + [True] * 15
    stored = redis_client.hgetall("exolegs:call:chatty")
    assert len([k for k in stored if k.startswith(b"event:")]) == 10
    assert len([k for k in stored if k.startswith(b"seen:")]) == 10
    assert stored[b"dropped"] == b"15"
    before = used(redis_client)
    for n in range(25, 60):
        client.post(URL, data={"CallSid": "chatty", "Status": f"state{n}", "x": "y" * 2000})
    assert used(redis_client) - before < 2000  # only the counters moved
    # the call's end is still heard: its first terminal callback is always kept
    end = client.post(URL, data={"CallSid": "chatty", "Status": "completed"})
    assert end.get_json() == {"accepted": True, "call_sid": "chatty", "duplicate": False}
    assert redis_client.zscore("exolegs:jobs", "fetch:chatty") is not None
    again = client.post(URL, data={"CallSid": "chatty", "Status": "completed"})
    assert again.get_json()["duplicate"] is True
    metrics = redis_client.hgetall("exolegs:metrics:totals")
    dropped = [v for k, v in metrics.items() if b'outcome="dropped"' in k]
    assert dropped == [b"50"], metrics


def test_a_callback_too_large_once_decoded_is_413_and_not_stored(
    make_app: Callable[..., Flask], redis_client: redis.Redis
) -> None:
    """A query string is not limited by the body limit; the stored size still is."""
    client = make_app().test_client()
    query = "&".join(f"q{k}=" + quote("v" * 60) for k in range(900))
    body = "&".join(f"b{k}=" + "w" * 60 for k in range(900))[:LIMIT]
    answer = client.post(f"{URL}?CallSid=huge&Status=completed&{query}", data=body,
                         content_type=FORM)
    assert answer.status_code in (400, 413), answer.get_json()
    assert not redis_client.exists("exolegs:call:huge")


def test_bad_cap_setting_names_the_variable(make_app: Callable[..., Flask]) -> None:
    from worker.errors import SettingsError

    with pytest.raises(SettingsError, match=r"^CALLBACK_MAX_EVENTS"):
        make_app(CALLBACK_MAX_EVENTS="0")
