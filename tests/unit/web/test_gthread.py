"""When a request is complete enough to give to a thread (web/gthread.py)."""

from __future__ import annotations

import socket
import threading
import time

import pytest
import redis

from web.gthread import (
    MAX_HEAD_BYTES,
    PLACEMENT_STALE_SECONDS,
    Placement,
    request_state,
)
from worker.calls.callbacks import event_from_fields
from worker.calls.intake import Intake

LIMIT = 64 * 1024 + 1
FORM = b"POST /x HTTP/1.1\r\nHost: h\r\nContent-Type: application/x-www-form-urlencoded\r\n"


@pytest.mark.parametrize(
    ("data", "complete"),
    [
        (b"GET /healthz HTTP/1.1\r\nHost: x\r\n", False),
        (b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", True),
        (FORM + b"Content-Length: 10\r\n\r\n12345", False),
        (FORM + b"Content-Length: 10\r\n\r\n1234567890", True),
        (FORM + b"content-length:10\r\n\r\n1234567890", True),
        (FORM + b"Content-Length: 0\r\n\r\n", True),
        # over the body limit: the app refuses it unread, no point waiting
        (FORM + f"Content-Length: {LIMIT + 1}\r\n\r\n".encode(), True),
        (FORM + b"Transfer-Encoding: chunked\r\n\r\n5\r\nabcde\r\n", False),
        (FORM + b"Transfer-Encoding: chunked\r\n\r\n5\r\nabcde\r\n0\r\n\r\n", True),
        (FORM + b"Transfer-Encoding: chunked\r\n\r\n" + b"x" * (LIMIT + 1), True),
        # the client waits for 100 Continue before it sends the body
        (FORM + b"Expect: 100-continue\r\nContent-Length: 10\r\n\r\n", True),
        # an endless head goes to gunicorn's parser, which refuses it
        (b"GET / HTTP/1.1\r\nX: " + b"a" * MAX_HEAD_BYTES, True),
    ],
)
def test_request_complete(data: bytes, complete: bool) -> None:
    assert (request_state(data, LIMIT) != "incomplete") is complete


@pytest.mark.parametrize(
    ("data", "state"),
    [
        (FORM + b"Content-Length: 10\r\n\r\n12345", "incomplete"),
        # only a request framed by its length and all here may be answered on the event loop
        (FORM + b"Content-Length: 10\r\n\r\n1234567890", "whole"),
        (b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", "complete"),
        (FORM + b"Content-Length: 0\r\n\r\n", "whole"),
        (FORM + f"Content-Length: {LIMIT + 1}\r\n\r\n".encode(), "complete"),
        (FORM + b"Transfer-Encoding: chunked\r\n\r\n5\r\nabcde\r\n0\r\n\r\n", "complete"),
        # the body comes only once we answered 100 Continue
        (FORM + b"Expect: 100-continue\r\nContent-Length: 10\r\n\r\n", "complete"),
        (FORM + b"Expect: 100-continue\r\nContent-Length: 10\r\n\r\n1234567890", "complete"),
        (b"GET / HTTP/1.1\r\nX: " + b"a" * MAX_HEAD_BYTES, "complete"),
    ],
)
def test_request_state_tells_a_whole_request(data: bytes, state: str) -> None:
    assert request_state(data, LIMIT) == state


def test_bound_waits_gives_up_on_a_silent_redis_at_once_on_that_thread_only() -> None:
    """The event loop's thread waits for Redis at most the bound, without retries."""
    silent = socket.create_server(("127.0.0.1", 0))  # accepts, reads nothing, never answers
    port = silent.getsockname()[1]
    client = redis.Redis.from_url(f"redis://127.0.0.1:{port}/0", socket_timeout=5)
    intake = Intake(client, retention_seconds=60, fetch_delay=0)
    event = event_from_fields({"CallSid": "CAbound", "Status": "completed"})
    try:
        assert intake.bound_waits(0.2)
        started = time.monotonic()
        with pytest.raises(redis.exceptions.TimeoutError):
            intake.accept(event)
        assert time.monotonic() - started < 1.0  # one 0.2 s wait, no retries
        # another thread keeps the client's own timeout (5 s, with retries)
        other: list[BaseException] = []

        def accept() -> None:
            try:
                intake.accept(event)
            except BaseException as err:
                other.append(err)

        thread = threading.Thread(target=accept, daemon=True)
        thread.start()
        thread.join(1.0)
        assert thread.is_alive() and not other
    finally:
        silent.close()


def test_placement_lets_only_the_least_loaded_processes_accept(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = [100.0]
    monkeypatch.setattr("web.gthread.time.monotonic", lambda: now[0])
    placement = Placement(4)
    one, two = placement.claim(1001), placement.claim(1002)
    assert one is not None and two is not None and one != two
    assert placement.claim(1001) == one  # the same process keeps its slot
    assert placement.report(one, 0) and placement.report(two, 0)
    assert placement.report(one, 1)  # one above the least loaded: still fine
    assert not placement.report(one, 2)  # two above one that accepts: wait for it
    assert placement.report(two, 1)
    assert placement.report(one, 2)


def test_placement_forgets_a_process_that_stopped_reporting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = [100.0]
    monkeypatch.setattr("web.gthread.time.monotonic", lambda: now[0])
    placement = Placement(4)
    one, two = placement.claim(1001), placement.claim(1002)
    assert one is not None and two is not None
    assert placement.report(two, 0)
    assert not placement.report(one, 40)  # two has far fewer
    now[0] += PLACEMENT_STALE_SECONDS + 1  # two was killed and reports no more
    assert placement.report(one, 40)
    three = placement.claim(1003)
    assert three is not None and three != one  # a free slot, or the silent process's
    placement.release(one)
    assert placement.pids[one] == 0
