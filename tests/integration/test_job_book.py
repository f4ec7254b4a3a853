"""The job book with real worker processes: a slow sink, a skewed clock.

Counted at the receiver: each call reaches each sink exactly once.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import threading
import time
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import libfaketime
import pytest

from tests.integration.test_reliability import book, counts
from tests.support.processes import Proc, Simulator, start_worker, wait_for
from worker.jobs.deadletters import DEAD
from worker.runtime import Runtime
from worker.settings import Settings


class SlowReceiver:
    """A healthy webhook endpoint that takes ``delay`` seconds to answer 200."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.ids: Counter[str] = Counter()
        self.calls: Counter[str] = Counter()
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                return None

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                time.sleep(receiver.delay)
                with receiver.lock:
                    receiver.ids[self.headers.get("webhook-id", "")] += 1
                    receiver.calls[json.loads(body)["data"]["call_sid"]] += 1
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def received(self) -> int:
        with self.lock:
            return len(self.calls)

    def close(self) -> None:
        self.server.shutdown()


@pytest.fixture
def receiver() -> Iterator[SlowReceiver]:
    r = SlowReceiver(delay=1.5)
    yield r
    r.close()


def test_a_slow_but_healthy_sink_gets_each_call_once_and_holds_up_nobody(
    pipeline_env: dict[str, str], receiver: SlowReceiver, tmp_path: Path
) -> None:
    """A webhook that takes 1.5 s per call (a third of the lease), beside JSONL.

    Each webhook-id arrives once, and the JSONL sink has every call while the
    webhook still has most of its calls to go.
    """
    jsonl = tmp_path / "calls.jsonl"
    secret = "whsec_" + base64.b64encode(b"k" * 32).decode()
    pipeline_env["SINKS"] = (
        f"jsonl://{jsonl} webhook+http://127.0.0.1:{receiver.port}/hook?secret={secret}"
    )
    pipeline_env["JOB_LEASE_SECONDS"] = "4"
    settings = Settings.from_env(pipeline_env, dotenv=False)
    sids = [f"slow{n}" for n in range(24)]
    book(settings, sids)
    workers = [start_worker(pipeline_env, tmp_path / f"w{n}.log") for n in range(2)]
    try:
        wait_for(lambda: len(counts(jsonl)) == len(sids), timeout=40)
        webhook_when_jsonl_done = receiver.received()
        wait_for(lambda: receiver.received() == len(sids), timeout=50)
        time.sleep(2 * 4)  # two leases more: any duplicate would have arrived by now
    finally:
        for w in workers:
            w.stop()
    assert webhook_when_jsonl_done < len(sids) / 2, "JSONL waited for the slow webhook"
    assert set(counts(jsonl).values()) == {1}
    assert sorted(receiver.calls) == sorted(sids)
    assert set(receiver.ids.values()) == {1}, receiver.ids.most_common(3)
    assert Runtime(settings).redis.zcard(DEAD) == 0


def skewed_worker(env: dict[str, str], log: Path, offset: str) -> Proc:
    """A real `exolegs worker` whose every clock reading (not monotonic) is off by ``offset``."""
    _, extra = libfaketime.get_reload_information()
    return start_worker({**env, **extra, "FAKETIME": offset}, log)


@pytest.mark.parametrize("offset", ["-60", "+60"])
def test_a_worker_whose_clock_is_off_by_a_minute_behaves_like_one_in_sync(
    pipeline_env: dict[str, str], simulator: Simulator, tmp_path: Path, offset: str
) -> None:
    """Retries wait out Exotel's Retry-After on Redis's clock, whichever worker books them.

    Exotel answers 503 with ``Retry-After: 2`` twice, then the legs. Booked
    by the host's clock, a worker a minute behind would retry at once (a
    burst of attempts, then a dead letter) and one a minute ahead a minute
    late.
    """
    pipeline_env["RETRY_BASE_SECONDS"] = "0.5"
    pipeline_env["RETRY_MAX_ATTEMPTS"] = "4"
    pipeline_env["JOB_LEASE_SECONDS"] = "6"
    settings = Settings.from_env(pipeline_env, dotenv=False)
    jsonl = Path(settings.sinks[0].removeprefix("jsonl://"))
    sids = [f"skew{n}" for n in range(12)]
    slowed = sids[:4]
    for sid in slowed:  # two refusals, each asking for 2 s, then the legs
        simulator.script(sid, [{"status": 503, "retry_after": 2}] * 2)
    workers = [
        start_worker(pipeline_env, tmp_path / "in-sync.log"),
        skewed_worker(pipeline_env, tmp_path / "skewed.log", offset),
    ]
    try:
        book(settings, sids)
        wait_for(lambda: len(counts(jsonl)) == len(sids), timeout=45)
        time.sleep(2)
    finally:
        for w in workers:
            w.stop()
    assert set(counts(jsonl).values()) == {1}
    assert Runtime(settings).redis.zcard(DEAD) == 0
    for sid in slowed:
        asked = simulator.requests_for(sid)
        assert len(asked) == 3, (sid, asked)  # two 503s and the answer: no burst of retries
        gaps = [b - a for a, b in itertools.pairwise(asked)]
        assert min(gaps) >= 1.9, (sid, gaps)  # never before the Retry-After
        assert max(gaps) < 30, (sid, gaps)  # and not a minute late either
    assert "Traceback" not in workers[1].output()
    assert os.environ.get("FAKETIME") is None  # only the child's clock was faked
