"""Every odd input gets a clear JSON answer, never a 5xx, and books nothing."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote_to_bytes

import jsonschema
import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient

from tests.unit.web.conftest import URL, assert_conforms, snapshot, state_keys

FORM = "application/x-www-form-urlencoded"
JSON = "application/json"
TERMINAL = {"CallSid": "inputs-call", "Status": "completed", "EventType": "terminal"}
LIMIT = 64 * 1024


def multipart(parts: list[tuple[str, str]], boundary: str = "XyZ") -> bytes:
    body = b""
    for name, value in parts:
        body += (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'
        ).encode()
    return body + f"--{boundary}--\r\n".encode()


def nested_json(depth: int) -> bytes:
    return b'{"CallSid": "deep", "x": ' + b"[" * depth + b"]" * depth + b"}"


# (id, request kwargs for client.open, expected status)
REFUSED: list[tuple[str, dict[str, Any], int]] = [
    ("text/plain", {"data": b"CallSid=a", "content_type": "text/plain"}, 415),
    ("no content type", {"data": b"CallSid=a"}, 415),
    ("xml", {"data": b"<CallSid>a</CallSid>", "content_type": "application/xml"}, 415),
    ("form over limit", {"data": b"CallSid=a&x=" + b"y" * LIMIT, "content_type": FORM}, 413),
    ("json over limit", {"data": b'{"x": "' + b"y" * LIMIT + b'"}', "content_type": JSON}, 413),
    ("malformed json", {"data": b'{"CallSid": "a",', "content_type": JSON}, 400),
    ("json array", {"data": b'[{"CallSid": "a"}]', "content_type": JSON}, 400),
    ("json string", {"data": b'"CallSid"', "content_type": JSON}, 400),
    ("json null", {"data": b"null", "content_type": JSON}, 400),
    ("json NaN", {"data": b'{"CallSid": "a", "x": NaN}', "content_type": JSON}, 400),
    ("json huge number", {"data": b'{"CallSid": "a", "x": 1e999}', "content_type": JSON}, 400),
    ("json 5000 digits", {"data": b'{"CallSid": "a", "x": ' + b"9" * 5000 + b"}",
                          "content_type": JSON}, 400),
    ("json deep", {"data": nested_json(5000), "content_type": JSON}, 400),
    ("json NUL escape", {"data": b'{"CallSid": "a", "x": "\\u0000"}', "content_type": JSON}, 400),
    ("json not utf-8", {"data": b'{"CallSid": "\xff\xfe"}', "content_type": JSON}, 400),
    ("json sid number", {"data": b'{"CallSid": 12345}', "content_type": JSON}, 400),
    ("json sid list", {"data": b'{"CallSid": ["a"]}', "content_type": JSON}, 400),
    ("json sid object", {"data": b'{"call_sid": {"a": 1}}', "content_type": JSON}, 400),
    ("form not utf-8", {"data": b"CallSid=%ff%fe", "content_type": FORM}, 400),
    ("form raw latin-1", {"data": b"CallSid=a&x=\xe9", "content_type": FORM}, 400),
    ("form NUL", {"data": b"CallSid=a%00b", "content_type": FORM}, 400),
    ("form NUL key", {"data": b"Call%00Sid=a", "content_type": FORM}, 400),
    ("form deep keys", {"data": b"CallSid=a&x" + b"[a]" * 50 + b"=1", "content_type": FORM}, 400),
    ("form index bomb", {"data": b"CallSid=a&Legs[99999999][x]=1", "content_type": FORM}, 400),
    ("form shape clash", {"data": b"CallSid=a&x=1&x[y]=2", "content_type": FORM}, 400),
    ("form many fields", {"data": "&".join(f"f{i}=1" for i in range(3000)).encode(),
                          "content_type": FORM}, 400),
    ("multipart no boundary", {"data": multipart([("CallSid", "a")]),
                               "content_type": "multipart/form-data"}, 400),
    ("multipart wrong boundary", {"data": multipart([("CallSid", "a")]),
                                  "content_type": "multipart/form-data; boundary=other"}, 400),
    ("multipart unterminated", {"data": multipart([("CallSid", "a")])[:-8],
                                "content_type": "multipart/form-data; boundary=XyZ"}, 400),
    ("multipart garbage", {"data": b"\x00\x01\x02--XyZ\r\n\r\n",
                           "content_type": "multipart/form-data; boundary=XyZ"}, 400),
    ("missing sid", {"data": {"Status": "completed"}}, 400),
    ("empty sid", {"data": {"CallSid": ""}}, 400),
    ("sid too long", {"data": {"CallSid": "a" * 65}}, 400),
    ("sid path", {"data": {"CallSid": "../../etc/passwd"}}, 400),
    ("sid space", {"data": {"CallSid": "abc def"}}, 400),
    ("sid unicode", {"data": {"CallSid": "abcé"}}, 400),
    ("sid newline", {"data": {"CallSid": "abc\nInjected: yes"}}, 400),
    ("sid in query", {"query_string": "CallSid=%3Cscript%3E"}, 400),
    ("query NUL", {"query_string": "CallSid=a&x=%00"}, 400),
    ("empty GET", {"method": "GET"}, 400),
]


@pytest.mark.parametrize(
    ("kwargs", "status"), [c[1:] for c in REFUSED], ids=[c[0] for c in REFUSED]
)
def test_refused_inputs_get_one_json_line_and_book_nothing(
    client: FlaskClient, redis_client: redis.Redis, kwargs: dict[str, Any], status: int
) -> None:
    kwargs = {"method": "POST", **kwargs}
    answer = client.open(URL, **kwargs)
    assert answer.status_code == status, answer.get_data(as_text=True)
    assert_conforms(answer, kwargs["method"], URL)
    assert answer.mimetype == "application/json"
    body = answer.get_json()
    assert set(body) == {"error"} and isinstance(body["error"], str)
    assert body["error"] and "\n" not in body["error"] and len(body["error"]) <= 200
    assert state_keys(redis_client) == set()


# Odd but harmless input: accepted, or refused with a 4xx, never a crash.
ODD: list[tuple[str, dict[str, Any]]] = [
    ("repeated keys", {"data": b"CallSid=odd-1&Status=ringing&Status=completed",
                       "content_type": FORM}),
    ("json duplicate keys", {"data": b'{"CallSid": "x", "CallSid": "odd-2"}',
                             "content_type": JSON}),
    ("huge field", {"data": {"CallSid": "odd-3", "Status": "completed", "x": "y" * 60000}}),
    ("json charset latin-1", {"data": b'{"CallSid": "odd-4"}',
                              "content_type": "application/json; charset=latin-1"}),
    ("json with bom", {"data": "\ufeff{\"CallSid\": \"odd-5\"}".encode(), "content_type": JSON}),
    ("vendor json", {"data": b'{"call_sid": "odd-6"}', "content_type": "application/vnd.x+json"}),
    ("weird content type params", {"data": b"CallSid=odd-7",
                                   "content_type": 'application/x-www-form-urlencoded; a="b;c"'}),
    ("unicode values", {"data": {"CallSid": "odd-8", "From": "☎️ +91 98", "Status": "𝒸𝑜𝓂𝓅"}}),
    ("whitespace body", {"data": b"   \r\n ", "content_type": "text/plain",
                         "query_string": "CallSid=odd-9"}),
    ("empty multipart field", {"data": multipart([("CallSid", "odd-10"), ("", "")]),
                               "content_type": "multipart/form-data; boundary=XyZ"}),
    ("multipart file part", {"data": b'--B\r\nContent-Disposition: form-data; name="f"; '
                             b'filename="a.bin"\r\n\r\n\x00\x01\r\n--B\r\nContent-Disposition: '
                             b'form-data; name="CallSid"\r\n\r\nodd-11\r\n--B--\r\n',
                             "content_type": "multipart/form-data; boundary=B"}),
    ("json nested legs", {"data": json.dumps({"CallSid": "odd-12", "Legs": [{"a": [1, {}]}] * 50}),
                          "content_type": JSON}),
    ("status of every type", {"data": json.dumps({"CallSid": "odd-13", "Status": [1, None],
                                                  "EventType": {"x": True}}),
                              "content_type": JSON}),
    ("sid of 64", {"data": {"CallSid": "a" * 64, "Status": "completed"}}),
    ("GET query", {"method": "GET", "query_string": "CallSid=odd-14&CallStatus=completed"}),
]


@pytest.mark.parametrize("kwargs", [c[1] for c in ODD], ids=[c[0] for c in ODD])
def test_odd_inputs_are_accepted_or_refused_never_a_crash(
    client: FlaskClient, kwargs: dict[str, Any]
) -> None:
    method = kwargs.get("method", "POST")
    answer = client.open(URL, **{"method": method, **kwargs})
    assert answer.status_code in (200, 400, 413, 415), answer.get_data(as_text=True)
    assert_conforms(answer, method, URL)
    body = answer.get_json()
    assert answer.status_code != 200 or body["accepted"] is True


# ---------------------------------------------------------- HTTP-level edges
@pytest.mark.parametrize("method", ["PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "HEAD"])
def test_other_methods_are_405_with_allow(client: FlaskClient, method: str) -> None:
    answer = client.open(URL, method=method, data={"CallSid": "m"})
    assert answer.status_code == 405
    assert_conforms(answer, method, URL)
    assert set(answer.headers["Allow"].replace(" ", "").split(",")) == {"GET", "POST"}
    if method != "HEAD":
        assert answer.get_json() == {"error": "method not allowed"}


def test_health_routes_take_get_and_head_only(client: FlaskClient) -> None:
    assert client.head("/healthz").status_code == 200
    answer = client.post("/healthz")
    assert answer.status_code == 405 and answer.get_json() == {"error": "method not allowed"}
    assert client.options("/readyz").status_code == 405


@pytest.mark.parametrize(
    "path",
    ["/", "/static/app.py", "/exotel/callback/", "/exotel/callback", "/healthz//",
     f"{URL}/", f"{URL}/extra", "/exotel//callback/x", "/%00", "/healthz/"],
)
def test_unknown_paths_are_json_404(client: FlaskClient, path: str) -> None:
    raw = unquote_to_bytes(path).decode("latin-1")  # PATH_INFO as a server passes it
    answer = client.get("/", environ_overrides={"PATH_INFO": raw})
    assert answer.status_code == 404
    assert_conforms(answer, "GET", raw)
    assert answer.get_json() == {"error": "not found"}


def test_content_length_over_the_limit_is_413_before_reading(
    client: FlaskClient, redis_client: redis.Redis
) -> None:
    """A client that announces a huge body is refused without reading it."""
    answer = client.post(
        URL,
        input_stream=io.BytesIO(b"CallSid=cl-lie"),
        environ_overrides={"CONTENT_LENGTH": str(10 * LIMIT)},
        content_type=FORM,
    )
    assert answer.status_code == 413
    assert answer.get_json() == {"error": f"body over {LIMIT} bytes"}
    assert state_keys(redis_client) == set()


def test_content_length_shorter_than_the_body_reads_only_what_it_declares(
    client: FlaskClient, redis_client: redis.Redis
) -> None:
    body = b"CallSid=short-cl&Status=completed" + b"&x=" + b"y" * (2 * LIMIT)
    answer = client.post(
        URL,
        input_stream=io.BytesIO(body),
        environ_overrides={"CONTENT_LENGTH": "16"},
        content_type=FORM,
    )
    assert answer.status_code == 200
    assert answer.get_json()["call_sid"] == "short-cl"


CHUNKED = {"wsgi.input_terminated": True, "HTTP_TRANSFER_ENCODING": "chunked"}


def exactly(size: int) -> bytes:
    head = b"CallSid=sized&Status=completed&x="
    return head + b"y" * (size - len(head))


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_the_limit_is_exact_with_or_without_content_length(
    client: FlaskClient, redis_client: redis.Redis, chunked: bool
) -> None:
    """Chunked bodies (no Content-Length, as gunicorn passes them) are cut and refused too."""

    def post(body: bytes) -> Any:
        overrides = CHUNKED if chunked else {}
        return client.post(
            URL, input_stream=io.BytesIO(body), content_type=FORM, environ_overrides=overrides
        )

    over = post(exactly(LIMIT + 1))
    assert over.status_code == 413
    assert over.get_json() == {"error": f"body over {LIMIT} bytes"}
    much_over = post(exactly(LIMIT * 3))
    assert much_over.status_code == 413
    assert state_keys(redis_client) == set()
    at_limit = post(exactly(LIMIT))
    assert at_limit.status_code == 200, at_limit.get_json()


class BrokenChunks(io.RawIOBase):
    """What gunicorn's wsgi.input does on a malformed chunk size: raise its own error."""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        from gunicorn.http.errors import InvalidChunkSize

        raise InvalidChunkSize(b"zz")


def test_broken_chunked_framing_is_400_not_500(
    client: FlaskClient, redis_client: redis.Redis
) -> None:
    answer = client.post(
        URL, content_type=FORM, environ_overrides={**CHUNKED, "wsgi.input": BrokenChunks()}
    )
    assert answer.status_code == 400
    assert answer.get_json() == {"error": "malformed request body framing"}
    assert state_keys(redis_client) == set()


def test_refusals_never_disturb_an_accepted_call(
    make_app: Callable[..., Flask], redis_client: redis.Redis
) -> None:
    """Accept a call, throw every refusal at it (same call sid), its state is unchanged."""
    app = make_app(CALLBACK_BASIC_AUTH="exotel:s3cret-pass")
    client = app.test_client()
    import base64

    auth = {"Authorization": "Basic " + base64.b64encode(b"exotel:s3cret-pass").decode()}
    accepted = client.post(URL, data=TERMINAL, headers=auth)
    assert accepted.status_code == 200
    before = snapshot(redis_client)
    assert any(b"inputs-call" in key for key in before)
    sid = TERMINAL["CallSid"]
    garbage: list[tuple[str, dict[str, Any]]] = [
        ("/exotel/callback/wrong-token-000000000", {"data": TERMINAL, "headers": auth}),
        (URL, {"data": TERMINAL}),  # no Basic
        (URL, {"data": {**TERMINAL, "Status": "busy"}, "headers": {"Authorization": "Basic x"}}),
        (URL, {"data": b"CallSid=" + sid.encode() + b"&x=" + b"y" * LIMIT, "headers": auth,
               "content_type": FORM}),
        (URL, {"data": f'{{"CallSid": "{sid}", "x": NaN}}', "headers": auth,
               "content_type": JSON}),
        (URL, {"data": f"CallSid={sid}&Status=busy", "headers": auth,
               "content_type": "text/plain"}),
        (URL, {"data": f"CallSid={sid}&Status=busy&x=%00", "headers": auth,
               "content_type": FORM}),
        (URL, {"data": {"CallSid": sid + "/../x", "Status": "busy"}, "headers": auth}),
    ]
    for path, kwargs in garbage:
        answer = client.post(path, **kwargs)
        assert 400 <= answer.status_code < 500, (path, kwargs, answer.status_code)
    assert client.put(URL, data=TERMINAL, headers=auth).status_code == 405
    assert snapshot(redis_client) == before
    again = client.post(URL, data=TERMINAL, headers=auth)
    assert again.status_code == 200 and again.get_json()["duplicate"] is True
    assert snapshot(redis_client) == before


def test_the_conformance_helper_rejects_what_the_spec_forbids(client: FlaskClient) -> None:
    """assert_conforms is what the tables and properties above rely on: it must bite."""
    from flask import Response

    def fake(status: int, body: str, **headers: str) -> Response:
        return Response(body, status=status, mimetype="application/json", headers=headers)

    assert_conforms(fake(400, '{"error": "bad"}'), "POST", URL)
    with pytest.raises(AssertionError):
        assert_conforms(fake(500, '{"error": "x"}'), "POST", URL)  # undocumented status
    with pytest.raises(AssertionError):
        assert_conforms(fake(429, '{"error": "slow down"}'), "POST", URL)  # no Retry-After
    with pytest.raises(jsonschema.ValidationError):
        assert_conforms(fake(400, '{"error": 5}'), "POST", URL)
    with pytest.raises(jsonschema.ValidationError):
        assert_conforms(fake(200, '{"accepted": true, "call_sid": "../x", "duplicate": false}'),
                        "POST", URL)
    assert_conforms(fake(429, '{"error": "slow down"}', **{"Retry-After": "3"}), "POST", URL)
