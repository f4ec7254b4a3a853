"""When a request is complete enough to give to a thread (web/gthread.py)."""

from __future__ import annotations

import pytest

from web.gthread import MAX_HEAD_BYTES, request_complete

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
