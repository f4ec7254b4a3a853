"""A small HTTP/1.1 load generator: forked processes, keep-alive sockets, a select loop.

wrk is not assumed to be installed, and ``http.client`` costs more CPU per
request than the endpoint under test, which on a 2-core machine would measure
the client. So each process drives its share of the connections itself:
prebuilt request bytes, one ``recv`` per response in the common case, and a
parser that only reads the status line and ``Content-Length``.

Two modes:

* closed loop (``rate=None``): every connection sends its next request as
  soon as the previous answer arrives, which finds the maximum throughput;
* rate-scheduled (``rate=N``): requests are due at fixed intervals and sent
  by whichever connection is free. Latency is reported both from the send and
  from the moment the request was due, so time spent queued behind a busy
  server is counted (no coordinated omission as long as connections suffice).

Every request carries a unique CallSid (run tag, process, sequence), so the
endpoint really dedupes and books work instead of answering "duplicate".
"""

from __future__ import annotations

import multiprocessing as mp
import re
import selectors
import signal
import socket
import time
from collections import Counter
from dataclasses import dataclass, field
from queue import Empty
from urllib.parse import quote_plus

SID_LENGTH = 32
ANSWERED_EVERY = 3  # every third callback is an "answered" event, the rest are terminal

_TERMINAL_STATUSES = ("completed", "completed", "no-answer", "busy", "failed")
_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:\s*(\d+)", re.IGNORECASE)
_CLOSE = re.compile(rb"\r\nconnection:\s*close", re.IGNORECASE)


# ------------------------------------------------------------------ callbacks
def _legs(status: str, answered_by: str) -> list[tuple[str, str]]:
    return [
        ("Legs[0][OnCallDuration]", "335"),
        ("Legs[0][Status]", status),
        ("Legs[0][AnsweredBy]", "NA"),
        ("Legs[1][OnCallDuration]", "320"),
        ("Legs[1][Status]", status),
        ("Legs[1][AnsweredBy]", answered_by),
    ]


def terminal_fields(status: str) -> list[tuple[str, str]]:
    """A v1 StatusCallback terminal event, as Exotel form-encodes it (CallSid first)."""
    return [
        ("CallSid", "{sid}"),
        ("EventType", "terminal"),
        ("DateCreated", "2024-01-15 14:25:10"),
        ("DateUpdated", "2024-01-15 14:30:45"),
        ("To", "09123456789"),
        ("From", "09876543210"),
        ("PhoneNumberSid", "0XXXXXX4890"),
        ("StartTime", "2024-01-15 14:25:12"),
        ("EndTime", "2024-01-15 14:30:45"),
        ("Status", status),
        ("ConversationDuration", "320" if status == "completed" else "0"),
        ("Direction", "outbound-api"),
        ("CustomField", "order_12345"),
        ("RecordingUrl", "https://s3-ap-southeast-1.amazonaws.com/recordings/abc123.mp3"),
        *_legs(status, "HUMAN"),
    ]


def answered_fields() -> list[tuple[str, str]]:
    """A v1 ``answered`` event: not terminal, so it is stored but books no fetch."""
    return [
        ("CallSid", "{sid}"),
        ("EventType", "answered"),
        ("DateCreated", "2024-01-15 14:25:10"),
        ("DateUpdated", "2024-01-15 14:25:20"),
        ("To", "09123456789"),
        ("From", "09876543210"),
        ("PhoneNumberSid", "0XXXXXX4890"),
        ("StartTime", "2024-01-15 14:25:12"),
        ("Status", "in-progress"),
        ("Direction", "outbound-api"),
        ("CustomField", "order_12345"),
        ("CallerName", "Priya Sharma"),
        ("CallFrom", "09876543210"),
        ("CallTo", "09123456789"),
        *_legs("in-progress", "Human"),
    ]


def encode(fields: list[tuple[str, str]], sid: str) -> bytes:
    body = "&".join(f"{quote_plus(k)}={quote_plus(v)}" for k, v in fields)
    return body.replace(quote_plus("{sid}"), sid).encode()


@dataclass(frozen=True)
class Template:
    """Request bytes around the call sid, so building a request is one concatenation."""

    terminal: bool
    head: bytes
    tail: bytes

    @classmethod
    def build(cls, host: str, path: str, fields: list[tuple[str, str]], terminal: bool) -> Template:
        marker = "\0" * SID_LENGTH
        body = encode(fields, marker)
        headers = (
            f"POST {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: exolegs-bench\r\n"
            "Content-Type: application/x-www-form-urlencoded\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        head, _, tail = (headers + body).partition(marker.encode())
        return cls(terminal, head, tail)


def templates(host: str, path: str) -> list[Template]:
    """The request cycle: per ``ANSWERED_EVERY`` requests, one answered, the rest terminal."""
    terminal = [Template.build(host, path, terminal_fields(s), True) for s in _TERMINAL_STATUSES]
    answered = Template.build(host, path, answered_fields(), False)
    cycle: list[Template] = []
    for i in range(len(terminal) * ANSWERED_EVERY):
        if i % ANSWERED_EVERY == ANSWERED_EVERY - 1:
            cycle.append(answered)
        else:
            cycle.append(terminal[i % len(terminal)])
    return cycle


def body_sizes() -> tuple[int, int]:
    """(terminal, answered) body sizes in bytes, for the report."""
    sid = "x" * SID_LENGTH
    return len(encode(terminal_fields("completed"), sid)), len(encode(answered_fields(), sid))


# ---------------------------------------------------------------------- plan
@dataclass(frozen=True)
class Plan:
    port: int
    path: str
    connections: int
    processes: int
    duration: float
    warmup: float = 1.0
    rate: float | None = None  # total requests per second; None: closed loop, flat out
    tag: str = "bench"  # prefixes every call sid; unique per run
    collect_sids: bool = False


@dataclass
class Result:
    duration: float
    completed: int = 0  # answers received inside the measurement window
    sent: int = 0  # every request, warm-up included
    errors: int = 0  # non-200 answers and broken connections
    statuses: Counter[int] = field(default_factory=Counter)
    service_ms: list[float] = field(default_factory=list)  # send -> answer, in the window
    scheduled_ms: list[float] = field(default_factory=list)  # due -> answer (rate mode)
    late: int = 0  # rate mode: requests sent more than 1 ms after they were due
    terminal_sids: list[str] = field(default_factory=list)  # answered 200, whole run

    @property
    def rps(self) -> float:
        return self.completed / self.duration if self.duration else 0.0

    def merge(self, other: Result) -> None:
        self.completed += other.completed
        self.sent += other.sent
        self.errors += other.errors
        self.statuses.update(other.statuses)
        self.service_ms.extend(other.service_ms)
        self.scheduled_ms.extend(other.scheduled_ms)
        self.late += other.late
        self.terminal_sids.extend(other.terminal_sids)


# ---------------------------------------------------------------- the driver
class _Conn:
    __slots__ = ("buf", "busy", "due", "sent_at", "sid", "sock")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = bytearray()
        self.busy = False
        self.due = 0.0
        self.sent_at = 0.0
        self.sid: str | None = None


def _connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _drive(plan: Plan, index: int, connections: int, start: float, out: mp.Queue[Result]) -> None:
    """One load process: ``connections`` sockets until the window closes, then report."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops us; no traceback spam
    cycle = templates(f"127.0.0.1:{plan.port}", plan.path)
    window_start = start + plan.warmup
    window_end = window_start + plan.duration
    result = Result(plan.duration)
    interval = plan.processes / plan.rate if plan.rate else 0.0
    next_due = start + index * interval / plan.processes  # processes interleave their slots
    seq = 0
    selector = selectors.DefaultSelector()
    conns = [_Conn(_connect(plan.port)) for _ in range(connections)]
    for conn in conns:
        selector.register(conn.sock, selectors.EVENT_READ, conn)
    idle = list(conns)
    prefix = f"{plan.tag}{index:02d}"
    sequence_digits = SID_LENGTH - len(prefix)

    def send(conn: _Conn, due: float) -> None:
        nonlocal seq
        template = cycle[seq % len(cycle)]
        sid = f"{prefix}{seq:0{sequence_digits}d}"
        seq += 1
        conn.sid = sid if template.terminal else None
        conn.busy = True
        conn.due = due
        conn.sent_at = time.monotonic()
        conn.sock.sendall(template.head + sid.encode() + template.tail)
        result.sent += 1

    def finish(conn: _Conn, status: int) -> None:
        now = time.monotonic()
        conn.busy = False
        result.statuses[status] += 1
        if status != 200:
            result.errors += 1
        elif conn.sid is not None and plan.collect_sids:
            result.terminal_sids.append(conn.sid)
        if window_start <= conn.sent_at < window_end:
            result.service_ms.append((now - conn.sent_at) * 1000.0)
            if plan.rate:
                result.scheduled_ms.append((now - conn.due) * 1000.0)
        if window_start <= now < window_end:
            result.completed += 1

    def reconnect(conn: _Conn) -> None:
        selector.unregister(conn.sock)
        conn.sock.close()
        conn.sock = _connect(plan.port)
        conn.buf.clear()
        selector.register(conn.sock, selectors.EVENT_READ, conn)

    while time.monotonic() < start:
        time.sleep(0.001)
    drain_until = window_end + 10.0
    while True:
        now = time.monotonic()
        issuing = now < window_end
        if not issuing and len(idle) == len(conns):
            break
        if now > drain_until:
            result.errors += len(conns) - len(idle)  # never answered
            break
        while issuing and idle and (not plan.rate or next_due <= now):
            # The longest-idle connection first: at a fixed rate, taking the one just
            # freed would put every request on one or two connections, hence one
            # server process, which is not how many callers' traffic arrives.
            conn = idle.pop(0)
            due = next_due if plan.rate else now
            if plan.rate:
                if now - next_due > 0.001:
                    result.late += 1
                next_due += interval
            send(conn, due)
        if plan.rate and issuing and idle:
            timeout = max(0.0, min(next_due, window_end) - time.monotonic())
        else:
            timeout = 0.05
        for key, _ in selector.select(timeout):
            conn = key.data
            try:
                chunk = conn.sock.recv(65536)
            except OSError:
                chunk = b""
            if not chunk:  # the server closed the connection
                if conn.busy:
                    finish(conn, 0)
                reconnect(conn)
                if conn not in idle:
                    idle.append(conn)
                continue
            conn.buf += chunk
            end = conn.buf.find(b"\r\n\r\n")
            if end < 0:
                continue
            header = bytes(conn.buf[:end])
            length = _CONTENT_LENGTH.search(header)
            need = end + 4 + (int(length.group(1)) if length else 0)
            if len(conn.buf) < need:
                continue
            status = int(header[9:12])
            del conn.buf[:need]
            finish(conn, status)
            if _CLOSE.search(header):
                reconnect(conn)
            idle.append(conn)
    for conn in conns:
        conn.sock.close()
    out.put(result)


def run(plan: Plan) -> Result:
    """Drive the plan from ``plan.processes`` forked processes; merge their results."""
    ctx = mp.get_context("fork")
    queue: mp.Queue[Result] = ctx.Queue()
    shares = [
        plan.connections // plan.processes + (1 if i < plan.connections % plan.processes else 0)
        for i in range(plan.processes)
    ]
    start = time.monotonic() + 0.3  # every process forked and connected before the gun
    procs = [
        ctx.Process(target=_drive, args=(plan, i, n, start, queue), daemon=True)
        for i, n in enumerate(shares)
        if n
    ]
    total = Result(plan.duration)
    deadline = start + plan.warmup + plan.duration + 60
    try:
        for proc in procs:
            proc.start()
        received = 0
        while received < len(procs):
            try:
                total.merge(queue.get(timeout=0.5))
                received += 1
            except Empty:
                failed = [p.exitcode for p in procs if p.exitcode not in (None, 0)]
                if failed:
                    raise RuntimeError(
                        f"a load generator process failed (exit {failed[0]})"
                    ) from None
                if time.monotonic() > deadline:
                    raise RuntimeError("the load generator did not finish in time") from None
        for proc in procs:
            proc.join(5)
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.terminate()
                proc.join(5)
    total.service_ms.sort()
    total.scheduled_ms.sort()
    return total
