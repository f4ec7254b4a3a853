"""The signed webhook sink against a real local receiver (and `responses` where noted)."""

from __future__ import annotations

import base64
import json
import time
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from importlib.metadata import version

import pytest
import requests
import responses

from tests.unit.sinks.conftest import (
    WebhookReceiver,
    as_json,
    free_port,
    new_call_sid,
    new_whsec,
    sample_record,
    spec_signature,
    spec_verify,
)
from worker.errors import (
    ExolegsError,
    PermanentError,
    RateLimitedError,
    SettingsError,
    TransientError,
)
from worker.settings import Rate, Settings
from worker.sinks.base import SinkContext
from worker.sinks.registry import build_sink
from worker.sinks.webhook import TIMEOUT_SECONDS, WebhookSink, verify


@pytest.fixture
def context() -> SinkContext:
    return SinkContext(settings=Settings.from_env({}, dotenv=False))


def webhook(url: str, context: SinkContext) -> WebhookSink:
    sink = build_sink(url, context)
    assert isinstance(sink, WebhookSink)
    return sink


def deliver_failing(sink: WebhookSink, call_sid: str) -> ExolegsError:
    with pytest.raises(ExolegsError) as caught:
        sink.deliver(sample_record(call_sid))
    err = caught.value
    assert call_sid in err.message, "the error must say which call failed"
    for secret in sink.secrets:
        assert secret not in str(err)
    return err


# ---------------------------------------------------------------- the request


def test_request_is_signed_per_standard_webhooks(
    receiver: WebhookReceiver, context: SinkContext
) -> None:
    sink = webhook(receiver.sink_url(), context)
    call_sid = new_call_sid()
    record = sample_record(call_sid)

    sink.deliver(record)

    [got] = receiver.received
    assert got.verified, "an independent implementation of the spec must verify the signature"
    headers = got.headers
    assert headers["content-type"] == "application/json"
    assert headers["user-agent"] == f"exolegs/{version('exolegs')}"
    assert headers["webhook-id"].startswith("msg_")
    assert abs(int(headers["webhook-timestamp"]) - time.time()) < 10
    [signature] = headers["webhook-signature"].split(" ")
    expected = spec_signature(
        receiver.secrets[0], headers["webhook-id"], headers["webhook-timestamp"], got.body
    )
    assert signature == f"v1,{expected}"
    assert verify(receiver.secrets[0], headers, got.body)
    body = json.loads(got.body)
    assert body == {
        "type": "call.enriched",
        "timestamp": record["fetched_at"],
        "data": as_json(record),
    }
    assert receiver.records_for(call_sid) == [as_json(record)]


def test_verify_rejects_tampering_wrong_secrets_and_stale_timestamps(
    receiver: WebhookReceiver, context: SinkContext
) -> None:
    sink = webhook(receiver.sink_url(), context)
    sink.deliver(sample_record(new_call_sid()))
    [got] = receiver.received
    secret, headers, body = receiver.secrets[0], got.headers, got.body
    stamp = int(headers["webhook-timestamp"])

    assert verify(secret, {k.upper(): v for k, v in headers.items()}, body.decode())
    assert not verify(secret, headers, body + b" ")
    assert not verify(new_whsec(), headers, body)
    assert not verify("not-a-secret", headers, body)
    assert not verify(secret, {**headers, "webhook-id": "msg_other"}, body)
    assert not verify(secret, {**headers, "webhook-signature": "v1,AAAA"}, body)
    assert not verify(secret, {k: v for k, v in headers.items() if k != "webhook-id"}, body)
    assert verify(secret, headers, body, now=stamp + 299)
    assert not verify(secret, headers, body, now=stamp + 301)
    assert not verify(secret, headers, body, now=stamp - 301)
    assert not spec_verify([secret], headers, body, now=stamp + 301)


def test_webhook_id_is_stable_across_retries_and_distinct_per_call_and_sink(
    receiver: WebhookReceiver, context: SinkContext
) -> None:
    sink = webhook(receiver.sink_url(), context)
    call_sid = new_call_sid()
    receiver.answer(503)

    with pytest.raises(TransientError):
        sink.deliver(sample_record(call_sid))
    time.sleep(1.05)  # a later attempt, with a later timestamp
    sink.deliver(sample_record(call_sid))
    sink.deliver(sample_record(new_call_sid()))
    assert len(receiver.records_for(call_sid)) == 1  # the receiver dedupes by webhook-id
    other = webhook(receiver.sink_url(query="name=crm-mirror"), context)
    other.deliver(sample_record(call_sid))

    first, retry, another_call, another_sink = (r.headers for r in receiver.received)
    assert first["webhook-id"] == retry["webhook-id"]
    assert first["webhook-timestamp"] != retry["webhook-timestamp"]
    assert another_call["webhook-id"] != first["webhook-id"]
    assert another_sink["webhook-id"] != first["webhook-id"]


@pytest.mark.parametrize("style", ["repeated", "space", "comma"])
def test_two_secrets_sign_twice_for_rotation(context: SinkContext, style: str) -> None:
    old, new = new_whsec(), new_whsec()
    joined = {
        "repeated": f"secret={old}&secret={new}",
        "space": f"secret={old}%20{new}",
        "comma": f"secret={old}%2C{new}",
    }[style]
    with WebhookReceiver([old]) as only_old, WebhookReceiver([new]) as only_new:
        for fake in (only_old, only_new):
            sink = webhook(f"webhook+{fake.base_url}/in?{joined}", context)
            sink.deliver(sample_record(new_call_sid()))
            [got] = fake.received
            assert got.verified
            entries = got.headers["webhook-signature"].split(" ")
            assert len(entries) == 2 and all(e.startswith("v1,") for e in entries)
            assert verify([old, new], got.headers, got.body)


def test_secret_and_exolegs_params_never_reach_the_endpoint(
    receiver: WebhookReceiver, context: SinkContext
) -> None:
    url = receiver.sink_url(
        path="/in/calls", query="team=sales&name=ops&rate_limit=120/minute&x=%2F"
    )
    sink = webhook(url, context)
    assert sink.rate_limit == Rate(120, 60)
    assert sink.name == "ops"

    sink.deliver(sample_record(new_call_sid()))

    [got] = receiver.received
    assert got.path == "/in/calls"
    assert got.query == "team=sales&x=%2F"
    secret = receiver.secrets[0]
    key_part = secret.split("_", 1)[1]
    for value in (got.path, got.query, *got.headers.values()):
        assert secret not in value and key_part not in value
    assert secret not in sink.target and "name=" not in sink.target
    assert secret not in sink.display_url and secret not in repr(sink)


def test_plus_in_a_base64_secret_is_kept_literally(context: SinkContext) -> None:
    key = bytes([0xFB, 0xEF, 0xFF] * 11)  # base64 with '+' and '/'
    secret = "whsec_" + base64.b64encode(key).decode()
    assert "+" in secret and "/" in secret
    with WebhookReceiver([secret]) as fake:
        sink = webhook(f"webhook+{fake.base_url}/in?secret={secret}", context)
        sink.deliver(sample_record(new_call_sid()))
        assert fake.received[0].verified


def test_check_validates_configuration_without_sending(
    receiver: WebhookReceiver, context: SinkContext
) -> None:
    sink = webhook(receiver.sink_url(), context)
    said = sink.check()
    assert "nothing sent" in said and receiver.base_url in said
    assert receiver.secrets[0] not in said
    assert receiver.received == []


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("webhook+https://hooks.example.com/in", "needs ?secret="),
        ("webhook+https://hooks.example.com/in?secret=sk_live_abcdef", "must start with whsec_"),
        ("webhook+https://hooks.example.com/in?secret=whsec_not*base64!", "valid base64"),
        ("webhook+https://hooks.example.com/in?secret=whsec_", "no key"),
        ("webhook+ftp://hooks.example.com/in?secret=whsec_c2VjcmV0", "webhook+https://"),
        ("webhook://hooks.example.com/in?secret=whsec_c2VjcmV0", "webhook+https://"),
        ("webhook+https:///in?secret=whsec_c2VjcmV0", "names no host"),
    ],
)
def test_bad_configuration_is_a_settings_error(
    url: str, problem: str, context: SinkContext
) -> None:
    with pytest.raises(SettingsError) as caught:
        build_sink(url, context)
    assert caught.value.variable == "SINKS"
    assert problem in str(caught.value)
    assert "sk_live_abcdef" not in str(caught.value)
    assert "not*base64" not in str(caught.value)


def test_second_of_two_secrets_is_named_when_malformed(context: SinkContext) -> None:
    with pytest.raises(SettingsError, match="secret #2"):
        build_sink(f"webhook+https://h.example/in?secret={new_whsec()}&secret=whsec_%%%", context)


# ---------------------------------------------------------------- classification


@pytest.mark.parametrize("status", [301, 302, 307, 308])
def test_redirects_are_not_followed_and_are_permanent(
    receiver: WebhookReceiver, context: SinkContext, status: int
) -> None:
    moved = f"{receiver.base_url}/new-home"
    receiver.answer(status, headers={"Location": moved})
    sink = webhook(receiver.sink_url(), context)

    err = deliver_failing(sink, new_call_sid())

    assert isinstance(err, PermanentError)
    assert f"webhook answered a redirect to {moved}" in err.message
    assert "update the sink URL" in err.message
    assert err.upstream_status == status
    assert len(receiver.received) == 1, "a redirect must not be followed"


@pytest.mark.parametrize(
    ("status", "error_type"),
    [
        (400, PermanentError),
        (401, PermanentError),
        (403, PermanentError),
        (404, PermanentError),
        (410, PermanentError),
        (413, PermanentError),
        (422, PermanentError),
        (408, TransientError),
        (500, TransientError),
        (502, TransientError),
        (503, TransientError),
        (504, TransientError),
    ],
)
def test_status_classification(
    receiver: WebhookReceiver,
    context: SinkContext,
    status: int,
    error_type: type[ExolegsError],
) -> None:
    receiver.answer(status, body=b"receiver says no")
    err = deliver_failing(webhook(receiver.sink_url(), context), new_call_sid())
    assert type(err) is error_type
    assert err.retryable is (error_type is TransientError)
    assert err.upstream_status == status
    assert "receiver says no" in err.message
    if status == 410:
        assert "Gone" in err.message


def test_429_is_rate_limited_with_retry_after_seconds(
    receiver: WebhookReceiver, context: SinkContext
) -> None:
    receiver.answer(429, headers={"Retry-After": "7"})
    err = deliver_failing(webhook(receiver.sink_url(), context), new_call_sid())
    assert isinstance(err, RateLimitedError) and err.retryable
    assert err.retry_after == 7


def test_retry_after_as_an_http_date_and_on_5xx(
    receiver: WebhookReceiver, context: SinkContext
) -> None:
    later = format_datetime(datetime.now(UTC) + timedelta(seconds=120), usegmt=True)
    receiver.answer(429, headers={"Retry-After": later})
    receiver.answer(503, headers={"Retry-After": "30"})
    receiver.answer(503, headers={"Retry-After": "soon"})
    sink = webhook(receiver.sink_url(), context)

    dated = deliver_failing(sink, new_call_sid())
    assert isinstance(dated, RateLimitedError)
    assert dated.retry_after is not None and 100 < dated.retry_after <= 120
    assert deliver_failing(sink, new_call_sid()).retry_after == 30
    assert deliver_failing(sink, new_call_sid()).retry_after is None


def test_a_slow_endpoint_times_out_as_transient(
    receiver: WebhookReceiver, context: SinkContext
) -> None:
    receiver.answer(200, delay=1.0)
    sink = webhook(receiver.sink_url(), context)
    sink.timeout = 0.2

    err = deliver_failing(sink, new_call_sid())

    assert isinstance(err, TransientError)
    assert "no answer within 0.2s" in err.message
    assert isinstance(err.__cause__, requests.Timeout)


def test_connection_refused_is_transient(context: SinkContext) -> None:
    sink = webhook(f"webhook+http://127.0.0.1:{free_port()}/in?secret={new_whsec()}", context)
    err = deliver_failing(sink, new_call_sid())
    assert isinstance(err, TransientError)
    assert isinstance(err.__cause__, requests.ConnectionError)


@responses.activate
def test_fifteen_second_timeout_and_no_redirects_are_configured(context: SinkContext) -> None:
    responses.add(responses.POST, "https://hooks.example.com/in", status=204)
    sink = webhook(f"webhook+https://hooks.example.com/in?secret={new_whsec()}", context)

    sink.deliver(sample_record(new_call_sid()))

    [call] = responses.calls
    kwargs = call.request.req_kwargs  # type: ignore[attr-defined]  # added by responses
    assert kwargs["timeout"] == TIMEOUT_SECONDS == 15
    assert call.request.url == "https://hooks.example.com/in"


@responses.activate
def test_timeouts_from_the_transport_are_transient(context: SinkContext) -> None:
    responses.add(
        responses.POST,
        "https://hooks.example.com/in",
        body=requests.ConnectTimeout("connect timed out"),
    )
    sink = webhook(f"webhook+https://hooks.example.com/in?secret={new_whsec()}", context)
    err = deliver_failing(sink, new_call_sid())
    assert isinstance(err, TransientError)
