"""Secrets never reach a log line or a Sentry event (a real sentry_sdk client, kept in memory)."""

from __future__ import annotations

import base64
import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
import sentry_sdk
from flask import Flask
from hypothesis import given, settings
from hypothesis import strategies as st
from sentry_sdk.envelope import Envelope
from sentry_sdk.transport import Transport

from worker.logs import (
    Scrubber,
    ScrubFilter,
    configure_logging,
    scrub_event,
    sentry_options,
)
from worker.redact import MASK
from worker.settings import Settings

API_KEY = "exo-api-key-1234"
API_TOKEN = "exo-api-token-abcdefghij0123456789"
NEW_TOKEN = "callback-token-new-0123456789abcdef"
OLD_TOKEN = "callback-token-old-fedcba9876543210"
BASIC_PASSWORD = "basic-pass-5678xyz"
DSN_KEY = "0123456789abcdef0123456789abcdef"
DSN = f"https://{DSN_KEY}@o4505.ingest.sentry.io/4505"
WEBHOOK_SECRET = "whsec_+/+/c2VjcmV0LWtlef/+IHBsdXM="
WEBHOOK_SECRET_2 = "whsec_b2xkLXNlY3JldA=="
HUBSPOT_TOKEN = "pat-na1-11112222-3333-4444"
ENV = {
    "EXOTEL_ACCOUNT_SID": "acme1",
    "EXOTEL_API_KEY": API_KEY,
    "EXOTEL_API_TOKEN": API_TOKEN,
    "CALLBACK_TOKEN": f"{NEW_TOKEN},{OLD_TOKEN}",
    "CALLBACK_BASIC_AUTH": f"exotel:{BASIC_PASSWORD}",
    "SENTRY_DSN": DSN,
    "SINKS": (
        f"webhook+https://hooks.example.com/x?secret={WEBHOOK_SECRET}%20{WEBHOOK_SECRET_2} "
        f"hubspot://?token={HUBSPOT_TOKEN}"
    ),
    "LOG_LEVEL": "DEBUG",
}


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


#: Everything that must never be printed, in every form it may take.
SECRETS = [
    API_TOKEN,
    b64(f"{API_KEY}:{API_TOKEN}"),
    NEW_TOKEN,
    OLD_TOKEN,
    BASIC_PASSWORD,
    b64(f"exotel:{BASIC_PASSWORD}"),
    DSN,
    DSN_KEY,
    WEBHOOK_SECRET,
    WEBHOOK_SECRET_2,
    HUBSPOT_TOKEN,
]


@pytest.fixture
def conf() -> Settings:
    return Settings.from_env(ENV, dotenv=False)


def assert_clean(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text, f"secret {secret[:6]}... leaked in:\n{text}"


# --------------------------------------------------------------- the list
def test_settings_secrets_cover_every_form(conf: Settings) -> None:
    found = conf.secrets()
    for secret in SECRETS:
        assert secret in found, secret
    assert "whsec_%2B%2F%2B%2Fc2VjcmV0LWtlef%2F%2BIHBsdXM%3D" in found  # percent-encoded form too
    assert found == sorted(found, key=len, reverse=True)
    assert all(len(s) >= 4 for s in found)


def test_scrubber_masks_any_callback_token_and_known_secrets(conf: Settings) -> None:
    scrub = Scrubber(conf.secrets())
    line = (
        f'GET /exotel/callback/guessed-token-xyz?CallSid=1 "{API_TOKEN}" '
        f"/exotel/callback/{NEW_TOKEN}"
    )
    cleaned = scrub(line)
    assert "guessed-token-xyz" not in cleaned
    assert cleaned.count("/exotel/callback/***") == 2
    assert "CallSid=1" in cleaned
    assert_clean(cleaned)


@settings(max_examples=200, deadline=None)
@given(
    secrets=st.lists(
        st.text(alphabet=st.characters(exclude_characters="*"), min_size=4, max_size=12),
        min_size=1,
        max_size=4,
    ),
    pieces=st.lists(st.text(max_size=10), max_size=6),
)
def test_no_secret_survives_scrubbing(secrets: list[str], pieces: list[str]) -> None:
    text = "".join(p + secrets[i % len(secrets)] for i, p in enumerate([*pieces, "x"]))
    cleaned = Scrubber(secrets)(text)
    for secret in secrets:
        assert secret not in cleaned


# ---------------------------------------------------------------- logging
@pytest.fixture
def captured(conf: Settings) -> Iterator[io.StringIO]:
    stream = io.StringIO()
    configure_logging(conf, stream=stream)
    yield stream
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_exolegs", False):
            root.removeHandler(handler)


def log_everything(log: logging.Logger) -> None:
    log.debug("calling Exotel with key %s token %s", API_KEY, API_TOKEN)
    log.debug("Authorization: Basic %s", b64(f"{API_KEY}:{API_TOKEN}"))
    log.info("callback on https://edge.example.com/exotel/callback/%s?CallSid=abc", NEW_TOKEN)
    log.info("old url /exotel/callback/%s", OLD_TOKEN)
    log.warning("inbound Authorization: Basic %s", b64(f"exotel:{BASIC_PASSWORD}"))
    log.warning("sentry %s, sinks %s", DSN, ENV["SINKS"])
    log.info("%s", {"secret": WEBHOOK_SECRET, "token": HUBSPOT_TOKEN})
    log.info("percent-encoded %s", "whsec_%2B%2F%2B%2Fc2VjcmV0LWtlef%2F%2BIHBsdXM%3D")
    log.info("extra", extra={"sink": f"webhook?secret={WEBHOOK_SECRET}", "call_sid": "c1"})
    try:
        raise RuntimeError(f"Exotel said 401 for {API_TOKEN} / {BASIC_PASSWORD}")
    except RuntimeError:
        log.exception("fetch failed for %s", NEW_TOKEN)
    log.error("with a stack", stack_info=True, extra={"job": OLD_TOKEN})


@pytest.mark.parametrize("fmt", ["console", "json"])
def test_log_lines_at_debug_carry_no_secret(
    conf: Settings, fmt: str, captured: io.StringIO
) -> None:
    configure_logging(conf.with_(log_format=fmt), stream=captured)
    log_everything(logging.getLogger("exolegs.test"))
    output = captured.getvalue()
    assert "calling Exotel with key exo-api-key-1234 token ***" in output  # DEBUG is on
    assert "/exotel/callback/***?CallSid=abc" in output
    assert "RuntimeError: Exotel said 401 for *** / ***" in output
    assert_clean(output)
    if fmt == "json":
        lines = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
        assert any(line.get("exc") for line in lines)


def test_scrub_filter_is_safe_on_records_of_other_handlers(conf: Settings) -> None:
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "%s %d", (API_TOKEN,), None)
    assert ScrubFilter(conf.secrets()).filter(record) is True
    assert API_TOKEN not in record.getMessage()
    assert "unformattable" in record.getMessage()


# ----------------------------------------------------------------- Sentry
class MemoryTransport(Transport):
    """A real sentry_sdk transport that keeps envelopes instead of sending them."""

    envelopes: list[Envelope] = []

    def capture_envelope(self, envelope: Envelope) -> None:
        MemoryTransport.envelopes.append(envelope)


@pytest.fixture
def sentry(conf: Settings) -> Iterator[list[Envelope]]:
    MemoryTransport.envelopes = []
    options = sentry_options(conf, web=True)
    sentry_sdk.init(**options, transport=MemoryTransport, default_integrations=True)
    yield MemoryTransport.envelopes
    sentry_sdk.get_client().close()
    sentry_sdk.init()  # an inert client: no DSN, nothing sent


def event_payloads(envelopes: list[Envelope]) -> list[dict[str, Any]]:
    out = []
    for envelope in envelopes:
        for item in envelope.items:
            if item.type == "event" and item.payload.json is not None:
                out.append(item.payload.json)
    return out


def test_sentry_events_are_scrubbed_end_to_end(
    conf: Settings, sentry: list[Envelope], captured: io.StringIO
) -> None:
    """A Flask request that fails, with secrets in the URL, headers, locals, logs and message."""
    app = Flask("sentry-test")
    exotel_basic = b64(f"{API_KEY}:{API_TOKEN}")

    @app.post("/exotel/callback/<token>")
    def boom(token: str) -> str:
        basic_header = f"Basic {exotel_basic}"  # a local variable Sentry would capture
        webhook = ENV["SINKS"]
        logging.getLogger("exolegs.test").warning(
            "about to fail with %s and %s", DSN, webhook
        )  # becomes a breadcrumb
        raise RuntimeError(f"upstream refused {basic_header} for {token} ({BASIC_PASSWORD})")

    client = app.test_client()
    answer = client.post(
        f"/exotel/callback/{NEW_TOKEN}?secret={WEBHOOK_SECRET}",
        data={"CallSid": "s1", "From": "+919876543210", "note": HUBSPOT_TOKEN},
        headers={
            "Authorization": f"Basic {b64(f'exotel:{BASIC_PASSWORD}')}",
            "X-Forwarded-For": "203.0.113.9",
            "Referer": f"https://edge.example.com/exotel/callback/{OLD_TOKEN}",
        },
    )
    assert answer.status_code == 500
    sentry_sdk.get_client().flush()
    sentry_sdk.capture_message(f"manual {API_TOKEN} {OLD_TOKEN}")
    sentry_sdk.get_client().flush()
    events = event_payloads(sentry)
    assert len(events) == 2
    text = json.dumps(events)
    assert_clean(text)
    assert MASK in text
    failure = events[0]
    values = failure["exception"]["values"]
    assert "upstream refused Basic *** for *** (***)" in values[-1]["value"]
    frames = values[-1]["stacktrace"]["frames"]
    assert frames and not any("vars" in frame for frame in frames)  # locals are never sent
    assert "/exotel/callback/***" in failure["request"]["url"]
    assert set(failure["request"]) <= {"method", "url"}  # no body, headers or query string
    assert "9876543210" not in text
    assert any("about to fail" in c.get("message", "") for c in failure["breadcrumbs"]["values"])


def test_scrub_event_walks_every_shape() -> None:
    class Opaque:
        def __str__(self) -> str:
            return f"<opaque {API_TOKEN}>"

    deep: dict[str, Any] = {}
    node = deep
    for _ in range(100):
        node["d"] = {}
        node = node["d"]
    node["leaf"] = API_TOKEN
    event = {
        API_TOKEN: "key",
        "list": [API_TOKEN, (OLD_TOKEN, 1), {NEW_TOKEN}],
        "bytes": API_TOKEN.encode(),
        "number": 1234,
        "float": 1.5,
        "flag": True,
        "none": None,
        "opaque": Opaque(),
        "deep": deep,
    }
    cleaned = scrub_event(event, [API_TOKEN, OLD_TOKEN, NEW_TOKEN, "1234"])
    text = json.dumps(cleaned)
    assert API_TOKEN not in text and OLD_TOKEN not in text and NEW_TOKEN not in text
    assert cleaned["number"] == MASK  # a numeric secret is masked, not left as a number
    assert cleaned["float"] == 1.5 and cleaned["flag"] is True and cleaned["none"] is None
    assert "[too deep]" in text


def test_an_event_that_cannot_be_scrubbed_is_dropped(conf: Settings) -> None:
    class Hostile:
        def __str__(self) -> str:
            raise RuntimeError("no")

    before_send = sentry_options(conf, web=False)["before_send"]
    assert before_send({"extra": {"x": Hostile()}}, {}) is None
    kept = before_send({"message": f"token {API_TOKEN}"}, {})
    assert kept == {"message": "token ***"}


def test_sentry_is_configured_without_pii_or_bodies(conf: Settings) -> None:
    options = sentry_options(conf, web=True)
    # data_collection={...} switches sentry-sdk into collecting frame variables and Redis args
    assert "data_collection" not in options
    assert not options.get("send_default_pii")
    assert options["include_local_variables"] is False
    assert options["auto_enabling_integrations"] is False  # no Redis/SQL breadcrumbs
    assert options["max_request_body_size"] == "never"
    assert options["before_send_transaction"] is options["before_send"]
    dropped = options["before_send"](
        {"request": {"data": {"From": "+91"}, "url": "/x?From=1", "headers": {"A": "b"}}}, {}
    )
    assert dropped == {"request": {"url": "/x"}}
    # what sentry-sdk makes of them: nothing that carries data is collected
    sentry_sdk.init(**{**options, "dsn": None})
    try:
        resolved = sentry_sdk.get_client().options
        collection = resolved.get("data_collection")
        if collection is not None:  # sentry-sdk versions that know data_collection
            assert collection["stack_frame_variables"] is False
            assert collection["database_query_data"] is False
            assert collection["queues"] is False
            assert collection["user_info"] is False
        assert resolved["include_local_variables"] is False
        names = {type(i).__name__ for i in sentry_sdk.get_client().integrations.values()}
        assert not names & {"RedisIntegration", "SqlalchemyIntegration"}, names
    finally:
        sentry_sdk.init(dsn=None)


def test_outgoing_requests_carry_no_sentry_baggage(conf: Settings) -> None:
    """Trace headers would hand the DSN's key to Exotel, CRMs and webhook receivers."""
    assert sentry_options(conf, web=False)["trace_propagation_targets"] == []


def test_json_lines_carry_the_bound_context_as_top_level_keys() -> None:
    from worker.logs import configure_logging, log_context

    stream = io.StringIO()
    configure_logging(Settings(log_format="json"), stream=stream)
    log = logging.getLogger("exolegs.test")
    with log_context(call_sid="CA1", job="deliver:CA1:crm", account="acme", attempt=2):
        with log_context(request_id="req-7"):
            log.warning("inside")
        log.warning("outer")
    log.warning("outside")
    inner, outer, outside = (json.loads(line) for line in stream.getvalue().splitlines())
    assert inner["call_sid"] == "CA1" and inner["job"] == "deliver:CA1:crm"
    assert inner["account"] == "acme" and inner["attempt"] == 2
    assert inner["request_id"] == "req-7"
    assert "request_id" not in outer and outer["call_sid"] == "CA1"
    assert not {"call_sid", "job", "account", "attempt"} & set(outside)



def test_a_token_minted_at_run_time_is_scrubbed_by_scrubbers_built_before(
    conf: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    """OAuth access tokens exist only after start-up: every scrubber picks them up."""
    from worker.redact import remember_secret
    from worker.sinks.crm.oauth import Token

    scrub = Scrubber(conf.secrets())
    minted = "00Dxx0000001gPL!AR8AQJXg5oj8jXSgxJfA0lBog.39AsX.LVpxezPwuX5VAIrrbbHMuol7"
    assert minted in scrub(f"Bearer {minted}")
    Token(minted, {}, 0.0)  # what the CRM sinks build as soon as a token comes back
    assert scrub(f"Bearer {minted}") == "Bearer ***"
    remember_secret("zoho-access-1000.abcdef0123456789")
    assert "abcdef0123456789" not in scrub("token zoho-access-1000.abcdef0123456789")
    remember_secret(None)  # nothing to remember: no error
    remember_secret(12345)
