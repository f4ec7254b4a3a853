"""Local fakes of the CRM APIs: real HTTP servers in a thread, one per test.

Each fake is a :class:`FakeServer` subclass that answers the documented
requests with the documented bodies and *checks* every request it gets
(method, path, headers, JSON fields): a request that does not match what the
CRM documents is answered 400 and recorded in :attr:`FakeServer.problems`,
which the tests assert is empty. Faults (429 with the CRM's own headers and
body, expired tokens, 5xx) are scripted with :meth:`FakeServer.fail_next`.

:func:`make_record` builds the records under test with the real enrichment
(``worker.calls.enrich.build_record``) from ``tests/fixtures/legs_seed.json``.
"""

from __future__ import annotations

import copy
import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from worker.calls.enrich import build_record, leg_details_of
from worker.sinks.base import CallRecord

ROOT = Path(__file__).resolve().parents[4]
LEGS_SEED = ROOT / "tests" / "fixtures" / "legs_seed.json"
FETCHED_AT = datetime(2020, 9, 15, 5, 40, 0, tzinfo=UTC)

CUSTOMER_NATIONAL = "9812345678"
CUSTOMER_E164 = "+91" + CUSTOMER_NATIONAL
SANJAY = "+919876543210"  # answers in the seed
ADITYA_SIP = "sip:aditya.sharma@acme.sip.exotel.com"  # first agent dialled, no answer
EXOPHONE = "08047112233"


# ----------------------------------------------------------------- records
def make_record(
    call_sid: str = "f1ca1057692d586b23b4e7ffcc3216mk",
    *,
    direction: str = "inbound",
    answered: bool = True,
    customer: str | None = "0" + CUSTOMER_NATIONAL,
    recording_url: str | None = "https://recordings.exotel.com/exotel/f1ca.mp3",
    status: str | None = None,
    callback: dict[str, Any] | None = None,
) -> CallRecord:
    """A record built by the real enrichment from the seed legs.

    Inbound: the customer calls the ExoPhone; Aditya (SIP) does not answer,
    Sanjay (+919876543210) answers after him, unless ``answered`` is False
    (then nobody does). Outbound: Sanjay calls the customer, who answers
    unless ``answered`` is False.
    """
    legs = dict(leg_details_of(json.loads(LEGS_SEED.read_text(encoding="utf-8"))))
    legs["call_sid"] = call_sid
    customer_leg = copy.deepcopy(legs["from"][0])
    customer_leg["contact_uri"] = customer
    agents = copy.deepcopy(legs["to"])
    if direction == "inbound":
        if not answered:
            for leg in agents:
                leg["status"] = "no-answer"
        legs["from"], legs["to"] = [customer_leg], agents
    else:
        agent = agents[1]  # Sanjay dials out
        customer_leg["status"] = "completed" if answered else "no-answer"
        customer_leg["date_updated"] = "2020-09-15 11:03:05+05:30" if answered else None
        legs["from"], legs["to"] = [agent], [customer_leg]
    fields: dict[str, Any] = {
        "CallSid": call_sid,
        "Direction": "inbound" if direction == "inbound" else "outbound-api",
        "Status": status or ("completed" if answered else "no-answer"),
        "To": EXOPHONE if direction == "inbound" else "0" + CUSTOMER_NATIONAL,
        "From": "0" + CUSTOMER_NATIONAL if direction == "inbound" else SANJAY,
        "PhoneNumberSid": EXOPHONE,
    }
    if recording_url:
        fields["RecordingUrl"] = recording_url
    fields.update(callback or {})
    return build_record(legs, fields, default_country="IN", fetched_at=FETCHED_AT)


# ----------------------------------------------------------------- server
@dataclass
class Seen:
    """One request the fake received."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # lower-cased names
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body) if self.body else None

    @property
    def form(self) -> dict[str, str]:
        return {k: v[-1] for k, v in parse_qs(self.body.decode(), keep_blank_values=True).items()}


@dataclass
class Reply:
    status: int = 200
    body: Any = None  # dict/list -> JSON; str/bytes -> as is; None -> empty
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


class Problem(Exception):
    """The request does not match what the CRM documents."""


@dataclass
class _Fault:
    method: str
    pattern: re.Pattern[str]
    reply: Reply | Callable[[Seen], Reply]
    times: int


class FakeServer:
    """A threaded HTTP server on 127.0.0.1:<free port> that records and checks requests."""

    name = "fake"

    def __init__(self) -> None:
        self.requests: list[Seen] = []
        self.problems: list[str] = []
        self._faults: list[_Fault] = []
        self.lock = threading.RLock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _any(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                parts = urlsplit(self.path)
                seen = Seen(
                    method=self.command,
                    path=parts.path,
                    query={k: v[-1] for k, v in parse_qs(parts.query).items()},
                    headers={k.lower(): v for k, v in self.headers.items()},
                    body=body,
                )
                reply = fake._dispatch(seen)
                if reply.delay:
                    time.sleep(reply.delay)
                if isinstance(reply.body, dict | list):
                    payload = json.dumps(reply.body).encode()
                    content_type = "application/json;charset=UTF-8"
                elif isinstance(reply.body, str):
                    payload, content_type = reply.body.encode(), "text/plain"
                else:
                    payload, content_type = reply.body or b"", "application/octet-stream"
                try:
                    self.send_response(reply.status)
                    headers = {"Content-Type": content_type, **reply.headers}
                    for name, value in headers.items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except OSError:
                    pass

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _any

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------- lifecycle
    @property
    def port(self) -> int:
        return int(self.httpd.server_address[1])

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    @contextmanager
    def running(self) -> Iterator[FakeServer]:
        self.start()
        try:
            yield self
        finally:
            self.stop()

    # ------------------------------------------------------------- scripting
    def fail_next(
        self,
        status: int,
        body: Any = None,
        *,
        headers: dict[str, str] | None = None,
        method: str = "*",
        path: str = ".*",
        times: int = 1,
    ) -> None:
        """Answer the next ``times`` matching requests with this reply instead."""
        self.script(Reply(status, body, dict(headers or {})), method=method, path=path, times=times)

    def script(
        self,
        reply: Reply | Callable[[Seen], Reply],
        *,
        method: str = "*",
        path: str = ".*",
        times: int = 1,
    ) -> None:
        with self.lock:
            self._faults.append(_Fault(method.upper(), re.compile(path), reply, times))

    def _dispatch(self, seen: Seen) -> Reply:
        with self.lock:
            self.requests.append(seen)
            for fault in self._faults:
                if fault.times > 0 and fault.method in ("*", seen.method):
                    if fault.pattern.fullmatch(seen.path):
                        fault.times -= 1
                        reply = fault.reply
                        return reply(seen) if callable(reply) else reply
            try:
                return self.handle(seen)
            except Problem as problem:
                self.problems.append(f"{seen.method} {seen.path}: {problem}")
                return Reply(400, {"fake": f"undocumented request: {problem}"})
            except Exception as err:  # a bug in the fake: make it loud
                self.problems.append(f"{seen.method} {seen.path}: fake crashed: {err!r}")
                return Reply(500, {"fake": repr(err)})

    # ------------------------------------------------------------- checks
    def handle(self, seen: Seen) -> Reply:
        raise NotImplementedError

    def expect(self, condition: object, message: str) -> None:
        if not condition:
            raise Problem(message)

    def seen(self, method: str | None = None, path: str | None = None) -> list[Seen]:
        with self.lock:
            return [
                s
                for s in self.requests
                if (method is None or s.method == method)
                and (path is None or re.fullmatch(path, s.path))
            ]

    def assert_clean(self) -> None:
        assert not self.problems, "requests the CRM would reject:\n" + "\n".join(self.problems)


def require_fields(fake: FakeServer, data: Any, names: dict[str, type | tuple[type, ...]]) -> None:
    """Each named field is present with the given JSON type."""
    fake.expect(isinstance(data, dict), f"expected a JSON object, got {type(data).__name__}")
    for name, kind in names.items():
        fake.expect(name in data, f"missing field {name}")
        fake.expect(
            isinstance(data[name], kind),
            f"{name} must be {kind}, got {type(data[name]).__name__} {data[name]!r}",
        )
