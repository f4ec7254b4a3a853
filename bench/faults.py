#!/usr/bin/env python
"""The fault suite: real processes, real faults, and a count of every call.

Each scenario gets its own private ``redis-server`` (append-only file,
``appendfsync always``, ``noeviction``), its own Exotel simulator, a real
``exolegs web`` process (gunicorn) and one or two real ``exolegs worker``
processes (Celery, prefork). Callbacks are POSTed to the edge over HTTP, a
fault is injected mid-batch, and the sinks are read back:

* every scenario delivers to two JSONL sinks (``jsonl`` and ``jsonl?name=b``),
  so exactly-once is checked per sink; ``sink-down`` adds a signed webhook
  sink pointed at a receiver inside this script;
* per sink and call sid: delivered = calls with at least one record,
  duplicates = records beyond the first, lost = sent - delivered.

One row per scenario; the exit status is 1 when any row has a lost or
duplicated call, a dead letter, or a scenario-specific check failed
(e.g. more than one Exotel request a minute while the circuit is open).

    .venv/bin/python bench/faults.py                 # everything, ~15 minutes
    .venv/bin/python bench/faults.py --quick         # shorter outages, ~8 minutes
    .venv/bin/python bench/faults.py --only kill9,sigterm --calls 200

Timings are shrunk through the environment (JOB_LEASE_SECONDS=10,
RETRY_BASE_SECONDS=0.5, RETRY_MAX_SECONDS=5, FETCH_DELAY_SECONDS=0,
EXOTEL_TIMEOUT_SECONDS=2); the circuit's one-probe-a-minute is not
configurable, so ``401-storm`` takes about two minutes whatever the flags.
Every process and temporary directory is removed on exit, Ctrl-C included
(``--keep`` keeps the directories, with every process's log, for a post-mortem).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import itertools
import json
import os
import random
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import redis
import requests

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.support.redis_server import RedisServer, free_port  # noqa: E402
from worker.calls.simulator import SimAccount, SimulatorConfig, start_in_thread  # noqa: E402
from worker.settings import Rate  # noqa: E402

TOKEN = "faults-callback-token-0123456789"
LEASE = 10.0
VISIBILITY_TIMEOUT = 300  # worker/celery_app.py; only reported, never waited for
PROBE_INTERVAL = 60  # worker/jobs/circuit.py

BASE_ENV = {
    "CALLBACK_TOKEN": TOKEN,
    "FETCH_DELAY_SECONDS": "0",
    "RETRY_BASE_SECONDS": "0.5",
    "RETRY_MAX_SECONDS": "5",
    "JOB_LEASE_SECONDS": f"{LEASE:g}",
    "EXOTEL_TIMEOUT_SECONDS": "2",
    "EXOTEL_RATE_LIMIT": "20/second",
    "LOG_LEVEL": "INFO",
    "LOG_FORMAT": "console",
    "WEB_CONCURRENCY": "1",
    "PYTHONUNBUFFERED": "1",
}


def log(message: str) -> None:
    print(f"  {time.strftime('%H:%M:%S')} {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------- clean-up
_cleanups: list[Callable[[], None]] = []
_cleanup_lock = threading.Lock()
STOPPING = threading.Event()  # set on Ctrl-C: background posters give up at once


def on_exit(fn: Callable[[], None]) -> Callable[[], None]:
    with _cleanup_lock:
        _cleanups.append(fn)
    return fn


def run_cleanups() -> None:
    while True:
        with _cleanup_lock:
            if not _cleanups:
                return
            fn = _cleanups.pop()
        try:
            fn()
        except Exception as err:  # keep cleaning up whatever else is left
            print(f"cleanup: {err}", file=sys.stderr)


def _terminate(signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


# --------------------------------------------------------------- processes
class Child:
    """A process in its own session, so a signal reaches it and its pool children only."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], log_path: Path, cwd: Path):
        self.name = name
        self.log_path = log_path
        self._log = log_path.open("ab")
        self.proc = subprocess.Popen(
            args,
            env={**os.environ, **env},
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            start_new_session=True,
        )
        self._cleanup = on_exit(self.kill)

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def signal_group(self, sig: int) -> None:
        """Like Heroku: the signal goes to every process of the dyno, children included."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, sig)

    def kill(self) -> None:
        self.signal_group(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)
        if not self._log.closed:
            self._log.close()

    def wait(self, timeout: float) -> bool:
        try:
            self.proc.wait(timeout)
            return True
        except subprocess.TimeoutExpired:
            return False


# ------------------------------------------------------------- the receiver
class Receiver:
    """A webhook endpoint that answers 503 until ``down_until`` and 200 after.

    For the calls in ``retry_after``, the 503 carries ``Retry-After`` = the rest
    of the outage + 30 s: in a 5-minute outage that is a single retry delay
    longer than the broker's 300 s visibility timeout, the case that makes a
    Celery countdown run twice.
    """

    def __init__(self, secret: str) -> None:
        from worker.sinks.webhook import verify

        self.secret = secret
        self.down_until = 0.0
        self.lock = threading.Lock()
        self.ok: list[tuple[float, str, str]] = []  # (time, call_sid, webhook-id)
        self.refused = 0
        self.bad_signatures = 0
        self.retry_after: set[str] = set()
        self.longest_retry_after = 0
        self.hang_until = 0.0  # until then, hold every request and never answer in time
        self.hung = 0
        self.delay = 0.0  # a slow but healthy CRM: every 200 takes this long
        self.permanent: set[str] = set()  # while down, these calls get 422 (dead letters)
        self.records: dict[str, dict[str, Any]] = {}  # the last record received per call
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                return None

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                now = time.time()
                if now < receiver.hang_until:
                    with receiver.lock:
                        receiver.hung += 1
                    time.sleep(receiver.hang_until - now + 1)
                    with contextlib.suppress(OSError):
                        self._answer(503, b'{"error":"too late"}')
                    return
                if now < receiver.down_until:
                    call_sid = json.loads(body)["data"]["call_sid"]
                    if call_sid in receiver.permanent:
                        with receiver.lock:
                            receiver.refused += 1
                        self._answer(422, b'{"error":"validation failed"}')
                        return
                    wait = None
                    if call_sid in receiver.retry_after:
                        wait = int(receiver.down_until - now) + 30
                    with receiver.lock:
                        receiver.refused += 1
                        receiver.longest_retry_after = max(receiver.longest_retry_after, wait or 0)
                    self._answer(503, b'{"error":"maintenance"}', wait)
                    return
                headers = {k: v for k, v in self.headers.items()}
                if not verify(receiver.secret, headers, body):
                    with receiver.lock:
                        receiver.bad_signatures += 1
                    self._answer(401, b'{"error":"bad signature"}')
                    return
                if receiver.delay:
                    time.sleep(receiver.delay)
                data = json.loads(body)["data"]
                call_sid = data["call_sid"]
                with receiver.lock:
                    receiver.ok.append((now, call_sid, headers.get("webhook-id", "")))
                    receiver.records[call_sid] = data
                self._answer(200, b'{"ok":true}')

            def _answer(self, status: int, body: bytes, retry_after: int | None = None) -> None:
                self.send_response(status)
                if retry_after is not None:
                    self.send_header("Retry-After", str(retry_after))
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        on_exit(self.close)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def counts(self) -> Counter[str]:
        with self.lock:
            return Counter(sid for _, sid, _ in self.ok)


# ----------------------------------------------------------------- a run
@dataclass
class Result:
    name: str
    sent: int = 0
    delivered: int = 0  # the worst sink
    lost: int = 0  # summed over sinks
    duplicates: int = 0  # summed over sinks
    drain: float | None = None
    dead: int = 0
    sinks: int = 0
    notes: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    evidence: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.lost or self.duplicates or self.dead or self.failures)


class Run:
    """Everything one scenario starts: Redis, simulator, edge, workers, sinks."""

    def __init__(
        self,
        name: str,
        calls: int,
        *,
        keep: bool,
        sim: SimulatorConfig | None = None,
        env: dict[str, str] | None = None,
        webhook: bool = False,
    ) -> None:
        self.name = name
        self.keep = keep
        self.dir = Path(tempfile.mkdtemp(prefix=f"exolegs-faults-{name}-"))
        if not keep:
            on_exit(lambda: shutil.rmtree(self.dir, ignore_errors=True))
        self.redis_server = RedisServer(port=free_port(), kind="", dir=str(self.dir / "redis"))
        os.makedirs(self.redis_server.dir, exist_ok=True)
        self.redis_server.start()
        if self.redis_server.kind != "redis-server":
            raise SystemExit("bench/faults.py needs redis-server on PATH (a real, durable Redis)")
        on_exit(self.redis_server.stop)
        self.redis = redis.Redis.from_url(self.redis_server.url, socket_timeout=5)

        config = sim or SimulatorConfig()
        self.sim_config = config
        self.sim, self.sim_url = start_in_thread(config)
        on_exit(self.sim.shutdown)
        # (request start, call_sid, status, seconds taken)
        self.sim_log: list[tuple[float, str, int, float]] = []
        self._watch_simulator()

        run_id = secrets.token_hex(3)
        self.sids = [f"{name.replace('-', '')}-{run_id}-{i:05d}" for i in range(calls)]
        self.sid_set = set(self.sids)
        self.jsonl = {"jsonl": self.dir / "calls-a.jsonl", "b": self.dir / "calls-b.jsonl"}
        sinks = [f"jsonl://{self.jsonl['jsonl']}", f"jsonl://{self.jsonl['b']}?name=b"]
        self.receiver: Receiver | None = None
        if webhook:
            secret = "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()
            self.receiver = Receiver(secret)
            sinks.append(f"webhook+http://127.0.0.1:{self.receiver.port}/hook?secret={secret}")
        self.web_port = free_port()
        self.env = {
            **BASE_ENV,
            "REDIS_URL": self.redis_server.url,
            "SINKS": ",".join(sinks),
            "SPOOL_DIR": str(self.dir / "spool"),
            "EXOTEL_BASE_URL": self.sim_url,
            "EXOTEL_ACCOUNT_SID": config.account_sid,
            "EXOTEL_API_KEY": config.api_key,
            "EXOTEL_API_TOKEN": config.api_token,
            "PORT": str(self.web_port),
            **(env or {}),
        }
        self.workers: list[Child] = []
        self.web: Child | None = None
        self._n = 0
        self.t0 = 0.0
        self.watched: list[tuple[float, str, list[float]]] = []  # (fault time, job, [done at])
        self.stop_times: list[float] = []  # how long each SIGTERMed fleet took to exit
        self.lock_overshoot = 0.0  # how long a killed run's lock still lived at the kill
        self._watching = threading.Event()

    # ---------------------------------------------------------- in-flight work
    def in_flight(self) -> list[str]:
        """Jobs a task is running right now: those holding the per-job lock."""
        prefix, suffix = "exolegs:job:", ":lock"
        return [
            k.decode()[len(prefix) : -len(suffix)]
            for k in self.redis.scan_iter(match=f"{prefix}*{suffix}", count=1000)
        ]

    def watch(self, jobs: list[str], fault_at: float) -> None:
        """Record when each job that was running at ``fault_at`` leaves the book."""
        for job in jobs:
            self.watched.append((fault_at, job, []))
        if self._watching.is_set():
            return
        self._watching.set()

        def poll() -> None:
            while self._watching.is_set():
                open_ = [w for w in self.watched if not w[2]]
                try:
                    pipe = self.redis.pipeline()
                    for _, job, _ in open_:
                        pipe.zscore("exolegs:jobs", job)
                    for entry, score in zip(open_, pipe.execute(), strict=True):
                        if score is None:
                            entry[2].append(time.time())
                except redis.RedisError:
                    pass
                time.sleep(0.1)

        threading.Thread(target=poll, daemon=True).start()

    def lock_left(self, jobs: list[str]) -> float:
        """How long the locks of ``jobs`` still live, at most (seconds).

        A killed run's heartbeat stops, so its lock must lapse within one
        lease; the claim then takes the job under a new token.
        """
        pipe = self.redis.pipeline()
        for job in jobs:
            pipe.pttl(f"exolegs:job:{job}:lock")
        return max([p / 1000 for p in pipe.execute() if p and p > 0], default=0.0)

    def redelivery(self) -> tuple[int, float | None]:
        """(jobs watched, the longest fault-to-finished time; None if one never finished)."""
        if not self.watched:
            return 0, 0.0
        if any(not done for _, _, done in self.watched):
            return len(self.watched), None
        return len(self.watched), max(done[0] - at for at, _, done in self.watched)

    # ---------------------------------------------------------- simulator
    def _watch_simulator(self) -> None:
        from flask import g, request

        app = self.sim.app
        entries = self.sim_log

        @app.before_request
        def _start() -> None:
            g.faults_started = time.time()

        @app.after_request
        def _logged(response: Any) -> Any:
            if request.endpoint == "legs" and request.view_args:
                started = g.faults_started
                call_sid = str(request.view_args["call_sid"])
                entries.append((started, call_sid, response.status_code, time.time() - started))
            return response

    def sim_control(self, path: str, payload: dict[str, Any]) -> None:
        requests.post(f"{self.sim_url}/_sim/{path}", json=payload, timeout=5).raise_for_status()

    def exotel_requests(
        self, since: float = 0.0, until: float = float("inf")
    ) -> list[tuple[float, str, int, float]]:
        return [e for e in list(self.sim_log) if since <= e[0] <= until and e[1] in self.sid_set]

    # ---------------------------------------------------------- processes
    def start_worker(
        self, *, wait: bool = True, concurrency: int = 2, env: dict[str, str] | None = None
    ) -> Child:
        self._n += 1
        child = Child(
            f"worker{self._n}",
            [sys.executable, "-m", "worker.cli", "worker", "--concurrency", str(concurrency)],
            {**self.env, **(env or {})},
            self.dir / f"worker{self._n}.log",
            self.dir,
        )
        self.workers.append(child)
        if wait:
            self.wait_worker(child)
        return child

    def wait_worker(self, child: Child, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if "job pump started" in child.output():
                return
            if not child.alive:
                raise RuntimeError(f"{child.name} exited early:\n{child.output()[-3000:]}")
            time.sleep(0.1)
        raise RuntimeError(f"{child.name} not ready within {timeout}s")

    def start_web(self) -> Child:
        child = Child(
            "web",
            [sys.executable, "-m", "worker.cli", "web"],
            self.env,
            self.dir / "web.log",
            self.dir,
        )
        self.web = child
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if not child.alive:
                raise RuntimeError(f"web exited early:\n{child.output()[-3000:]}")
            try:
                if requests.get(f"{self.edge}/healthz", timeout=1).ok:
                    return child
            except requests.RequestException:
                pass
            time.sleep(0.1)
        raise RuntimeError("web not up within 30s")

    @property
    def edge(self) -> str:
        return f"http://127.0.0.1:{self.web_port}"

    def readyz(self) -> tuple[int, dict[str, Any]]:
        answer = requests.get(f"{self.edge}/readyz", timeout=10)
        return answer.status_code, answer.json()

    # ---------------------------------------------------------- callbacks
    def post(self, sids: Iterable[str], threads: int = 8) -> list[dict[str, Any]]:
        """POST one terminal callback per call; retry 5xx and refused connections like Exotel."""
        url = f"{self.edge}/exotel/callback/{TOKEN}"
        local = threading.local()

        def one(sid: str) -> dict[str, Any]:
            session = getattr(local, "session", None) or requests.Session()
            local.session = session
            data = {"CallSid": sid, "Status": "completed", "EventType": "terminal",
                    "Direction": "outbound-api"}  # fmt: skip
            for _ in range(60):
                if STOPPING.is_set():
                    raise RuntimeError("interrupted")
                try:
                    answer = session.post(url, data=data, timeout=15)
                except requests.RequestException:
                    time.sleep(0.5)
                    continue
                if answer.status_code == 200:
                    body: dict[str, Any] = answer.json()
                    return body
                if answer.status_code < 500:
                    raise RuntimeError(f"callback for {sid} refused: {answer.status_code}")
                time.sleep(0.5)
            raise RuntimeError(f"callback for {sid} never accepted")

        if not self.t0:
            self.t0 = time.time()
        pool = ThreadPoolExecutor(threads)
        try:
            return list(pool.map(one, sids))
        finally:
            pool.shutdown(wait=False, cancel_futures=True)

    # ---------------------------------------------------------- counting
    def sink_counts(self) -> dict[str, Counter[str]]:
        out: dict[str, Counter[str]] = {}
        for name, path in self.jsonl.items():
            counts: Counter[str] = Counter(r["call_sid"] for r in jsonl_records(path))
            out[name] = counts
        if self.receiver is not None:
            out["webhook"] = self.receiver.counts()
        return out

    def delivered(self, sink: str = "jsonl") -> int:
        return len(self.sid_set & set(self.sink_counts()[sink]))

    def wait_progress(self, fraction: float, timeout: float = 120, sink: str = "jsonl") -> None:
        target = max(1, int(len(self.sids) * fraction))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.delivered(sink) >= target:
                return
            time.sleep(0.05)
        raise RuntimeError(f"{self.delivered(sink)}/{target} delivered to {sink} in {timeout}s")

    def complete(self, sinks: Iterable[str] | None = None) -> bool:
        counts = self.sink_counts()
        return all(self.sid_set <= set(counts[s]) for s in (sinks or counts))

    def wait_drained(self, timeout: float, sinks: Iterable[str] | None = None) -> float | None:
        """Seconds from the first callback to every call in every sink; None on timeout."""
        chosen = list(sinks) if sinks else None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.complete(chosen):
                return time.time() - self.t0
            time.sleep(0.1)
        return None

    def jobs_left(self) -> int:
        return int(self.redis.zcard("exolegs:jobs"))

    def dead_letters(self) -> int:
        return int(self.redis.zcard("exolegs:dead"))

    def broker_messages(self) -> tuple[int, int, int]:
        """(messages still queued, unacked messages held for a restore, messages with an ETA)."""
        # The broker's queue lists only ("exolegs" and kombu's priority lists
        # "exolegs\x06\x16<n>"), not other lists such as the metrics' latencies.
        queued = [m for key in self.redis.keys("exolegs*")
                  if (key == b"exolegs" or key.startswith(b"exolegs\x06\x16"))
                  and self.redis.type(key) == b"list"
                  for m in self.redis.lrange(key, 0, -1)]  # fmt: skip
        unacked = [json.loads(v)[0] for v in self.redis.hvals("unacked")]
        with_eta = 0
        for raw in [json.loads(m) for m in queued] + unacked:
            if (raw.get("headers") or {}).get("eta"):
                with_eta += 1
        return len(queued), len(unacked), with_eta

    def restore_unacked(self) -> int:
        """Do now what kombu does after the visibility timeout: requeue unacked messages.

        After the drain they can only be stale copies (a killed worker's
        reserved messages); each must find its job finished and do nothing.
        """
        restored = 0
        for tag, raw in self.redis.hgetall("unacked").items():
            message = json.loads(raw)[0]
            pipe = self.redis.pipeline()
            pipe.lpush("exolegs", json.dumps(message))
            pipe.hdel("unacked", tag)
            pipe.zrem("unacked_index", tag)
            pipe.execute()
            restored += 1
        return restored

    def finish(self, result: Result, drain_timeout: float, *, settle: float = 3.0) -> Result:
        """Wait for the drain, replay stale messages, let late duplicates show up, then count."""
        result.drain = self.wait_drained(drain_timeout)
        deadline = time.monotonic() + 3 * LEASE
        while time.monotonic() < deadline and self.jobs_left():
            time.sleep(0.2)
        _, _, eta = self.broker_messages()
        if eta:
            result.failures.append(f"{eta} broker message(s) carry an ETA")
        restored = self.restore_unacked() if any(w.alive for w in self.workers) else 0
        if restored:
            result.notes.append(f"{restored} stale msg(s) restored")
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and self.redis.llen("exolegs"):
                time.sleep(0.2)
        time.sleep(settle)
        counts = self.sink_counts()
        result.sent = len(self.sids)
        result.sinks = len(counts)
        delivered = []
        for sink, c in counts.items():
            ours = {sid: n for sid, n in c.items() if sid in self.sid_set}
            delivered.append(len(ours))
            result.lost += len(self.sids) - len(ours)
            result.duplicates += sum(n - 1 for n in ours.values())
            if len(ours) < len(self.sids) or any(n > 1 for n in ours.values()):
                missing = [s for s in self.sids if s not in ours][:5]
                doubled = [s for s, n in ours.items() if n > 1][:5]
                result.evidence.append(
                    f"sink {sink}: {len(ours)}/{len(self.sids)} delivered; "
                    f"missing e.g. {missing}; duplicated e.g. {doubled}"
                )
        result.delivered = min(delivered)
        result.dead = self.dead_letters()
        left = self.jobs_left()
        if left:
            result.failures.append(f"{left} job(s) still in the book")
            first: list[tuple[bytes, float]] = self.redis.zrange(  # type: ignore[assignment]
                "exolegs:jobs", 0, 4, withscores=True
            )
            due = [(j.decode(), round(s - time.time(), 1)) for j, s in first]
            result.evidence.append(f"book (job, due in s): {due}")
        timeout = float(self.env["EXOTEL_TIMEOUT_SECONDS"])
        fetched = Counter(e[1] for e in self.exotel_requests() if e[2] == 200 and e[3] < timeout)
        refetched = sum(1 for n in fetched.values() if n > 1)
        result.notes.append(f"exotel {len(self.exotel_requests())} req")
        if refetched:
            result.notes.append(f"{refetched} refetched")
        if not result.ok:
            result.evidence.extend(self.log_evidence())
        return result

    def one_fetch_each(self, result: Result) -> None:
        """With no fault on the Exotel side, every call is fetched exactly once."""
        per_call = Counter(e[1] for e in self.exotel_requests())
        extra = {sid: n for sid, n in per_call.items() if n > 1}
        if extra:
            result.failures.append(f"{len(extra)} call(s) fetched twice or more: {list(extra)[:5]}")

    def log_evidence(self, limit: int = 12) -> list[str]:
        """The distinct warnings and errors the processes logged, each once with a count."""
        import re

        words = ("ERROR", "CRITICAL", "WARNING", "Restoring", "WorkerLostError")
        shape = re.compile(r"[0-9a-f]{8}-[0-9a-f-]{27}|\d+(\.\d+)?")
        seen: dict[str, tuple[str, int]] = {}
        for child in [*self.workers, *([self.web] if self.web else [])]:
            try:
                text = child.output()
            except OSError:
                continue
            for line in text.splitlines():
                if not any(w in line for w in words) or "will retry in" in line:
                    continue
                key = shape.sub("#", line[9:])[:160]
                first, n = seen.get(key, (f"{child.name}: {line[:240]}", 0))
                seen[key] = (first, n + 1)
        lines = [f"{first}  [x{n}]" if n > 1 else first for first, n in seen.values()]
        if len(lines) > limit:
            lines = [*lines[:limit], f"... {len(lines) - limit} more kinds"]
        if self.keep:
            lines.append(f"logs kept in {self.dir}")
        return lines

    def close(self) -> None:
        self._watching.clear()
        for child in [*self.workers, *([self.web] if self.web else [])]:
            child.kill()


# --------------------------------------------------------------- scenarios
def baseline(calls: int, quick: bool, keep: bool) -> Result:
    """No fault, but every callback arrives twice at once (Exotel retries): one fetch per call."""
    run = Run("baseline", calls, keep=keep)
    result = Result("baseline")
    try:
        run.start_web()
        run.start_worker()
        run.start_worker()
        answers = run.post([sid for sid in run.sids for _ in range(2)])
        fresh = sum(1 for a in answers if not a.get("duplicate"))
        result.notes.append(f"{len(answers) - fresh} duplicate callbacks acked")
        if fresh != len(run.sids):
            result.failures.append(f"{fresh} callbacks accepted as new, not {len(run.sids)}")
        run.finish(result, 120)
        run.one_fetch_each(result)
        return result
    finally:
        run.close()


def _wait_in_flight(run: Run, fraction: float) -> list[str]:
    """Wait for ``fraction`` of the calls to be delivered and some job to be running."""
    run.wait_progress(fraction)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        running = run.in_flight()
        if running:
            return running
        time.sleep(0.01)
    return []


def _sigkill(run: Run, victims: list[Child]) -> None:
    running = _wait_in_flight(run, 0.0)
    for victim in victims:
        victim.signal_group(signal.SIGKILL)
    at = time.time()
    for victim in victims:
        victim.kill()  # reap
    run.watch(running, at)
    run.lock_overshoot = max(run.lock_overshoot, run.lock_left(running))
    log(
        f"SIGKILL {[v.name for v in victims]} at {run.delivered()}/{len(run.sids)} delivered, "
        f"{len(running)} job(s) running: {running[:4]}"
    )
    for _ in victims:
        run.start_worker(wait=False)


def _sigterm_all(run: Run, result: Result, env: dict[str, str]) -> None:
    victims = [w for w in run.workers if w.alive]
    running = run.in_flight()
    for victim in victims:
        victim.signal_group(signal.SIGTERM)
    at = time.time()
    run.watch(running, at)
    log(
        f"SIGTERM to every process of {[v.name for v in victims]} at "
        f"{run.delivered()}/{len(run.sids)} delivered, {len(running)} job(s) running"
    )
    for victim in victims:
        if not victim.wait(30):  # Heroku's grace period, then SIGKILL
            result.notes.append(f"{victim.name} needed SIGKILL after 30s")
            victim.kill()
    restored = sum(v.output().count("Restoring") for v in victims)
    run.stop_times.append(time.time() - at)
    log(f"stopped in {time.time() - at:.1f}s ({restored} 'Restoring' line(s)); starting again")
    for _ in victims:
        run.start_worker(wait=False, env=env)
    for child in run.workers[-len(victims) :]:
        run.wait_worker(child)


def _slow_answers(run: Run, every: int = 5, delay: float = 0.5) -> None:
    """Every ``every``-th call's legs take ``delay`` s, so work is in flight when a fault hits."""
    for sid in run.sids[::every]:
        run.sim_control("script", {"call_sid": sid, "responses": [{"status": 200, "delay": delay}]})


def kill9(calls: int, quick: bool, keep: bool) -> Result:
    """SIGKILL both workers (a host crash) at 25%, then one of two at 50% and at 75%."""
    run = Run("kill9", calls, keep=keep, sim=SimulatorConfig(latency_ms=20))
    result = Result("kill9")
    try:
        _slow_answers(run)
        run.start_web()
        run.start_worker()
        run.start_worker()
        poster = threading.Thread(target=run.post, args=(run.sids,), daemon=True)
        poster.start()
        run.wait_progress(0.25)
        _sigkill(run, [w for w in run.workers if w.alive])
        for fraction in (0.5, 0.75):
            run.wait_progress(fraction)
            _sigkill(run, [w for w in run.workers if w.alive][:1])
        poster.join()
        run.finish(result, 180)
        watched, slowest = run.redelivery()
        if slowest is None:
            result.failures.append("a job running at a kill never finished")
        else:
            result.notes.append(f"{watched} running job(s) back in <= {slowest:.1f}s")
            if run.lock_overshoot > LEASE + 0.1:
                result.failures.append(
                    f"a killed run's lock still lived {run.lock_overshoot:.2f}s after the kill, "
                    f"more than JOB_LEASE_SECONDS={LEASE:g}"
                )
            if slowest > LEASE + 5:
                late = sorted(((d[0] - at, job) for at, job, d in run.watched), reverse=True)
                result.failures.append(
                    f"work held by a killed worker came back after {slowest:.1f}s, "
                    f"not within JOB_LEASE_SECONDS={LEASE:g} (+5s)"
                )
                result.evidence.append(f"slowest: {[(round(t, 1), j) for t, j in late[:5]]}")
        return result
    finally:
        run.close()


def _sigterm(name: str, calls: int, keep: bool, env: dict[str, str]) -> Result:
    run = Run(name, calls, keep=keep, sim=SimulatorConfig(latency_ms=20))
    result = Result(name)
    try:
        run.start_web()
        run.start_worker(env=env)
        run.start_worker(env=env)
        _slow_answers(run)
        poster = threading.Thread(target=run.post, args=(run.sids,), daemon=True)
        poster.start()
        for fraction in (0.3, 0.65):
            # The new workers must have done some work of their own before the next restart.
            _wait_in_flight(run, max(fraction, (run.delivered() + 10) / len(run.sids)))
            _sigterm_all(run, result, env)
        poster.join()
        run.finish(result, 180)
        watched, slowest = run.redelivery()
        if slowest is None:
            result.failures.append("a job running at a SIGTERM never finished")
        else:
            result.notes.append(f"{watched} running job(s) back in <= {slowest:.1f}s")
            result.notes.append(f"workers stopped in <= {max(run.stop_times):.1f}s")
            late = sorted(((d[0] - at, job) for at, job, d in run.watched), reverse=True)
            log(f"slowest to come back: {[(round(t, 1), j) for t, j in late[:4]]}")
        return result
    finally:
        run.close()


def sigterm(calls: int, quick: bool, keep: bool) -> Result:
    """Heroku restart as the Procfile runs it (REMAP_SIGTERM=SIGQUIT): SIGTERM to every process."""
    return _sigterm("sigterm", calls, keep, {"REMAP_SIGTERM": "SIGQUIT"})


def sigterm_plain(calls: int, quick: bool, keep: bool) -> Result:
    """Heroku restart of a plain `exolegs worker` (no REMAP_SIGTERM): pool children die at once."""
    return _sigterm("sigterm-plain", calls, keep, {})


def _redis_down(run: Run, sig: int, seconds: float, during: list[str], result: Result) -> None:
    server = run.redis_server
    assert server.proc is not None
    server.proc.send_signal(sig)
    server.proc.wait(10)
    server.proc = None
    log(f"redis-server stopped ({signal.Signals(sig).name}); posting {len(during)} callback(s)")
    t = time.time()
    answers = run.post(during) if during else []
    spooled = sum(1 for a in answers if a.get("spooled"))
    if during:
        result.notes.append(f"{spooled}/{len(during)} spooled")
        if spooled != len(during):
            result.failures.append(f"only {spooled}/{len(during)} callbacks spooled at the edge")
    time.sleep(max(0.0, seconds - (time.time() - t)))
    server.start()
    log("redis-server started again from its append-only file")


def _workers_survived(run: Run, result: Result) -> None:
    """A Redis restart must not take the workers down: with one worker, work would stop."""
    dead = [w for w in run.workers if not w.alive]
    result.notes.append(f"{len(run.workers) - len(dead)}/{len(run.workers)} workers alive")
    if not dead:
        return
    result.failures.append(
        f"{len(dead)} of {len(run.workers)} worker(s) died when Redis went away "
        f"(exit {[w.proc.returncode for w in dead]})"
    )
    for w in dead:
        lines = [ln for ln in w.output().splitlines() if "Unrecoverable" in ln or "CRITICAL" in ln]
        result.evidence += [f"{w.name}: {ln[:240]}" for ln in lines[:3]]


def redis_restart(calls: int, quick: bool, keep: bool) -> Result:
    """Stop redis-server (SIGTERM) at 30% for 5 s, half the callbacks arrive meanwhile."""
    run = Run("redis-restart", calls, keep=keep, sim=SimulatorConfig(latency_ms=20))
    result = Result("redis-restart")
    try:
        run.start_web()
        run.start_worker()
        run.start_worker()
        half = len(run.sids) // 2
        run.post(run.sids[:half])
        run.wait_progress(0.3 * half / len(run.sids))
        _redis_down(run, signal.SIGTERM, 5, run.sids[half:], result)
        run.finish(result, 180)
        _workers_survived(run, result)
        return result
    finally:
        run.close()


def redis_crash(calls: int, quick: bool, keep: bool) -> Result:
    """SIGKILL redis-server at 30% (appendfsync always), start it again after 5 s."""
    run = Run("redis-crash", calls, keep=keep, sim=SimulatorConfig(latency_ms=20))
    result = Result("redis-crash")
    try:
        run.start_web()
        run.start_worker()
        run.start_worker()
        run.post(run.sids)
        run.wait_progress(0.3)
        _redis_down(run, signal.SIGKILL, 5, [], result)
        run.finish(result, 180)
        _workers_survived(run, result)
        return result
    finally:
        run.close()


def edge_outage(calls: int, quick: bool, keep: bool) -> Result:
    """Redis down before any callback: every callback (each sent twice) is spooled, then drained."""
    run = Run("edge-outage", calls, keep=keep, env={"WEB_CONCURRENCY": "2"})
    result = Result("edge-outage")
    try:
        run.start_web()
        run.start_worker()
        server = run.redis_server
        server.stop()
        answers = run.post([sid for sid in run.sids for _ in range(2)])
        expected = 2 * len(run.sids)
        spooled = sum(1 for a in answers if a.get("spooled"))
        files = len(list((run.dir / "spool").glob("*.json")))
        status, body = run.readyz()
        log(f"spooled {spooled} (files {files}); /readyz {status} {json.dumps(body)}")
        result.notes.append(f"{spooled} spooled, readyz {status}")
        if spooled != expected or files != expected:
            result.failures.append(f"{spooled} answers / {files} files spooled, not {expected}")
        if status != 503 or body.get("spooled") != expected:
            result.failures.append(f"/readyz during the outage: {status} {body}")
        time.sleep(3)
        server.start()
        log("redis-server started; the edge's drainer moves the spool")
        run.finish(result, 120)
        again = run.post(run.sids)  # Exotel retrying the same callbacks now Redis is back
        repeats = sum(1 for a in again if a.get("duplicate"))
        result.notes.append(f"{repeats} repeats deduped")
        if repeats != len(run.sids):
            result.failures.append(f"only {repeats}/{len(run.sids)} repeated callbacks deduped")
        time.sleep(2)
        run.one_fetch_each(result)
        result.duplicates = sum(  # counted again, after the repeats
            n - 1 for c in run.sink_counts().values() for sid, n in c.items() if sid in run.sid_set
        )
        status, body = run.readyz()
        left = len(list((run.dir / "spool").iterdir()))
        if status != 200 or body.get("spooled") or left:
            result.failures.append(f"after the drain: /readyz {status} {body}, {left} spool files")
        return result
    finally:
        run.close()


def storm_401(calls: int, quick: bool, keep: bool) -> Result:
    """Exotel answers 401 (wrong credentials) for a while: the circuit parks work, probes 1/min."""
    storm = 30.0 if quick else 90.0
    run = Run("401-storm", calls, keep=keep)
    result = Result("401-storm")
    try:
        run.start_web()
        run.start_worker()
        run.start_worker()
        run.sim_control("mode", {"mode": "unauthorized"})
        run.post(run.sids)
        key = "exolegs:circuit:exotel:" + run.sim_config.account_sid
        deadline = time.monotonic() + 30
        while not run.redis.exists(key) and time.monotonic() < deadline:
            time.sleep(0.05)
        state = json.loads(run.redis.get(key) or "{}")
        opened = float(state.get("opened_at") or time.time())
        status, body = run.readyz()
        log(f"circuit open; /readyz {status} {json.dumps(body)}")
        # Without the operator credential /readyz shows counts, not which circuit.
        if not body.get("open_circuits") and not body.get("problems"):
            result.failures.append(f"/readyz shows no open circuit: {body}")
        time.sleep(max(0.0, opened + storm - time.time()))
        run.sim_control("mode", {"mode": "normal"})
        log(f"Exotel answers normally again after {time.time() - opened:.0f}s")
        run.finish(result, 240)
        ok = [t for t, _, s, _ in run.exotel_requests(since=opened) if s == 200]
        closed = min(ok) if ok else time.time()
        # Requests in flight when the circuit opened may land just after it.
        during = sorted(e[0] for e in run.exotel_requests(opened + 1.0, closed))
        gaps = [b - a for a, b in zip([opened, *during], during, strict=False)]
        before = len(run.exotel_requests(until=opened + 1.0))
        result.notes.append(
            f"{before} req before open; open {closed - opened:.0f}s: {len(during)} probe(s)"
            + (f", min gap {min(gaps):.0f}s" if gaps else "")
        )
        if gaps and min(gaps) < PROBE_INTERVAL - 2:
            result.failures.append(
                f"Exotel saw {len(during)} request(s) in {closed - opened:.0f}s of open circuit, "
                f"gaps {[round(g, 1) for g in gaps]} (limit 1 a minute)"
            )
        if run.redis.exists(key):
            result.failures.append("circuit still open after the drain")
        if result.drain is not None and ok:
            after = run.t0 + result.drain - closed
            result.notes.append(f"drained {after:.0f}s after the probe that closed it")
            # "A probe that succeeds closes the circuit and releases every parked job at once."
            if after > 30:
                fetched = sorted(
                    e[0] - closed for e in run.exotel_requests(since=closed) if e[2] == 200
                )
                late = sum(1 for t in fetched if t > 30)
                result.failures.append(
                    f"{late} call(s) fetched {PROBE_INTERVAL}s+ after the circuit closed: "
                    "parked again instead of released"
                )
                result.evidence.append(
                    f"200s after the close at +s: {[round(t) for t in fetched if t > 30][:10]}"
                )
        return result
    finally:
        run.close()


def storm_429(calls: int, quick: bool, keep: bool) -> Result:
    """Exotel allows 5/s, we are set to 20/s; every 10th call also gets a 429 + Retry-After 3."""
    run = Run(
        "429-storm",
        calls,
        keep=keep,
        sim=SimulatorConfig(rate_limit=Rate(5, 1), retry_after=2),
        env={"EXOTEL_RATE_LIMIT": "20/second"},
    )
    result = Result("429-storm")
    scripted = run.sids[::10]
    try:
        for sid in scripted:
            run.sim_control("script", {"call_sid": sid, "responses": [
                {"status": 429, "code": 10724, "retry_after": 3}]})  # fmt: skip
        run.start_web()
        run.start_worker()
        run.start_worker()
        run.post(run.sids)
        run.finish(result, 240)
        statuses = Counter(e[2] for e in run.exotel_requests())
        per_call = Counter(e[1] for e in run.exotel_requests() if e[2] == 429)
        worst = max(per_call.values(), default=0)
        result.notes.append(f"{statuses.get(429, 0)} x 429 (at most {worst} for one call)")
        early = []
        for sid in scripted:
            times = sorted(e[0] for e in run.exotel_requests() if e[1] == sid)
            if len(times) >= 2 and times[1] - times[0] < 3.0 - 0.05:
                early.append((sid, round(times[1] - times[0], 2)))
        if early:
            result.failures.append(f"Retry-After 3s not honoured for {early[:5]}")
        return result
    finally:
        run.close()


def sink_down(calls: int, quick: bool, keep: bool) -> Result:
    """A webhook sink answers 503 for 5 min (30 s with --quick); the JSONL sinks must not wait.

    Every other call's 503 carries a Retry-After beyond the end of the outage
    (330 s at first: longer than the broker's visibility timeout); the others
    retry with backoff (<= RETRY_MAX_SECONDS) all through the outage.
    """
    outage = 30.0 if quick else 300.0
    run = Run("sink-down", calls, keep=keep, webhook=True, env={"RETRY_MAX_ATTEMPTS": "1000"})
    result = Result("sink-down")
    assert run.receiver is not None
    run.receiver.retry_after = set(run.sids[::2])
    try:
        run.start_web()
        run.start_worker()
        run.start_worker()
        run.receiver.down_until = time.time() + outage
        run.post(run.sids)
        jsonl = run.wait_drained(outage, sinks=["jsonl", "b"])
        if jsonl is None or run.delivered("webhook"):
            result.failures.append("the JSONL sinks waited for the webhook sink")
        else:
            result.notes.append(f"jsonl drained in {jsonl:.1f}s")
        log(f"JSONL sinks drained in {jsonl or 0:.1f}s; webhook down for {outage:.0f}s")
        run.finish(result, outage + 180)
        result.notes.append(
            f"webhook refused {run.receiver.refused} attempt(s), "
            f"longest Retry-After {run.receiver.longest_retry_after}s"
        )
        if run.receiver.bad_signatures:
            result.failures.append(f"{run.receiver.bad_signatures} bad webhook signature(s)")
        ids = Counter(mid for _, _, mid in run.receiver.ok)
        if any(n > 1 for n in ids.values()):
            result.notes.append("repeats share a webhook-id")
        return result
    finally:
        run.close()


def sink_hang(calls: int, quick: bool, keep: bool) -> Result:
    """A webhook sink accepts connections but never answers for 2 min (90 s with --quick).

    A down host often looks like this rather than a quick 503: every delivery
    to it holds a worker slot until a timeout. The JSONL sinks must still not
    wait for it (a sink that is down never delays the others).
    The lease is 40 s here, so that, as in production (120 s), the webhook
    sink's own 15 s timeout ends a hung delivery before the soft time limit
    (half the lease) does.
    """
    hang = 90.0 if quick else 120.0
    limit = 60.0  # well under the hang: the JSONL sinks did not wait it out
    run = Run(
        "sink-hang",
        calls,
        keep=keep,
        webhook=True,
        env={"RETRY_MAX_ATTEMPTS": "1000", "JOB_LEASE_SECONDS": "40"},
    )
    result = Result("sink-hang")
    assert run.receiver is not None
    try:
        run.start_web()
        run.start_worker()
        run.start_worker()
        run.receiver.hang_until = time.time() + hang
        peak = [0]
        sampling = threading.Event()

        def sample() -> None:
            while not sampling.is_set():
                with contextlib.suppress(redis.RedisError):
                    peak[0] = max(peak[0], int(run.redis.llen("exolegs")))
                time.sleep(0.5)

        threading.Thread(target=sample, daemon=True).start()
        run.post(run.sids)
        jsonl = run.wait_drained(hang + 120, sinks=["jsonl", "b"])
        log(f"JSONL sinks drained in {jsonl or 0:.1f}s; webhook hanging for {hang:.0f}s")
        if jsonl is None or jsonl > limit:
            result.failures.append(
                f"the JSONL sinks waited for the hanging webhook sink: drained after "
                f"{jsonl if jsonl is None else round(jsonl, 1)}s of a {hang:.0f}s hang "
                f"(limit {limit:.0f}s)"
            )
        if jsonl is not None:
            result.notes.append(f"jsonl drained in {jsonl:.1f}s")
        run.finish(result, hang + 180)
        sampling.set()
        result.notes.append(f"{run.receiver.hung} hung attempt(s), peak queue {peak[0]} msg(s)")
        return result
    finally:
        run.close()


def slow_exotel(calls: int, quick: bool, keep: bool) -> Result:
    """Exotel takes 4 s to answer (timeout 2 s) for 20 s (10 s with --quick), then normal."""
    slow = 10.0 if quick else 20.0
    run = Run("slow-exotel", calls, keep=keep)
    result = Result("slow-exotel")
    try:
        run.start_web()
        run.start_worker()
        run.start_worker()
        run.sim_control("mode", {"mode": "slow", "delay": 4})
        started = time.time()
        run.post(run.sids)
        time.sleep(max(0.0, started + slow - time.time()))
        run.sim_control("mode", {"mode": "normal"})
        timeouts = len(run.exotel_requests(started, time.time()))
        log(f"{timeouts} request(s) timed out during {slow:.0f}s of slow Exotel")
        run.finish(result, 180)
        result.notes.append(f"{timeouts} timed out")
        return result
    finally:
        run.close()


# ------------------------------------------------------------ noisy neighbour
B_TOKEN = "faults-callback-token-account-b-0123"
B_SIM = SimAccount("acct_b", "key_b", "token_b_0123456789")


class _Paced:
    """Posts one account's terminal callbacks at a steady rate, noting when each left.

    Call ``n`` leaves at ``t0 + n * interval`` (``t0`` defaults to the start),
    so two pacers given the same ``t0`` post their calls at the same instants;
    ``count`` stops it after that many calls.
    """

    def __init__(
        self,
        run: Run,
        token: str,
        prefix: str,
        per_minute: float,
        *,
        t0: float | None = None,
        count: int | None = None,
    ) -> None:
        self.url = f"{run.edge}/exotel/callback/{token}"
        self.prefix = prefix
        self.interval = 60.0 / per_minute
        self.t0 = t0
        self.count = count
        self.sent: dict[str, float] = {}
        self.stop = threading.Event()
        self.errors: list[str] = []
        self.thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> _Paced:
        self.thread.start()
        return self

    def sid(self, n: int) -> str:
        return f"{self.prefix}{n:05d}"

    def _run(self) -> None:
        session = requests.Session()
        t0 = time.time() if self.t0 is None else self.t0
        n = 0
        while not self.stop.is_set() and not STOPPING.is_set():
            if self.count is not None and n >= self.count:
                break
            time.sleep(max(0.0, t0 + n * self.interval - time.time()))
            sid = self.sid(n)
            data = {"CallSid": sid, "Status": "completed", "EventType": "terminal",
                    "Direction": "outbound-api"}  # fmt: skip
            self.sent[sid] = time.time()
            for _ in range(20):
                try:
                    if session.post(self.url, data=data, timeout=15).status_code == 200:
                        break
                except requests.RequestException:
                    pass
                time.sleep(0.2)
            else:
                self.errors.append(f"callback for {sid} never accepted")
            n += 1

    def finish(self, timeout: float = 20) -> None:
        """Wait up to ``timeout`` s for its ``count`` calls (if set), then stop it."""
        if self.count is not None:
            self.thread.join(timeout)
        self.stop.set()
        self.thread.join(20)


def _p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


#: Both deployments' B posts for this long before A starts; those calls are left out of both
#: p95s (first connections, first task in each worker process).
NEIGHBOUR_WARMUP = 5.0


class _Lockstep:
    """What keeps the two deployments of noisy-neighbour in step.

    ``start``: both wait until both are up; then call ``n`` of B leaves both at
    ``t0 + n * 0.3 s``. ``end``: neither is torn down while the other still measures.
    """

    def __init__(self) -> None:
        self.t0: list[float] = []
        self.start = threading.Barrier(2, action=lambda: self.t0.append(time.time() + 0.5))
        self.end = threading.Barrier(2)

    def abort(self) -> None:
        self.start.abort()
        self.end.abort()


def _neighbour_run(
    name: str, keep: bool, storms: tuple[float, float] | None, span: float, step: _Lockstep
) -> dict[str, Any]:
    """One run: account B at its full 200/minute for a warm-up and ``span`` s; with
    ``storms``, account A (the default account), after the warm-up, at 200/minute
    too, through a 401 storm then a 429 storm. Returns B's latency per measured call."""
    run = Run(name, 0, keep=keep, sim=SimulatorConfig(accounts=(B_SIM,)),
              env={"CIRCUIT_PROBE_SECONDS": "10", "EXOTEL_RATE_LIMIT": "200/minute"})  # fmt: skip
    out: dict[str, Any] = {"failures": [], "notes": []}
    secret = "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()
    receiver = Receiver(secret)
    b_jsonl = run.dir / "b-calls.jsonl"
    run.env["EXOTEL_ACCOUNTS"] = json.dumps({"b": {
        "sid": B_SIM.sid, "api_key": B_SIM.api_key, "api_token": "${B_EXOTEL_TOKEN}",
        "base_url": run.sim_url, "rate_limit": "200/minute", "callback_tokens": [B_TOKEN],
        "sinks": [f"jsonl://{b_jsonl}?name=b-jsonl",
                  f"webhook+http://127.0.0.1:{receiver.port}/hook?secret={secret}&name=b-hook"],
    }})  # fmt: skip
    run.env["B_EXOTEL_TOKEN"] = B_SIM.api_token
    parked_b: set[str] = set()
    b_circuit_open = [False]
    queue: list[tuple[float, int]] = []  # (time, broker messages waiting)
    sampling = threading.Event()

    def sample() -> None:
        while not sampling.is_set():
            with contextlib.suppress(redis.RedisError):
                queue.append((time.time(), int(run.redis.llen("exolegs"))))
                for key in run.redis.scan_iter(match="exolegs:circuit:*:parked", count=1000):
                    parked_b.update(m.decode() for m in run.redis.smembers(key)
                                    if m.decode().startswith("b/"))  # fmt: skip
                for upstream in (f"exotel:{B_SIM.sid}", "sink:b-jsonl", "sink:b-hook"):
                    b_circuit_open[0] |= bool(run.redis.exists(f"exolegs:circuit:{upstream}"))
            time.sleep(0.25)

    try:
        run.start_web()
        run.start_worker()
        run.start_worker()
        threading.Thread(target=sample, daemon=True).start()
        a_sid = run.sim_config.account_sid
        step.start.wait(timeout=240)  # the other deployment is up too
        t0 = step.t0[0]
        interval = 60.0 / 200
        skip = int(-(-NEIGHBOUR_WARMUP // interval))  # the first calls: warm-up, not measured
        total = skip + int(span / interval)
        b = _Paced(run, B_TOKEN, f"nnb-{name[-4:]}-", 200, t0=t0, count=total).start()
        a: _Paced | None = None
        started = t0 + skip * interval  # the measured calls, and A's, start here
        time.sleep(max(0.0, started - time.time()))
        if storms is not None:
            storm401, storm429 = storms
            run.sim_control("mode", {"mode": "unauthorized", "account": a_sid})
            a = _Paced(run, TOKEN, f"nna-{name[-4:]}-", 200, t0=started).start()
            log(f"A: 401 storm for {storm401:.0f}s while B runs at 200/minute")
            time.sleep(max(0.0, started + storm401 - time.time()))
            run.sim_control("mode", {"mode": "normal", "account": a_sid})
            key = f"exolegs:circuit:exotel:{a_sid}"
            deadline = time.monotonic() + 60
            while run.redis.exists(key) and time.monotonic() < deadline:
                time.sleep(0.2)
            log(f"A: circuit closed {time.time() - started - storm401:.1f}s after the 401 storm; "
                f"429 storm for {storm429:.0f}s")  # fmt: skip
            run.sim_control("mode", {"mode": "rate-limited", "account": a_sid})
            time.sleep(storm429)
            run.sim_control("mode", {"mode": "normal", "account": a_sid})
            out["a_statuses"] = dict(Counter(e[2] for e in run.sim_log if e[1].startswith("nna-")))
        time.sleep(max(0.0, started + span - time.time()))
        b.finish()
        if a is not None:
            a.finish()
        out["span"] = time.time() - started
        log(f"posting done: B {len(b.sent)} call(s)" + (f", A {len(a.sent)}" if a else ""))

        def counts(path: Path, prefix: str) -> Counter[str]:
            c: Counter[str] = Counter()
            for record in jsonl_records(path):
                if (sid := record["call_sid"]).startswith(prefix):
                    c[sid] += 1
            return c

        sinks_b = lambda: {"b-jsonl": counts(b_jsonl, "nnb-"), "b-hook": receiver.counts()}  # noqa: E731
        sinks_a = lambda: {n: counts(p, "nna-") for n, p in run.jsonl.items()}  # noqa: E731
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            done_b = all(set(b.sent) <= set(c) for c in sinks_b().values())
            done_a = a is None or all(set(a.sent) <= set(c) for c in sinks_a().values())
            if done_b and done_a and not run.jobs_left():
                break
            time.sleep(0.2)
        time.sleep(2)
        sampling.set()
        lost = dup = 0
        for who, sent, sinks in (("B", b.sent, sinks_b()), ("A", a.sent if a else {}, sinks_a())):
            for sink, c in sinks.items():
                missing = [sid for sid in sent if sid not in c]
                doubled = [sid for sid in sent if c[sid] > 1]
                lost += len(missing)
                dup += sum(c[sid] - 1 for sid in doubled)
                if missing or doubled:
                    out["failures"].append(
                        f"{who} sink {sink}: {len(missing)} lost (e.g. {missing[:3]}), "
                        f"{len(doubled)} duplicated"
                    )
        arrived: dict[str, float] = {}
        for when, sid, _ in receiver.ok:
            arrived.setdefault(sid, when)
        # Call n of B -> its end-to-end latency, for the measured calls (after the warm-up).
        measured = [b.sid(n) for n in range(skip, total)]
        out["e2e"] = {sid: arrived[sid] - b.sent[sid] for sid in measured
                      if sid in arrived and sid in b.sent}  # fmt: skip
        out["warmup"] = sorted((arrived[sid] - b.sent[sid] for sid in map(b.sid, range(skip))
                                if sid in arrived and sid in b.sent), reverse=True)  # fmt: skip
        fetched = {e[1]: e[0] for e in run.sim_log if e[1].startswith("nnb-") and e[2] == 200}
        # Every B call's times, kept with --keep (the row's line has only the summary).
        (run.dir / "b-latency.json").write_text(json.dumps({
            "t0": t0, "measured_from": started, "sent": b.sent, "arrived": arrived,
            "fetched": fetched, "a_sent": a.sent if a else {}, "queue": queue,
        }))  # fmt: skip
        slowest = sorted(((t, s) for s, t in out["e2e"].items()), reverse=True)[:8]
        out["slowest"] = [
            f"{sid} +{b.sent[sid] - started:.1f}s: fetched after "
            f"{fetched.get(sid, float('nan')) - b.sent[sid]:.2f}s, delivered after {total_s:.2f}s"
            for total_s, sid in slowest
        ]
        peaks = sorted(queue, key=lambda q: -q[1])[:5]
        out["queue"] = [f"{n} msg(s) at +{t - started:.1f}s" for t, n in peaks]
        out.update(
            b_sent=len(b.sent), a_sent=len(a.sent) if a else 0, lost=lost, dup=dup,
            parked_b=len(parked_b), b_circuit=b_circuit_open[0], dead=run.dead_letters(),
            jobs_left=run.jobs_left(),
            b_statuses=dict(Counter(e[2] for e in run.sim_log if e[1].startswith("nnb-"))),
        )  # fmt: skip
        out["failures"] += b.errors + (a.errors if a else [])
        if out["failures"] or out["dead"] or out["jobs_left"]:
            out["evidence"] = run.log_evidence()
        return out
    except BaseException:
        step.abort()  # the other deployment need not wait for this one at either barrier
        raise
    finally:
        sampling.set()
        with contextlib.suppress(threading.BrokenBarrierError):
            step.end.wait(timeout=300)  # the other deployment has measured too
        run.close()


def _ratio_interval(
    with_a: list[float], alone: list[float], rounds: int = 2000
) -> tuple[float, float]:
    """A 90% bootstrap interval of p95(with A) / p95(alone): how far this run's
    samples alone could move the ratio. Seeded, so one run's numbers give one interval."""
    rng = random.Random(0)
    ratios = sorted(
        _p(rng.choices(with_a, k=len(with_a)), 0.95) / _p(rng.choices(alone, k=len(alone)), 0.95)
        for _ in range(rounds)
    )
    return ratios[int(0.05 * rounds)], ratios[int(0.95 * rounds)]


def noisy_neighbour(calls: int, quick: bool, keep: bool) -> Result:
    """Account A: a 401 storm, then a 429 storm, while account B runs at its full 200/minute.

    Two deployments side by side, each with its own Redis, simulator, edge
    and two workers: in one, account B alone; in the other, account B while
    account A (also posting at 200/minute) goes through the storms. What
    differs between the two is only what one deployment shares between
    accounts: its workers, queue, pump and Redis.

    How B's latency is compared, like with like:

    - Both deployments start, then wait for each other; B's call ``n`` leaves
      both at the same instant (``t0 + n * 0.3 s``), so a hiccup of this shared
      machine hits both samples at once, and both post exactly as many calls.
    - The first NEIGHBOUR_WARMUP seconds of B (17 calls) are a warm-up in both
      and measured in neither; A starts only after them, so every second of
      A's storms, and the 15 s after them, is inside the measured window.
    - End to end: callback posted -> record at B's webhook sink, both read on
      this process's clock. Measured calls: 183 with --quick, 350 without.
    - Neither deployment is torn down until both have finished measuring.

    B's p95 next to A must stay within 10% of its p95 alone (the ratio as
    measured; the 90% bootstrap interval printed beside it says how much of
    a difference this many calls can show by chance, and is not used to
    pass), with no B job ever parked and no call of either account lost or
    doubled. The row's line carries the numbers whether it passes or fails.
    """
    storms = (20.0, 20.0) if quick else (45.0, 45.0)
    span = sum(storms) + 15.0
    result = Result("noisy-neighbour", sinks=2)
    runs: dict[str, dict[str, Any]] = {}
    step = _Lockstep()

    def one(name: str, with_a: bool) -> None:
        try:
            runs[name] = _neighbour_run(name, keep, storms if with_a else None, span, step)
        except threading.BrokenBarrierError:
            runs[name] = {"error": "stopped: the other deployment failed (see its error)"}
        except Exception as err:  # reported as the row's failure below
            step.abort()
            runs[name] = {"error": f"{type(err).__name__}: {err}"}

    threads = [threading.Thread(target=one, args=("noisy-alone", False), daemon=True),
               threading.Thread(target=one, args=("noisy-both", True), daemon=True)]  # fmt: skip
    for thread in threads:
        thread.start()
        time.sleep(1.0)  # free ports are picked one deployment at a time
    for thread in threads:
        thread.join()
    run_cleanups()
    alone, both = (
        runs.get("noisy-alone", {"error": "no result"}),
        runs.get("noisy-both", {"error": "no result"}),
    )
    ms = lambda v: f"{v * 1000:.0f}"  # noqa: E731
    e2e_both = list(both.get("e2e", {}).values())
    e2e_alone = list(alone.get("e2e", {}).values())
    ratio = float("nan")
    if e2e_both and e2e_alone:
        p95_both, p95_alone = _p(e2e_both, 0.95), _p(e2e_alone, 0.95)
        ratio = p95_both / p95_alone
        low, high = _ratio_interval(e2e_both, e2e_alone)
        result.notes.append(
            f"B p95 {ms(p95_both)} ms with A vs {ms(p95_alone)} ms alone (x{ratio:.2f}; "
            f"90% interval x{low:.2f}-x{high:.2f} over {len(e2e_both)} and {len(e2e_alone)} "
            f"calls); p50 {ms(_p(e2e_both, 0.5))} vs {ms(_p(e2e_alone, 0.5))} ms"
        )
        warm = [
            "/".join(ms(w) for w in run.get("warmup", [])[:3]) or "none" for run in (both, alone)
        ]
        result.notes.append(f"warm-up's slowest (not measured) {warm[0]} vs {warm[1]} ms")
    else:
        for name, run in (("with A", both), ("alone", alone)):
            values = list(run.get("e2e", {}).values())
            shown = f"p95 {ms(_p(values, 0.95))} ms" if values else "no numbers"
            result.notes.append(f"B {name}: {shown}")
    if "b_sent" in both:
        result.notes.append(f"B {both['b_sent']} calls, A {both['a_sent']}; A's Exotel answers "
                            f"{both.get('a_statuses')}; B's {both['b_statuses']}")  # fmt: skip
    for name, run in (("noisy-alone", alone), ("noisy-both", both)):
        if "error" in run:
            result.failures.append(f"{name}: {run['error']}")
    result.sent = both.get("b_sent", 0) + both.get("a_sent", 0)
    result.delivered = result.sent - both.get("lost", 0)
    result.lost = both.get("lost", 0) + alone.get("lost", 0)
    result.duplicates = both.get("dup", 0) + alone.get("dup", 0)
    result.dead = both.get("dead", 0) + alone.get("dead", 0)
    result.drain = both.get("span")
    if ratio > 1.10:
        result.failures.append(f"B's p95 rose {ratio:.2f}x with A's storms (limit 1.10x)")
        result.evidence += ["slowest B calls with A:", *both["slowest"]]
        result.evidence += ["slowest B calls alone:", *alone["slowest"]]
        result.evidence.append(f"broker queue peaks with A: {both['queue']}")
        result.evidence.append(f"broker queue peaks alone: {alone['queue']}")
    if both.get("parked_b") or both.get("b_circuit"):
        result.failures.append(f"{both['parked_b']} B job(s) parked; B circuit opened: "
                               f"{both['b_circuit']}")  # fmt: skip
    if set(both.get("b_statuses", {200: 0})) - {200}:
        result.failures.append(f"B's Exotel answers were not all 200: {both['b_statuses']}")
    for run in (alone, both):
        result.failures += run.get("failures", [])
        if run.get("jobs_left"):
            result.failures.append(f"{run['jobs_left']} job(s) left in the book")
        result.evidence += run.get("evidence", [])
    return result


# ------------------------------------------------- durable promises (issue 8)
def _cli(
    run: Run, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run one ``exolegs`` command against the scenario's Redis, as an operator would."""
    return subprocess.run(
        [sys.executable, "-m", "worker.cli", *args],
        env={**os.environ, **run.env, **(env or {})},
        cwd=run.dir,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _unique_webhook_ids(run: Run, result: Result) -> None:
    """Each call's webhook carried one webhook-id, and the receiver saw each id once."""
    assert run.receiver is not None
    ids = Counter(mid for _, _, mid in run.receiver.ok)
    repeated = [mid for mid, n in ids.items() if n > 1]
    if repeated:
        result.failures.append(f"{len(repeated)} webhook-id(s) received twice: {repeated[:3]}")


def slow_sink(calls: int, quick: bool, keep: bool) -> Result:
    """A healthy webhook that answers 200 after 4 s, beside the JSONL sinks (lease 10 s).

    Each webhook-id must reach it once, and the JSONL sinks must not wait for
    it: every call in both of them within 60 s.
    """
    run = Run("slow-sink", calls, keep=keep, webhook=True)
    result = Result("slow-sink")
    assert run.receiver is not None
    run.receiver.delay = 4.0
    try:
        run.start_web()
        run.start_worker()
        run.start_worker()
        run.post(run.sids)
        jsonl = run.wait_drained(120, sinks=["jsonl", "b"])
        log(f"JSONL sinks drained in {jsonl or 0:.1f}s beside a 4 s webhook")
        if jsonl is None or jsonl > 60:
            result.failures.append(
                f"the JSONL sinks waited for the slow webhook: "
                f"{'not drained in 120' if jsonl is None else round(jsonl, 1)}s (limit 60s)"
            )
        else:
            result.notes.append(f"jsonl drained in {jsonl:.1f}s")
        run.finish(result, 60 + calls * 4.0)
        _unique_webhook_ids(run, result)
        return result
    finally:
        run.close()


RETENTION_HOURS = 0.01  # 36 s, so an outage can outlast it in a minute


def past_retention(calls: int, quick: bool, keep: bool) -> Result:
    """A CRM down for longer than RETENTION_HOURS (36 s here), then `exolegs dead replay --all`.

    Half its refusals are permanent (422: dead letters, replayed after the
    window), half are 503 (the sink's circuit opens and they park, probing
    every 5 s). The JSONL sinks must never repeat a call, the webhook must get
    each once, and every record must keep the callback's status and fields.
    """
    outage = 60.0
    run = Run(
        "past-retention",
        calls,
        keep=keep,
        webhook=True,
        env={
            "RETENTION_HOURS": f"{RETENTION_HOURS:g}",
            "RECONCILE": "off",  # its lookback may not reach past the retention
            "RETRY_MAX_ATTEMPTS": "1000",
            "CIRCUIT_PROBE_SECONDS": "5",
        },
    )
    result = Result("past-retention")
    receiver = run.receiver
    assert receiver is not None
    receiver.permanent = set(run.sids[1::2])
    try:
        run.start_web()
        run.start_worker()
        run.start_worker()
        receiver.down_until = time.time() + outage
        # The 422s first, so all of them are dead letters before the 503s open the circuit.
        run.post(sorted(receiver.permanent))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and run.dead_letters() < len(receiver.permanent):
            time.sleep(0.2)
        run.post(sorted(set(run.sids) - receiver.permanent))
        time.sleep(max(0.0, receiver.down_until - time.time()))
        dead = run.dead_letters()
        log(f"webhook back after {outage:.0f}s; {dead} dead letter(s)")
        result.notes.append(f"outage {outage:.0f}s > retention {RETENTION_HOURS * 3600:.0f}s")
        parked = set(run.sids) - receiver.permanent
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not parked <= set(receiver.counts()):
            time.sleep(0.5)
        dead_sids = [j.decode().split(":")[1] for j in run.redis.zrange("exolegs:dead", 0, 4)]
        held = [int(run.redis.ttl(f"exolegs:ledger:{sid}")) for sid in dead_sids]
        if any(t != -1 for t in held):
            result.failures.append(f"ledgers of dead-lettered calls expire: TTLs {held}")
        time.sleep(max(0.0, run.t0 + 2 * RETENTION_HOURS * 3600 - time.time()))
        replay = _cli(run, "dead", "replay", "--all")
        log(f"exolegs dead replay --all: {replay.stdout.strip()} (exit {replay.returncode})")
        result.notes.append(f"replayed {dead} dead letter(s)")
        if replay.returncode != 0 or dead != len(receiver.permanent):
            result.failures.append(
                f"{dead} dead letters (expected {len(receiver.permanent)}); replay exited "
                f"{replay.returncode}: {replay.stdout.strip()} {replay.stderr.strip()[-300:]}"
            )
        run.finish(result, 120)
        lost_fields = [
            sid
            for sid, rec in receiver.records.items()
            if rec.get("status") != "completed" or not rec.get("callback")
        ]
        if lost_fields:
            result.failures.append(
                f"{len(lost_fields)} record(s) lost their callback fields, e.g. {lost_fields[:3]}"
            )
        _unique_webhook_ids(run, result)
        return result
    finally:
        run.close()


def _skew(name: str, offset: str, calls: int, keep: bool) -> Result:
    """One of two workers runs with its clock ``offset`` (libfaketime); retries must still wait."""
    from libfaketime import get_reload_information

    _, preload = get_reload_information()
    run = Run(name, calls, keep=keep, sim=SimulatorConfig(latency_ms=20))
    result = Result(name)
    throttled, flaky = run.sids[::10], run.sids[5::10]
    try:
        for sid in throttled:
            run.sim_control("script", {"call_sid": sid, "responses": [
                {"status": 429, "code": 10724, "retry_after": 3}]})  # fmt: skip
        for sid in flaky:
            run.sim_control("script", {"call_sid": sid, "responses": [
                {"status": 500, "code": 10715}, {"status": 500, "code": 10715}]})  # fmt: skip
        run.start_web()
        run.start_worker()
        skewed = run.start_worker(env={**preload, "FAKETIME": offset})
        run.post(run.sids)
        run.finish(result, 240)
        seen = skewed.output()
        result.notes.append(f"worker2 clock {offset}")
        if "exolegs.tasks" not in seen:
            result.failures.append("the skewed worker did no work")
        early, late = [], []
        for sid in throttled + flaky:
            times = sorted(e[0] for e in run.exotel_requests() if e[1] == sid)
            gaps = [b - a for a, b in itertools.pairwise(times)]
            if sid in throttled and gaps and gaps[0] < 3.0 - 0.05:
                early.append((sid, round(gaps[0], 2)))
            # Waiting the skew would be a 60 s gap. Each of the 10 throttled calls
            # blocks every fetch for its Retry-After (3 s), and a retry books its
            # rate-limit slot behind the calls already waiting: up to about 35 s here.
            if gaps and max(gaps) > 45:
                late.append((sid, round(max(gaps), 1)))
        if early:
            result.failures.append(f"Retry-After 3s not honoured: {early[:4]}")
        if late:
            result.failures.append(f"retries waited the skew: {late[:4]}")
        expected = calls + len(throttled) + 2 * len(flaky)
        made = len(run.exotel_requests())
        if made > expected + 5:
            result.failures.append(f"{made} Exotel requests, not about {expected}: retries spun")
        return result
    finally:
        run.close()


def skew_ahead(calls: int, quick: bool, keep: bool) -> Result:
    """One of two workers' clock 60 s ahead; every 10th call 429 (Retry-After 3), others 500s."""
    return _skew("skew-ahead", "+60s", calls, keep)


def skew_behind(calls: int, quick: bool, keep: bool) -> Result:
    """One of two workers' clock 60 s behind; the same 429s and 500s."""
    return _skew("skew-behind", "-60s", calls, keep)


def evicting_redis(calls: int, quick: bool, keep: bool) -> Result:
    """Redis set to allkeys-lru: refused and reported; fixed; a switch mid-run is reported."""
    run = Run("evicting-redis", calls, keep=keep)
    result = Result("evicting-redis")
    try:
        run.redis.config_set("maxmemory-policy", "allkeys-lru")
        check = _cli(run, "check")
        if check.returncode != 1 or "problem: maxmemory-policy: is allkeys-lru" not in check.stdout:
            result.failures.append(f"check exited {check.returncode}: {check.stdout[-300:]}")
        if "heroku redis:maxmemory" not in check.stdout:
            result.failures.append("exolegs check does not say how to fix it on Heroku")
        refused = subprocess.run(
            [sys.executable, "-m", "worker.cli", "worker", "--concurrency", "1"],
            env={**os.environ, **run.env}, cwd=run.dir, capture_output=True, text=True,
            timeout=60, check=False,
        )  # fmt: skip
        line = refused.stderr.strip().splitlines()[-1:] or [""]
        if refused.returncode != 2 or not line[0].startswith("exolegs: maxmemory-policy:"):
            result.failures.append(f"worker on an evicting Redis: {refused.returncode} {line}")
        run.start_web()
        status, body = run.readyz()
        safety = body.get("redis_safety") or {}
        if body.get("status") != "degraded" or safety.get("maxmemory_policy") != "allkeys-lru":
            result.failures.append(f"/readyz on an evicting Redis: {status} {body}")
        result.notes.append("check exit 1, worker refused, readyz degraded")
        run.redis.config_set("maxmemory-policy", "noeviction")
        run.start_worker()
        run.start_worker()
        run.post(run.sids)
        run.redis.config_set("maxmemory-policy", "volatile-lru")  # a plan change mid-run
        shouted = None
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline and shouted is None:
            for w in run.workers:
                if "CRITICAL" in w.output() and "maxmemory-policy: is volatile-lru" in w.output():
                    shouted = w.name
            time.sleep(0.5)
        run.redis.config_set("maxmemory-policy", "noeviction")
        if shouted is None:
            result.failures.append("no running worker reported the switch to volatile-lru")
        else:
            result.notes.append("switch mid-run reported")
        run.finish(result, 120)
        run.one_fetch_each(result)
        return result
    finally:
        run.close()


POISON = {
    "0000000001.000000-truncated.json": b'{"CallSid": "half-writ',
    "0000000002.000000-a-list.json": b'["not", "an", "object"]',
    "0000000003.000000-no-sid.json": b'{"Status": "completed"}',
}


def spool_poison(calls: int, quick: bool, keep: bool) -> Result:
    """Redis down: callbacks spooled, 3 unparseable files added, all 10 min old; two drainers."""
    run = Run("spool-poison", calls, keep=keep, env={"WEB_CONCURRENCY": "2"})
    result = Result("spool-poison")
    spool = run.dir / "spool"
    try:
        run.start_web()
        run.start_worker()
        run.start_worker()
        run.redis_server.stop()
        answers = run.post(run.sids)
        spooled = sum(1 for a in answers if a.get("spooled"))
        for name, data in POISON.items():
            (spool / name).write_bytes(data)
        old = time.time() - 600  # spooled during a long outage
        for path in spool.glob("*.json"):
            os.utime(path, (old, old))
        run.redis_server.start()
        log(f"{spooled} spooled + {len(POISON)} poisoned; Redis back, two drainers at it")
        run.finish(result, 120)
        run.one_fetch_each(result)
        assert run.web is not None
        web = run.web.output()
        bad = sorted(p.name for p in spool.glob("*.bad"))
        left = [p.name for p in spool.iterdir() if not p.name.endswith(".bad")]
        moved = sum(int(n) for n in re.findall(r"moved (\d+) spooled callback", web))
        result.notes.append(f"{spooled} spooled, {len(bad)} set aside, {moved} moved")
        if spooled != calls:
            result.failures.append(f"only {spooled}/{calls} callbacks spooled")
        if bad != sorted(f"{n}.bad" for n in POISON) or left:
            result.failures.append(f"spool after the drain: bad {bad}, left {left}")
        named = [n for n in POISON if re.search(rf"ERROR .*{re.escape(n)}", web)]
        if len(named) != len(POISON):
            result.failures.append(f"ERROR lines name {len(named)}/{len(POISON)} poisoned files")
        if moved != calls:
            result.failures.append(f"{moved} files accepted for {calls} callbacks (twice?)")
        if "Traceback" in web or not run.web.alive:
            result.failures.append("a drainer crashed")
            result.evidence.append(web[web.find("Traceback") :][:600])
        return result
    finally:
        run.close()


def deploy_add_sink(calls: int, quick: bool, keep: bool) -> Result:
    """Rolling deploy adding sink c: old workers (a, b) beside new (a, b, c), replaced mid-batch."""
    run = Run("deploy-add-sink", calls, keep=keep, sim=SimulatorConfig(latency_ms=20))
    result = Result("deploy-add-sink")
    run.jsonl["c"] = run.dir / "calls-c.jsonl"
    new = {"SINKS": f"{run.env['SINKS']},jsonl://{run.jsonl['c']}?name=c"}
    try:
        _slow_answers(run)
        run.start_web()
        old = [run.start_worker(), run.start_worker()]
        run.start_worker(env=new)

        def paced() -> None:  # 10 calls a second, so the deploy happens mid-batch
            for start in range(0, len(run.sids), 10):
                run.post(run.sids[start : start + 10])
                time.sleep(1.0)

        poster = threading.Thread(target=paced, daemon=True)
        poster.start()
        for victim in old:
            time.sleep(len(run.sids) / 30)
            victim.signal_group(signal.SIGTERM)
            if not victim.wait(30):
                victim.kill()
            run.start_worker(env=new)
            log(f"replaced {victim.name} at {run.delivered()}/{len(run.sids)} delivered")
        poster.join()
        run.finish(result, 180)
        handed = sum(w.output().count("'deferred'") for w in old)
        result.notes.append(f"old workers handed back {handed} task(s)")
        return result
    finally:
        run.close()


# ------------------------------------------------------ calls without callbacks or legs
def _place(run: Run, drop: float, seed: int) -> tuple[float, set[str]]:
    """The simulator places run.sids as just ended and POSTs their callbacks, less ``drop``."""
    ended = time.time()
    run.t0 = run.t0 or ended
    answer = requests.post(
        f"{run.sim_url}/_sim/calls",
        json={
            "sids": run.sids,
            "callback_url": f"{run.edge}/exotel/callback/{TOKEN}",
            "drop": drop,
            "seed": seed,
        },
        timeout=300,
    )
    answer.raise_for_status()
    return ended, set(answer.json()["dropped"])


def _first_seen(run: Run, stop: threading.Event) -> dict[tuple[str, str], float]:
    """Poll the sinks once a second: when each (sink, call) first appeared."""
    seen: dict[tuple[str, str], float] = {}

    def poll() -> None:
        while not stop.wait(1.0):
            now = time.time()
            for sink, counts in run.sink_counts().items():
                for sid in counts:
                    seen.setdefault((sink, sid), now)

    threading.Thread(target=poll, daemon=True, name="first-seen").start()
    return seen


def jsonl_records(path: Path) -> list[dict[str, Any]]:
    """The complete records of a JSONL file a sink may be appending to right now.

    A last line without its newline is still being written: it is read on
    the next look, not parsed half-written.
    """
    if not path.exists():
        return []
    *complete, _ = path.read_text().split("\n")
    return [json.loads(line) for line in complete if line.strip()]


def _sources(run: Run) -> dict[str, Counter[str]]:
    """Per sink: how many records of ours say each (source, legs)."""
    out: dict[str, Counter[str]] = {}
    for name, path in run.jsonl.items():
        counts: Counter[str] = Counter()
        for record in jsonl_records(path):
            if record.get("call_sid") in run.sid_set:
                counts[f"{record.get('source')}/{record.get('legs')}/{record['call_sid']}"] += 1
        out[name] = counts
    return out


def callbacks_lost(calls: int, quick: bool, keep: bool) -> Result:
    """The simulator drops 30% of 300 callbacks: the sweeper brings every call within 8 minutes."""
    every = "60s" if quick else "5m"  # the default tier in the full run
    run = Run(
        "callbacks-lost",
        max(300, calls),
        keep=keep,
        env={"RECONCILE_RECENT_EVERY": every, "FETCH_DELAY_SECONDS": "30"},
    )
    result = Result("callbacks-lost")
    stop = threading.Event()
    try:
        run.start_web()
        run.start_worker()
        run.start_worker()
        seen = _first_seen(run, stop)
        ended, dropped = _place(run, 0.3, seed=30)
        result.notes.append(f"{len(dropped)} callbacks dropped, RECONCILE_RECENT_EVERY={every}")
        run.finish(result, 600)
        stop.set()
        late = [(sink, sid, t - ended) for (sink, sid), t in seen.items() if sid in run.sid_set]
        worst = max((d for _, _, d in late), default=0.0)
        result.notes.append(f"slowest call to a sink {worst / 60:.1f} min after it ended")
        if worst > 480:
            slow = sorted(late, key=lambda x: -x[2])[:3]
            result.failures.append(f"calls reached a sink over 8 minutes after their end: {slow}")
        for sink, counts in _sources(run).items():
            wrong = []
            for key in counts:
                source, legs, sid = key.split("/", 2)
                want = "reconcile" if sid in dropped else "callback"
                if source != want or legs != "fetched":
                    wrong.append(key)
            if wrong:
                result.failures.append(f"sink {sink}: wrong source or legs, e.g. {wrong[:3]}")
        return result
    finally:
        stop.set()
        run.close()


def legs_never_ready(calls: int, quick: bool, keep: bool) -> Result:
    """Exotel never has the legs (10743 throughout): records from the callback, none dead."""
    run = Run(
        "legs-never-ready",
        calls,
        keep=keep,
        sim=SimulatorConfig(legs_ready_after=10**9),
        env={"RETRY_MAX_ATTEMPTS": "4"},
    )
    result = Result("legs-never-ready")
    try:
        run.start_web()
        run.start_worker()
        _place(run, 0.0, seed=1)
        run.finish(result, 180)
        for sink, counts in _sources(run).items():
            wrong = [k for k in counts if not k.startswith("callback/unavailable/")]
            if wrong:
                result.failures.append(f"sink {sink}: not legs: unavailable, e.g. {wrong[:3]}")
        not_ready = sum(1 for e in run.exotel_requests() if e[2] == 500)
        result.notes.append(f"{not_ready} answers 500/10743")
        return result
    finally:
        run.close()


SCENARIOS: dict[str, Callable[[int, bool, bool], Result]] = {
    "baseline": baseline,
    "kill9": kill9,
    "sigterm": sigterm,
    "sigterm-plain": sigterm_plain,
    "redis-restart": redis_restart,
    "redis-crash": redis_crash,
    "edge-outage": edge_outage,
    "401-storm": storm_401,
    "429-storm": storm_429,
    "sink-down": sink_down,
    "sink-hang": sink_hang,
    "slow-exotel": slow_exotel,
    "noisy-neighbour": noisy_neighbour,
    "slow-sink": slow_sink,
    "past-retention": past_retention,
    "skew-ahead": skew_ahead,
    "skew-behind": skew_behind,
    "evicting-redis": evicting_redis,
    "spool-poison": spool_poison,
    "deploy-add-sink": deploy_add_sink,
    "callbacks-lost": callbacks_lost,
    "legs-never-ready": legs_never_ready,
}


# --------------------------------------------------------------------- main
def table(results: list[Result]) -> str:
    head = f"{'scenario':14} {'sent':>5} {'delivered':>9} {'lost':>5} {'dup':>4} " \
           f"{'dead':>4} {'drain s':>8}  {'result':6} notes"  # fmt: skip
    rows = [head, "-" * len(head)]
    for r in results:
        drain = f"{r.drain:.1f}" if r.drain is not None else "timeout"
        rows.append(
            f"{r.name:14} {r.sent:>5} {r.delivered:>5}x{r.sinks:<3} {r.lost:>5} "
            f"{r.duplicates:>4} {r.dead:>4} {drain:>8}  {'ok' if r.ok else 'FAIL':6} "
            + "; ".join(r.notes)
        )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--only", help="comma-separated scenario names: " + ", ".join(SCENARIOS))
    p.add_argument("--calls", type=int, default=100, help="callbacks per scenario (default 100)")
    p.add_argument("--quick", action="store_true", help="30 s sink outage, shorter storms")
    p.add_argument("--keep", action="store_true", help="keep temp dirs and logs")
    args = p.parse_args(argv)
    names = [n.strip() for n in args.only.split(",")] if args.only else list(SCENARIOS)
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        p.error(f"unknown scenario(s) {unknown}; choose from {', '.join(SCENARIOS)}")
    # Explicitly: a shell starts background jobs with SIGINT ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGHUP, _terminate)
    results: list[Result] = []
    started = time.time()
    try:
        for name in names:
            print(f"== {name}: {SCENARIOS[name].__doc__}", file=sys.stderr, flush=True)
            t = time.time()
            try:
                result = SCENARIOS[name](args.calls, args.quick, args.keep)
            except (RuntimeError, AssertionError, requests.RequestException) as err:
                result = Result(name, sent=args.calls, failures=[f"scenario error: {err}"])
            finally:
                run_cleanups()
            results.append(result)
            log(f"{name}: {'ok' if result.ok else 'FAIL'} in {time.time() - t:.0f}s")
            for line in result.failures + result.evidence:
                log(f"  {line}")
    except KeyboardInterrupt:
        STOPPING.set()
        print("\ninterrupted; cleaning up", file=sys.stderr)
        run_cleanups()
        if results:
            print(table(results))
        return 130
    finally:
        run_cleanups()
    print()
    print(table(results))
    failed = [r for r in results if not r.ok]
    for r in failed:
        print(f"\n{r.name} FAILED:")
        for line in r.failures + r.evidence:
            print(f"  {line}")
    print(
        f"\n{len(results) - len(failed)}/{len(results)} scenarios ok in "
        f"{time.time() - started:.0f}s (calls {args.calls}, {'quick' if args.quick else 'full'}, "
        f"JOB_LEASE_SECONDS={LEASE:g}, visibility timeout {VISIBILITY_TIMEOUT}s)"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
