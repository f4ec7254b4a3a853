"""Sentry never receives a secret or a customer's number.

A local HTTP server stands in for Sentry's ingest and keeps every envelope.
The pipeline then runs for real (private Redis, the Exotel simulator, a fake
Salesforce org, a webhook that always fails) through three failures: an
Exotel 401, a sink that always fails, and a Salesforce 403 after a token was
minted. Every envelope is then searched for every secret (the configured
ones and the access token minted at run time) and the call's numbers in
every format.
"""

from __future__ import annotations

import gzip
import json
import re
import threading
import zlib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import redis
import sentry_sdk

from tests.support.processes import Simulator
from tests.unit.sinks.fakes.salesforce import FakeSalesforce, sf_error
from worker import jobs, keys
from worker.calls import stored
from worker.calls.callbacks import event_from_fields
from worker.calls.simulator import SimulatorConfig, start_in_thread
from worker.logs import configure_logging, init_sentry
from worker.runtime import Runtime
from worker.settings import Settings
from worker.sinks.crm import forget_local_tokens
from worker.tasks import run_batch

DSN_KEY = "5e1f0e2d3c4b5a69788796a5b4c3d2e1"
WEBHOOK_SECRET = "whsec_cHJpdmFjeS10ZXN0LTdmM2E5YzJlMWI="
CUSTOMER = "9812345678"  # the caller, sent as 09812345678
EXOPHONE = "8047112233"


class Ingest:
    """A stand-in for Sentry: stores every envelope it is sent, decompressed."""

    def __init__(self) -> None:
        self.envelopes: list[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                encoding = self.headers.get("Content-Encoding", "")
                if encoding == "gzip":
                    body = gzip.decompress(body)
                elif encoding == "deflate":
                    body = zlib.decompress(body)
                elif encoding == "br":
                    import brotli  # type: ignore[import-not-found]

                    body = brotli.decompress(body)
                outer.envelopes.append(body.decode("utf-8", "replace"))
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def dsn(self) -> str:
        return f"http://{DSN_KEY}@127.0.0.1:{self.server.server_address[1]}/42"

    def text(self) -> str:
        return "\n".join(self.envelopes)


class AlwaysFails:
    """A webhook receiver that answers every delivery 500, echoing what it got."""

    def __init__(self) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                self.send_response(500)
                self.send_header("Content-Type", "text/plain")
                self.end_headers()
                self.wfile.write(b"receiver broken while handling " + body[:300])

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        port = self.server.server_address[1]
        return f"webhook+http://127.0.0.1:{port}/hook?secret={WEBHOOK_SECRET}&name=hook"


def number_forms(national: str) -> list[str]:
    """A 10-digit Indian number as it may be written anywhere."""
    spaced = f"{national[:5]} {national[5:]}"
    return [
        national, f"0{national}", f"91{national}", f"+91{national}", f"+91 {spaced}",
        f"0{spaced}", f"{national[:5]}-{national[5:]}", f"+91-{national}", national[-7:],
    ]


@pytest.fixture
def ingest() -> Iterator[Ingest]:
    server = Ingest()
    yield server
    sentry_sdk.init(dsn=None)  # later tests run without Sentry
    server.server.shutdown()


def test_sentry_envelopes_hold_no_secret_and_no_number(
    ingest: Ingest, env: dict[str, str], redis_client: redis.Redis, tmp_path: Path
) -> None:
    server, sim_url = start_in_thread(SimulatorConfig())
    sim = Simulator(sim_url)
    org = FakeSalesforce()
    org.start()
    hook = AlwaysFails()
    forget_local_tokens()
    config = SimulatorConfig()
    settings = Settings.from_env(
        {
            **env,
            "EXOTEL_BASE_URL": sim_url,
            "EXOTEL_ACCOUNT_SID": config.account_sid,
            "EXOTEL_API_KEY": config.api_key,
            "EXOTEL_API_TOKEN": config.api_token,
            "SINKS": (
                f"{hook.url} salesforce://{org.host}?client_id={org.client_id}"
                f"&client_secret={org.client_secret}&scheme=http&name=crm"
            ),
            "SENTRY_DSN": ingest.dsn,
            "RETRY_MAX_ATTEMPTS": "1",
            "LOG_LEVEL": "DEBUG",
        },
        dotenv=False,
    )
    configure_logging(settings, stream=(tmp_path / "log.txt").open("w"))
    assert init_sentry(settings, web=False)
    rt = Runtime(settings, client=redis_client)
    callback = {
        "CallSid": "privacy-call-1", "Status": "completed", "Direction": "inbound",
        "From": f"0{CUSTOMER}", "To": f"0{EXOPHONE}", "CallFrom": f"+91{CUSTOMER}",
        "DialWhomNumber": "+91 98765 43210",
    }
    try:
        # 1. Exotel answers 401: the fetch fails and the Exotel circuit opens.
        sim.mode("unauthorized")
        rt.intake.accept(event_from_fields(callback))
        outcomes = [o for b in rt.book.claim() for o in run_batch(rt, b)]
        assert outcomes and "done" not in outcomes
        # 2. Exotel works again: the record is built, then both sinks fail.
        sim.mode("normal")
        circuit = rt.circuit(rt.exotel_limit_name)
        redis_client.delete(circuit.key + ":probe")
        redis_client.zadd(jobs.JOBS, {"fetch:privacy-call-1": 0}, xx=True)
        assert [o for b in rt.book.claim() for o in run_batch(rt, b)] == ["done"]
        record = stored.loads(redis_client.get(keys.record("privacy-call-1")) or "{}")
        assert record, "the fetch must have built a record"
        # the CRM refuses (403) after we signed in and minted an access token
        org.fail_next(403, sf_error("INSUFFICIENT_ACCESS", "insufficient access rights"),
                      path="/services/data/.*", times=100)
        deliveries = [o for b in rt.book.claim() for o in run_batch(rt, b)]
        assert len(deliveries) == 2 and "done" not in deliveries, deliveries
        assert org.sessions, "Salesforce minted an access token"
        # an unexpected error with secrets and numbers in its locals and message
        token = next(iter(org.sessions))
        try:
            authorization = f"Bearer {token}"
            raise RuntimeError(f"CRM said no to {authorization} for +91{CUSTOMER}")
        except RuntimeError:
            sentry_sdk.capture_exception()
        sentry_sdk.get_client().flush(timeout=5)
    finally:
        rt.close()
        server.shutdown()
        org.stop()
        hook.server.shutdown()

    text = ingest.text()
    events = [line for line in text.splitlines() if '"exception"' in line or '"logentry"' in line]
    assert len(events) >= 3, text[:2000]  # the 401, the dead letters, the 403, the capture
    assert "privacy-call-1" in text  # the events are about our call, just without the data
    secrets = [*settings.secrets(), *org.sessions, org.client_secret, DSN_KEY, WEBHOOK_SECRET]
    for secret in secrets:
        assert secret not in text, f"secret {secret[:6]}... reached Sentry"
    numbers = {CUSTOMER, EXOPHONE, "9876543210"}
    numbers |= {m[-10:] for m in re.findall(r"\d{10,}", json.dumps(record))}
    for national in numbers:
        for form in number_forms(national):
            assert form not in text, f"number {form} reached Sentry"
    assert '"vars"' not in text  # no stack-frame variables
    assert '"category":"redis"' not in text and '"category": "redis"' not in text


def test_without_the_settings_the_same_run_would_leak(ingest: Ingest) -> None:
    """The check above can fail: sentry-sdk's defaults send locals and raw text."""
    sentry_sdk.init(dsn=ingest.dsn, include_local_variables=True)
    token = "minted-access-token-0123456789"
    try:
        authorization = f"Bearer {token}"
        raise RuntimeError(f"CRM said no to {authorization} for +91{CUSTOMER}")
    except RuntimeError:
        sentry_sdk.capture_exception()
    sentry_sdk.get_client().flush(timeout=5)
    assert token in ingest.text() and CUSTOMER in ingest.text()
