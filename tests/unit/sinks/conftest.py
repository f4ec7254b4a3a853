"""The sink contract suite's cases, and the fakes they deliver to.

Every sink passes ``test_contract.py``. To put a sink through it, register a
factory in :data:`CONTRACT_CASES` (here, or from a module this file imports)::

    @contract_case("hubspot")
    def hubspot_case(env: CaseEnv) -> SinkCase:
        fake = FakeHubSpot()                       # your fake at the HTTP boundary
        env.stack.enter_context(fake.running())    # stopped after the test
        sink = env.build(f"hubspot://{fake.token}@{fake.host}?...")  # via the registry
        return SinkCase(
            sink=sink,
            read_back=fake.calls_for,              # call_sid -> what the CRM holds
            faults={
                "transient": lambda: fake.fail_next(503) or sink,
                "permanent": lambda: fake.fail_next(400) or sink,
            },
            secrets=(fake.token,),
            echoes_record=False,                   # the CRM holds a mapped object
        )

A factory gets a :class:`CaseEnv` (a temporary directory, settings, a sink
context and an ``ExitStack`` for clean-up) and returns a :class:`SinkCase`.
``faults`` maps ``"transient"``/``"permanent"`` to a callable that arranges
that failure and returns the sink whose next ``deliver`` must raise it; leave
a kind out when the sink has no such failure.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import socket
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlencode, urlsplit

import pytest
import redis

from worker.redact import mask_url
from worker.settings import Settings
from worker.sinks.base import CallRecord, Sink, SinkContext
from worker.sinks.memory import MemorySink
from worker.sinks.registry import build_sink

ROOT = Path(__file__).resolve().parents[3]
LEGS_SEED = ROOT / "tests" / "fixtures" / "legs_seed.json"
SCHEMA = ROOT / "docs" / "schema" / "call.v1.json"

FaultKind = Literal["transient", "permanent"]
ReadBack = Callable[[str], list[dict[str, Any]]]


# ---------------------------------------------------------------- records


def sample_record(call_sid: str, **changes: Any) -> CallRecord:
    """An ``exolegs.call/v1`` record for ``call_sid``.

    Built by the real enrichment (``worker.calls.enrich.build_record``) from
    ``tests/fixtures/legs_seed.json`` when both exist, else by hand in the
    same shape. ``changes`` replace top-level fields.
    """
    callback = {
        "CallSid": call_sid,
        "Status": "completed",
        "Direction": "inbound",
        "RecordingUrl": f"https://recordings.exotel.com/exotel/{call_sid}.mp3",
        "CustomField": "lead-42 Añjali नमस्ते",
    }
    fetched_at = datetime(2020, 9, 15, 5, 33, 0, tzinfo=UTC)
    try:
        from worker.calls.enrich import build_record, leg_details_of
    except ImportError:
        record = _hand_built(call_sid, callback)
    else:
        if LEGS_SEED.is_file():
            details = dict(leg_details_of(json.loads(LEGS_SEED.read_text())))
            details["call_sid"] = call_sid
            record = build_record(details, callback, default_country="IN", fetched_at=fetched_at)
        else:
            record = _hand_built(call_sid, callback)
    record.update(changes)
    return record


def _leg(
    sid: str, name: str | None, uri: str, status: str, role: str, **extra: Any
) -> dict[str, Any]:
    return {
        "sid": sid,
        "name": name,
        "contact_uri": uri,
        "kind": "sip" if uri.startswith("sip:") else "pstn",
        "phone_e164": None if uri.startswith("sip:") else extra.pop("e164", None),
        "status": status,
        "group_id": extra.get("group_id"),
        "group_name": extra.get("group_name"),
        "role": role,
        "started_at": "2020-09-15T11:01:20+05:30",
        "ended_at": "2020-09-15T11:02:20+05:30",
        "duration_seconds": 60,
    }


def _hand_built(call_sid: str, callback: dict[str, str]) -> CallRecord:
    customer = _leg(
        "213f2560d153d744cd61eb81a98616ak", None, "0987xxxxxxx", "completed", "customer"
    )
    group = {"group_id": "g-101", "group_name": "Sales"}
    missed = _leg(
        "913f", "Aditya Sharma", "sip:aditya@acme.sip.exotel.com", "no-answer", "agent", **group
    )
    answered = _leg(
        "a13f",
        "Sanjay Mishra",
        "+919876543210",
        "completed",
        "agent",
        e164="+919876543210",
        **group,
    )
    agents = [missed, answered]
    return {
        "schema": "exolegs.call/v1",
        "call_sid": call_sid,
        "account_sid": "exotel",
        "direction": "inbound",
        "status": "completed",
        "from": [customer],
        "to": agents,
        "customer": {"contact_uri": customer["contact_uri"], "phone_e164": None},
        "agents": [
            {k: a[k] for k in ("name", "contact_uri", "status", "group_name")} for a in agents
        ],
        "answered_by": {k: answered[k] for k in ("sid", "name", "contact_uri")},
        "missed": False,
        "started_at": "2020-09-15T11:01:20+05:30",
        "ended_at": "2020-09-15T11:02:20+05:30",
        "duration_seconds": 60,
        "recording_url": callback["RecordingUrl"],
        "custom_field": callback["CustomField"],
        "callback": dict(callback),
        "fetched_at": "2020-09-15T05:33:00Z",
    }


def as_json(record: CallRecord) -> dict[str, Any]:
    """What a record looks like after a trip through JSON."""
    result: dict[str, Any] = json.loads(json.dumps(record))
    return result


def new_call_sid() -> str:
    return "c" + uuid.uuid4().hex[:24]


def with_params(url: str, **params: str) -> str:
    """``url`` with query parameters appended (``?`` or ``&`` as needed)."""
    return url + ("&" if urlsplit(url).query else "?") + urlencode(params)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---------------------------------------------------------------- Standard Webhooks receiver


def new_whsec(size: int = 32) -> str:
    return "whsec_" + base64.b64encode(os.urandom(size)).decode()


def spec_signature(secret: str, msg_id: str, timestamp: str, body: bytes) -> str:
    """An independent Standard Webhooks v1 signature, written from the spec.

    ``base64(HMAC-SHA256(key = base64decode(secret without whsec_),
    message = "{webhook-id}.{webhook-timestamp}.{raw body}"))``.
    """
    key = base64.b64decode(secret.split("_", 1)[1])
    signed = msg_id.encode() + b"." + timestamp.encode() + b"." + body
    return base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


def spec_verify(
    secrets: list[str], headers: dict[str, str], body: bytes, *, now: float | None = None
) -> bool:
    msg_id = headers.get("webhook-id", "")
    stamp = headers.get("webhook-timestamp", "")
    if not msg_id or not stamp.isdigit():
        return False
    if abs((time.time() if now is None else now) - int(stamp)) > 300:
        return False
    offered = [
        entry.split(",", 1)[1]
        for entry in headers.get("webhook-signature", "").split()
        if entry.startswith("v1,")
    ]
    return any(
        hmac.compare_digest(spec_signature(s, msg_id, stamp, body), sig)
        for s in secrets
        for sig in offered
    )


@dataclass
class Received:
    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes
    verified: bool


@dataclass
class Answer:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    delay: float = 0.0


class WebhookReceiver:
    """A real HTTP endpoint in a thread that checks Standard Webhooks signatures.

    Verified deliveries are kept by ``webhook-id`` (as a receiver dedupes);
    a bad signature gets 401. ``answer(...)`` scripts the next responses.
    """

    def __init__(self, secrets: list[str]) -> None:
        self.secrets = list(secrets)
        self.received: list[Received] = []
        self.deliveries: dict[str, dict[str, Any]] = {}
        self.script: list[Answer] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                headers = {k.lower(): v for k, v in self.headers.items()}
                parts = urlsplit(self.path)
                ok = spec_verify(receiver.secrets, headers, body)
                with receiver.lock:
                    receiver.received.append(
                        Received("POST", parts.path, parts.query, headers, body, ok)
                    )
                    answer = receiver.script.pop(0) if receiver.script else None
                    if answer is None and ok:
                        receiver.deliveries[headers["webhook-id"]] = json.loads(body)
                if answer is None:
                    answer = (
                        Answer(200, body=b'{"ok":true}')
                        if ok
                        else Answer(401, body=b"bad signature")
                    )
                if answer.delay:
                    time.sleep(answer.delay)
                try:
                    self.send_response(answer.status)
                    for name, value in answer.headers.items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", str(len(answer.body)))
                    self.end_headers()
                    self.wfile.write(answer.body)
                except OSError:
                    pass  # the client gave up (a timeout test)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def sink_url(self, path: str = "/hooks/calls", query: str = "") -> str:
        secrets = "&".join(f"secret={s}" for s in self.secrets)
        extra = f"&{query}" if query else ""
        return f"webhook+{self.base_url}{path}?{secrets}{extra}"

    def answer(
        self,
        status: int,
        *,
        times: int = 1,
        headers: dict[str, str] | None = None,
        body: bytes = b"",
        delay: float = 0.0,
    ) -> None:
        with self.lock:
            self.script.extend(
                Answer(status, dict(headers or {}), body, delay) for _ in range(times)
            )

    def records_for(self, call_sid: str) -> list[dict[str, Any]]:
        with self.lock:
            return [
                d["data"] for d in self.deliveries.values() if d["data"]["call_sid"] == call_sid
            ]

    def __enter__(self) -> WebhookReceiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    with WebhookReceiver([new_whsec()]) as r:
        yield r


# ---------------------------------------------------------------- PostgreSQL


def _postgres_candidates() -> list[str]:
    configured = os.environ.get("EXOLEGS_TEST_POSTGRES_URL")
    if configured:
        return [configured]
    return [
        "postgresql://postgres:contract-pw-1@127.0.0.1:5432/test",
        "postgresql://root:contract-pw-1@127.0.0.1:5432/test",
    ]


_POSTGRES: dict[str, str | None] = {}


def postgres_url() -> str:
    """A reachable PostgreSQL URL (``postgresql://``), or skip the test saying what was tried."""
    if "url" not in _POSTGRES:
        import psycopg

        _POSTGRES["url"] = None
        for candidate in _postgres_candidates():
            try:
                with psycopg.connect(candidate, connect_timeout=3) as conn:
                    conn.execute("SELECT 1")
            except psycopg.Error:
                continue
            _POSTGRES["url"] = candidate
            break
    found = _POSTGRES["url"]
    if found is None:
        tried = ", ".join(mask_url(u) for u in _postgres_candidates())
        pytest.skip(
            f"PostgreSQL is not reachable (tried {tried}); start one with trust auth on "
            "127.0.0.1:5432 and a database 'test', or set EXOLEGS_TEST_POSTGRES_URL"
        )
    return found


def postgres_exec(sql: str, *params: Any) -> list[tuple[Any, ...]]:
    import psycopg

    with psycopg.connect(postgres_url(), autocommit=True) as conn:
        cur = conn.execute(sql.encode(), params or None)
        return list(cur.fetchall()) if cur.description else []


# ---------------------------------------------------------------- the contract registry


@dataclass
class CaseEnv:
    """What a case factory gets: a scratch directory, settings, and clean-up."""

    tmp_path: Path
    settings: Settings
    context: SinkContext
    stack: ExitStack
    run_id: str

    def build(self, url: str) -> Sink:
        """Build a sink from its URL through the registry (entry points), closed after."""
        sink = build_sink(url, self.context)
        self.stack.callback(sink.close)
        return sink


@dataclass
class SinkCase:
    """One sink under contract, and how to look at and break its destination."""

    sink: Sink
    #: call_sid -> what the destination holds for that call; None: it keeps nothing.
    read_back: ReadBack | None
    #: "transient"/"permanent" -> arrange that fault, return the sink that must raise it.
    faults: dict[FaultKind, Callable[[], Sink]] = field(default_factory=dict)
    #: Secret values (beyond those in the URL's query/password) that must never be shown.
    secrets: tuple[str, ...] = ()
    #: True when read_back returns the record itself (equal after a JSON round trip).
    echoes_record: bool = True
    #: True for a sink that files calls on a party found by the customer's number, and so
    #: logs nothing for a masked one (the seed's customer is ``0987xxxxxxx``).
    needs_dialable_customer: bool = False

    def record(self, call_sid: str) -> CallRecord:
        """The record this case delivers: :func:`sample_record`, with a real customer if needed."""
        record = sample_record(call_sid)
        if self.needs_dialable_customer:
            customer_leg = next(leg for leg in record["from"] if leg["role"] == "customer")
            customer_leg.update(contact_uri="09812345678", phone_e164="+919812345678")
            record["customer"] = {"contact_uri": "09812345678", "phone_e164": "+919812345678"}
        return record


CaseFactory = Callable[[CaseEnv], SinkCase]
CONTRACT_CASES: dict[str, CaseFactory] = {}


def contract_case(name: str) -> Callable[[CaseFactory], CaseFactory]:
    """Register a factory under ``name`` (the test id) in :data:`CONTRACT_CASES`."""

    def register(factory: CaseFactory) -> CaseFactory:
        if name in CONTRACT_CASES:
            raise ValueError(f"contract case {name!r} is registered twice")
        CONTRACT_CASES[name] = factory
        return factory

    return register


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    # At collection time, so factories registered anywhere before it are included.
    if "sink_case" in metafunc.fixturenames:
        metafunc.parametrize("sink_case", sorted(CONTRACT_CASES), indirect=True)


@pytest.fixture
def case_env(tmp_path: Path, settings: Settings, redis_client: redis.Redis) -> Iterator[CaseEnv]:
    with ExitStack() as stack:
        yield CaseEnv(
            tmp_path=tmp_path,
            settings=settings,
            context=SinkContext(settings=settings, redis=redis_client),
            stack=stack,
            run_id=uuid.uuid4().hex[:10],
        )


@pytest.fixture
def sink_case(request: pytest.FixtureRequest, case_env: CaseEnv) -> SinkCase:
    return CONTRACT_CASES[request.param](case_env)


# ---------------------------------------------------------------- the built-in cases


def _blocked_dir(env: CaseEnv) -> Path:
    """A path whose parent is a regular file: any write under it fails with an OSError."""
    blocker = env.tmp_path / "not-a-directory"
    blocker.write_text("x")
    return blocker / "sub"


@contract_case("jsonl")
def jsonl_case(env: CaseEnv) -> SinkCase:
    path = env.tmp_path / "out" / "calls.jsonl"

    def read_back(call_sid: str) -> list[dict[str, Any]]:
        if not path.exists():
            return []
        rows = [json.loads(line) for line in path.read_text().splitlines() if line]
        return [r for r in rows if r["call_sid"] == call_sid]

    return SinkCase(
        sink=env.build(f"jsonl://{path}"),
        read_back=read_back,
        faults={"transient": lambda: env.build(f"jsonl://{_blocked_dir(env)}/calls.jsonl")},
    )


@contract_case("memory")
def memory_case(env: CaseEnv) -> SinkCase:
    bucket = f"contract{env.run_id}"

    def forget() -> None:
        for name in list(MemorySink.buckets):
            if name.startswith(bucket):
                MemorySink.buckets.pop(name, None)
                MemorySink.attempts.pop(name, None)

    env.stack.callback(forget)

    def read_back(call_sid: str) -> list[dict[str, Any]]:
        held = MemorySink.buckets.get(bucket, {}).get(call_sid)
        return [held] if held is not None else []

    return SinkCase(
        sink=env.build(f"memory://{bucket}"),
        read_back=read_back,
        faults={
            "transient": lambda: env.build(f"memory://{bucket}t?fail=1&kind=transient"),
            "permanent": lambda: env.build(f"memory://{bucket}p?fail=1&kind=permanent"),
        },
    )


@contract_case("null")
def null_case(env: CaseEnv) -> SinkCase:
    return SinkCase(sink=env.build("null://"), read_back=None)


@contract_case("webhook")
def webhook_case(env: CaseEnv) -> SinkCase:
    fake = env.stack.enter_context(WebhookReceiver([new_whsec(), new_whsec()]))
    sink = env.build(fake.sink_url(query="rate_limit=600/minute"))

    def failing(status: int) -> Callable[[], Sink]:
        def arrange() -> Sink:
            fake.answer(status, body=b"injected")
            return sink

        return arrange

    return SinkCase(
        sink=sink,
        read_back=fake.records_for,
        faults={"transient": failing(503), "permanent": failing(400)},
        secrets=tuple(fake.secrets) + tuple(s.split("_", 1)[1] for s in fake.secrets),
    )


def _sqlite_read_back(path: Path, table: str) -> ReadBack:
    def read_back(call_sid: str) -> list[dict[str, Any]]:
        if not path.exists():
            return []
        with sqlite3.connect(path) as conn:
            try:
                rows = conn.execute(
                    f"SELECT record FROM {table} WHERE call_sid = ?", (call_sid,)
                ).fetchall()
            except sqlite3.OperationalError:  # no table yet
                return []
        return [json.loads(r[0]) for r in rows]

    return read_back


@contract_case("sql-sqlite")
def sqlite_case(env: CaseEnv) -> SinkCase:
    path = env.tmp_path / "db" / "calls.db"

    def locked() -> Sink:
        path.parent.mkdir(parents=True, exist_ok=True)
        holder = sqlite3.connect(path, isolation_level=None)
        holder.execute("BEGIN EXCLUSIVE")
        env.stack.callback(holder.close)
        env.stack.callback(holder.execute, "ROLLBACK")
        return env.build(f"sql+sqlite://{path}?table=locked_calls&timeout=0.1")

    def wrong_layout() -> Sink:
        path.parent.mkdir(parents=True, exist_ok=True)
        with sqlite3.connect(path) as conn:
            conn.execute("CREATE TABLE wrong_layout (call_sid TEXT PRIMARY KEY, note TEXT)")
        return env.build(f"sql+sqlite://{path}?table=wrong_layout")

    return SinkCase(
        sink=env.build(f"sql+sqlite://{path}?table=exolegs_calls"),
        read_back=_sqlite_read_back(path, "exolegs_calls"),
        faults={"transient": locked, "permanent": wrong_layout},
    )


@contract_case("sql-postgresql")
def postgresql_case(env: CaseEnv) -> SinkCase:
    base = postgres_url()
    table = f"exolegs_contract_{env.run_id}"
    wrong = f"{table}_wrong"
    env.stack.callback(postgres_exec, f"DROP TABLE IF EXISTS {table}, {wrong}")
    parts = urlsplit(base)

    def read_back(call_sid: str) -> list[dict[str, Any]]:
        exists = postgres_exec("SELECT to_regclass(%s)", table)[0][0]
        if exists is None:
            return []
        rows = postgres_exec(f"SELECT record FROM {table} WHERE call_sid = %s", call_sid)
        return [r[0] for r in rows]

    def down() -> Sink:
        userinfo = parts.netloc.rpartition("@")[0]
        netloc = f"{userinfo}@127.0.0.1:{free_port()}" if userinfo else f"127.0.0.1:{free_port()}"
        dead = parts._replace(netloc=netloc, query="").geturl()
        return env.build(with_params(f"sql+{dead}", table=table, connect_timeout="2"))

    def wrong_layout() -> Sink:
        postgres_exec(f"CREATE TABLE {wrong} (call_sid text PRIMARY KEY, note text)")
        return env.build(with_params(f"sql+{base}", table=wrong))

    return SinkCase(
        sink=env.build(with_params(f"sql+{base}", table=table)),
        read_back=read_back,
        faults={"transient": down, "permanent": wrong_layout},
        secrets=(parts.password,) if parts.password else (),
    )


@contract_case("example-plugin")
def example_plugin_case(env: CaseEnv) -> SinkCase:
    directory = env.tmp_path / "example-out"

    def read_back(call_sid: str) -> list[dict[str, Any]]:
        path = directory / f"{call_sid}.json"
        return [json.loads(path.read_text())] if path.is_file() else []

    def a_file() -> Sink:
        path = env.tmp_path / "example-file"
        path.write_text("not a directory")
        return env.build(f"example://{path}")

    return SinkCase(
        sink=env.build(f"example://{directory}"),
        read_back=read_back,
        faults={
            "transient": lambda: env.build(f"example://{_blocked_dir(env)}"),
            "permanent": a_file,
        },
    )


# ---------------------------------------------------------------- the CRM sinks' cases
# HubSpot, Zoho, Salesforce and LeadSquared register theirs (against local fakes of each CRM).
import tests.unit.sinks.fakes.contract  # noqa: E402, F401
