"""When a request is complete enough to give to a thread (web/gthread.py)."""

from __future__ import annotations

import pytest

from web.gthread import MAX_HEAD_BYTES, PLACEMENT_STALE_SECONDS, Placement, request_complete

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
    assert request_complete(data, LIMIT) is complete


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
