"""The fault suite's fast rows (bench/faults.py has them all, at scale): real processes.

Each ends with every call at every sink exactly once, counted at the receiver.
The slow-sink and clock-skew rows are in test_job_book.py.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import redis
import requests

from tests.conftest import CALLBACK_TOKEN
from tests.support.processes import (
    ROOT,
    Proc,
    Simulator,
    read_jsonl,
    start_web,
    start_worker,
    wait_for,
)
from tests.support.redis_server import RedisServer, free_port, start_redis
from worker import keys
from worker.calls.callbacks import event_from_fields
from worker.jobs.deadletters import DEAD
from worker.runtime import Runtime
from worker.settings import Settings


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    server = start_redis()
    yield server
    server.stop()


class Receiver:
    """A webhook endpoint: 200 after ``delay`` s; while ``down_until``, 422 for
    ``permanent`` calls and 503 for the rest."""

    def __init__(self) -> None:
        self.secret = "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()
        self.delay = 0.0
        self.down_until = 0.0
        self.permanent: set[str] = set()
        self.got: list[tuple[str, str, dict[str, Any]]] = []  # (call sid, webhook-id, record)
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                return None

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                record = body["data"]
                if time.time() < receiver.down_until:
                    status = 422 if record["call_sid"] in receiver.permanent else 503
                    self.send_response(status)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                time.sleep(receiver.delay)
                with receiver.lock:
                    receiver.got.append(
                        (record["call_sid"], self.headers.get("webhook-id", ""), record)
                    )
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"webhook+http://127.0.0.1:{self.server.server_address[1]}/hook?secret={self.secret}"

    def counts(self) -> Counter[str]:
        with self.lock:
            return Counter(sid for sid, _, _ in self.got)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.server.shutdown()
    r.server.server_close()


def book(env: dict[str, str], sids: list[str]) -> None:
    rt = Runtime(Settings.from_env(env, dotenv=False))
    for sid in sids:
        rt.intake.accept(event_from_fields({"CallSid": sid, "Status": "completed"}))
    rt.close()


def once_each(counts: Counter[str], sids: list[str]) -> bool:
    return all(counts[s] == 1 for s in sids) and set(counts) == set(sids)


def jsonl_counts(path: Path) -> Counter[str]:
    return Counter(str(r["call_sid"]) for r in read_jsonl(path))


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "worker.cli", *args],
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **env},
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        check=False,
    )


# ---------------------------------------------------------------- rows
def test_a_worker_refuses_an_evicting_redis_and_check_says_how_to_fix_it(
    own_redis: RedisServer, pipeline_env: dict[str, str]
) -> None:
    own_redis.client().config_set("maxmemory-policy", "volatile-lru")
    env = {**pipeline_env, "REDIS_URL": own_redis.url}
    result = subprocess.run(
        [sys.executable, "-m", "worker.cli", "worker", "--concurrency", "1"],
        env={"PATH": "/usr/bin:/bin", **env},
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        check=False,
    )
    assert result.returncode == 2, result.stdout + result.stderr
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("exolegs: maxmemory-policy: is volatile-lru")
    assert "noeviction" in line
    check = cli(env, "check")
    assert check.returncode == 1
    assert "heroku redis:maxmemory <addon> --policy noeviction" in check.stdout


def test_a_crm_down_longer_than_retention_gets_each_call_once_after_a_replay(
    pipeline_env: dict[str, str],
    receiver: Receiver,
    jsonl_path: Path,
    tmp_path: Path,
    redis_client: redis.Redis,
) -> None:
    retention = 36.0  # the least RETENTION_HOURS allows
    pipeline_env.update(
        SINKS=f"{pipeline_env['SINKS']} {receiver.url}",
        RETENTION_HOURS=f"{retention / 3600:g}",
        RECONCILE="off",  # its lookback may not reach past the retention
        RETRY_MAX_ATTEMPTS="1000",
        CIRCUIT_PROBE_SECONDS="2",
    )
    sids = [f"ret{n}" for n in range(10)]
    receiver.permanent = set(sids[::2])  # dead letters; the others park behind the circuit
    receiver.down_until = time.time() + retention + 10
    worker = start_worker(pipeline_env, tmp_path / "w.log")
    try:
        book(pipeline_env, sorted(receiver.permanent))  # 422s: dead letters at once
        wait_for(lambda: redis_client.zcard(DEAD) == 5, timeout=20)
        book(pipeline_env, sorted(set(sids) - receiver.permanent))  # 503s: the circuit opens
        wait_for(lambda: once_each(jsonl_counts(jsonl_path), sids), timeout=30)
        assert all(redis_client.ttl(keys.ledger(s)) == -1 for s in receiver.permanent)
        time.sleep(max(0.0, receiver.down_until - time.time()))
        parked = set(sids) - receiver.permanent
        wait_for(lambda: parked <= set(receiver.counts()), timeout=30)
        replay = cli(pipeline_env, "dead", "replay", "--all")
        assert replay.returncode == 0 and "replayed 5 dead letter(s)" in replay.stdout, replay
        wait_for(lambda: set(receiver.counts()) == set(sids), timeout=30)
        time.sleep(3)
    finally:
        worker.stop()
    assert once_each(receiver.counts(), sids)
    assert once_each(jsonl_counts(jsonl_path), sids)  # the JSONL sink never repeated
    for _, _, record in receiver.got:
        assert record["status"] == "completed" and record["callback"]["CallSid"]


def test_a_poisoned_spool_drains_around_the_bad_files_with_two_drainers(
    own_redis: RedisServer, pipeline_env: dict[str, str], tmp_path: Path
) -> None:
    env = {**pipeline_env, "REDIS_URL": own_redis.url, "WEB_CONCURRENCY": "2"}
    spool = Path(env["SPOOL_DIR"])
    port = free_port()
    web = start_web(env, tmp_path / "web.log", port)
    sids = [f"sp{n}" for n in range(20)]
    try:
        own_redis.stop()
        url = f"http://127.0.0.1:{port}/exotel/callback/{CALLBACK_TOKEN}"
        for sid in sids:
            answer = requests.post(url, data={"CallSid": sid, "Status": "completed"}, timeout=10)
            assert answer.json()["spooled"] is True
        poison = {"1.000000-truncated.json": b'{"CallSid": "ha', "2.000000-list.json": b"[1]"}
        for name, data in poison.items():
            (spool / name).write_bytes(data)
        for path in spool.glob("*.json"):
            os.utime(path, (time.time() - 600, time.time() - 600))  # a long outage
        own_redis.start()
        client = own_redis.client()
        wait_for(lambda: all(client.exists(keys.call(s)) for s in sids), timeout=30)
        wait_for(lambda: sorted(p.name for p in spool.iterdir()) == sorted(
            f"{n}.bad" for n in poison), timeout=10)  # fmt: skip
    finally:
        web.stop()
    log = web.output()
    for name in poison:
        assert any("ERROR" in line and name in line for line in log.splitlines()), name
    moved = sum(int(line.split("moved ")[1].split()[0]) for line in log.splitlines()
                if "moved " in line and "spooled callback" in line)  # fmt: skip
    assert moved == len(sids)  # none accepted twice
    assert "Traceback" not in log


def test_a_rolling_deploy_that_adds_a_sink_delivers_to_it_and_loses_nothing(
    pipeline_env: dict[str, str], jsonl_path: Path, tmp_path: Path, simulator: Simulator
) -> None:
    new_sink = tmp_path / "crm.jsonl"
    new_env = {**pipeline_env, "SINKS": f"{pipeline_env['SINKS']} jsonl://{new_sink}?name=crm"}
    sids = [f"dep{n}" for n in range(30)]
    for sid in sids[::3]:
        simulator.script(sid, [{"status": 200, "delay": 0.3}])
    old = start_worker(pipeline_env, tmp_path / "old.log")
    new: Proc | None = None
    try:
        new = start_worker(new_env, tmp_path / "new.log", concurrency=1)
        book(pipeline_env, sids)
        wait_for(lambda: once_each(jsonl_counts(jsonl_path), sids), timeout=60)
        wait_for(lambda: once_each(jsonl_counts(new_sink), sids), timeout=60)
        time.sleep(2)
    finally:
        old.stop()
        if new is not None:
            new.stop()
    assert once_each(jsonl_counts(jsonl_path), sids)
    assert once_each(jsonl_counts(new_sink), sids)
    dead = cli(pipeline_env, "dead", "list")
    assert dead.stdout.strip() == "no dead letters"
