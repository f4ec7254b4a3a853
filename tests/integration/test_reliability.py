"""Nothing accepted is ever lost: real Redis, real worker processes, the simulator."""

from __future__ import annotations

import itertools
import json
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import redis
from flask.testing import FlaskClient

from tests.conftest import CALLBACK_TOKEN
from tests.support.processes import ROOT, Proc, Simulator, read_jsonl, start_worker, wait_for
from tests.support.redis_server import RedisServer
from worker import jobs
from worker.calls.callbacks import event_from_fields
from worker.runtime import Runtime
from worker.settings import Settings

URL = f"/exotel/callback/{CALLBACK_TOKEN}"


def book(settings: Settings, sids: list[str]) -> None:
    """Accept terminal callbacks straight through the intake, as the edge would."""
    rt = Runtime(settings)
    for sid in sids:
        rt.intake.accept(event_from_fields({"CallSid": sid, "Status": "completed"}))


def counts(path: Path) -> Counter[str]:
    return Counter(str(r["call_sid"]) for r in read_jsonl(path))


def exactly_once(path: Path, sids: list[str]) -> bool:
    got = counts(path)
    return all(got[s] == 1 for s in sids) and len(got) == len(sids)


@pytest.fixture
def two_sinks(pipeline_env: dict[str, str], tmp_path: Path) -> tuple[Path, Path]:
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    pipeline_env["SINKS"] = f"jsonl://{a}?name=a jsonl://{b}?name=b"
    pipeline_env["JOB_LEASE_SECONDS"] = "6"
    return a, b


def windows(times: list[float], width: float) -> int:
    """The most requests seen in any sliding window of ``width`` seconds."""
    times = sorted(times)
    best, start = 0, 0
    for end, t in enumerate(times):
        while t - times[start] >= width:
            start += 1
        best = max(best, end - start + 1)
    return best


# ------------------------------------------------------------- rate limit
def test_rate_limit_holds_across_worker_processes(
    pipeline_env: dict[str, str], simulator: Simulator, tmp_path: Path
) -> None:
    pipeline_env["EXOTEL_RATE_LIMIT"] = "10/second"  # burst 2
    settings = Settings.from_env(pipeline_env, dotenv=False)
    sids = [f"rl{n}" for n in range(80)]
    book(settings, sids)
    workers = [start_worker(pipeline_env, tmp_path / f"w{n}.log") for n in range(2)]
    try:
        wait_for(lambda: sum(len(simulator.requests_for(s)) for s in sids) >= 80, timeout=60)
    finally:
        for w in workers:
            w.stop()
    times = sorted(t for s in sids for t in simulator.requests_for(s))
    gaps = [round(b - a, 3) for a, b in itertools.pairwise(times)]
    assert windows(times, 1.0) <= 10 + 2, f"gaps between requests: {gaps}"  # rate + burst
    steady = [t for t in times if t >= times[0] + 1.0]  # past the burst and worker start-up
    achieved = (len(steady) - 1) / (steady[-1] - steady[0])
    assert achieved >= 0.95 * 10, f"only {achieved:.2f}/s of 10/s; gaps {gaps}"


def test_429_stops_every_worker_for_retry_after(
    pipeline_env: dict[str, str], simulator: Simulator, tmp_path: Path
) -> None:
    pipeline_env["EXOTEL_RATE_LIMIT"] = "20/second"
    settings = Settings.from_env(pipeline_env, dotenv=False)
    sids = [f"blk{n}" for n in range(40)]
    simulator.script("blk0", [{"status": 429, "code": 10724, "retry_after": 2}])
    book(settings, sids)
    workers = [start_worker(pipeline_env, tmp_path / f"w{n}.log") for n in range(2)]
    try:
        wait_for(lambda: len(simulator.requests_for("blk0")) >= 2, timeout=60)
        wait_for(lambda: sum(bool(simulator.requests_for(s)) for s in sids) == 40, timeout=60)
    finally:
        for w in workers:
            w.stop()
    hit = simulator.requests_for("blk0")[0]
    others = [t for s in sids for t in simulator.requests_for(s)]
    during = [t for t in others if hit + 0.3 < t < hit + 2.0]
    assert during == [], f"{len(during)} request(s) went out during Retry-After"


# ----------------------------------------------------- delays hold nothing
def test_fetch_delay_is_kept_in_redis_not_in_a_worker(
    pipeline_env: dict[str, str], simulator: Simulator, tmp_path: Path, redis_client: redis.Redis
) -> None:
    pipeline_env["FETCH_DELAY_SECONDS"] = "4"
    settings = Settings.from_env(pipeline_env, dotenv=False)
    out = Path(settings.sinks[0].removeprefix("jsonl://"))
    worker = start_worker(pipeline_env, tmp_path / "w.log")
    try:
        book(settings, ["later1"])
        time.sleep(1.5)
        # waiting: in the job book, not as an unacknowledged Celery message
        assert redis_client.zscore(jobs.JOBS, "fetch:later1") is not None
        assert redis_client.llen("exolegs") == 0
        assert redis_client.hlen("unacked") == 0
        assert simulator.requests_for("later1") == []
        wait_for(lambda: counts(out)["later1"] == 1, timeout=20)
    finally:
        worker.stop()


# ------------------------------------------------------- crashes, restarts
@pytest.mark.parametrize("how", ["SIGKILL", "SIGTERM"])
def test_worker_killed_mid_batch_delivers_each_call_once_per_sink(
    how: str,
    pipeline_env: dict[str, str],
    two_sinks: tuple[Path, Path],
    simulator: Simulator,
    tmp_path: Path,
) -> None:
    a, b = two_sinks
    pipeline_env["EXOTEL_RATE_LIMIT"] = "25/second"
    settings = Settings.from_env(pipeline_env, dotenv=False)
    sids = [f"{how.lower()}{n}" for n in range(60)]
    book(settings, sids)
    worker = start_worker(pipeline_env, tmp_path / "w1.log", concurrency=4)
    wait_for(lambda: len(counts(a)) >= 10, timeout=60)
    if how == "SIGKILL":
        worker.kill()
    else:
        assert worker.stop(signal.SIGTERM, timeout=30) is not None
    assert len(counts(a)) < len(sids), "the batch finished before the crash; test proves nothing"
    again = start_worker(pipeline_env, tmp_path / "w2.log", concurrency=4)
    try:
        wait_for(lambda: exactly_once(a, sids) and exactly_once(b, sids), timeout=90)
        time.sleep(2)  # nothing more arrives later either
        assert exactly_once(a, sids) and exactly_once(b, sids)
    finally:
        again.stop()


# ----------------------------------------------------- each sink once
def test_failing_sink_retries_alone(
    pipeline_env: dict[str, str], simulator: Simulator, tmp_path: Path
) -> None:
    good, bad = tmp_path / "good.jsonl", tmp_path / "bad.jsonl"
    bad.mkdir()  # writing to it fails until the directory is removed
    pipeline_env["SINKS"] = f"jsonl://{good}?name=good jsonl://{bad}?name=bad"
    pipeline_env["RETRY_MAX_ATTEMPTS"] = "50"
    pipeline_env["CIRCUIT_PROBE_SECONDS"] = "2"  # 5 failures in a row park the sink
    settings = Settings.from_env(pipeline_env, dotenv=False)
    sids = [f"fs{n}" for n in range(8)]
    worker = start_worker(pipeline_env, tmp_path / "w.log")
    try:
        book(settings, sids)
        wait_for(lambda: exactly_once(good, sids), timeout=30)
        time.sleep(1)
        bad.rmdir()
        wait_for(lambda: exactly_once(bad, sids), timeout=30)
        assert exactly_once(good, sids)
        assert all(len(simulator.requests_for(s)) == 1 for s in sids)  # legs fetched once
    finally:
        worker.stop()


# --------------------------------------------------------- one fetch per call
def test_late_duplicates_never_fetch_again(
    web: FlaskClient, worker: Proc, jsonl_path: Path, simulator: Simulator
) -> None:
    terminal = {"CallSid": "late1", "Status": "completed", "EventType": "terminal"}
    assert web.post(URL, data=terminal).status_code == 200
    wait_for(lambda: counts(jsonl_path)["late1"] == 1)
    # Exotel's retry minutes later, and a Passthru for the same call
    assert web.post(URL, data=terminal).get_json()["duplicate"] is True
    passthru = web.get(URL + "?CallSid=late1&DialCallStatus=completed&CallType=completed")
    assert passthru.status_code == 200
    time.sleep(2)
    assert len(simulator.requests_for("late1")) == 1
    assert counts(jsonl_path)["late1"] == 1


# ------------------------------------------------------- Redis down at the edge
def test_redis_outage_at_the_edge_loses_nothing(
    web: FlaskClient,
    worker: Proc,
    jsonl_path: Path,
    redis_server: RedisServer,
    pipeline_settings: Settings,
) -> None:
    redis_server.stop()
    try:
        sids = [f"out{n}" for n in range(50)]
        for sid in sids:
            answer = web.post(URL, data={"CallSid": sid, "Status": "completed"})
            assert answer.status_code == 200, answer.get_data(as_text=True)
            assert answer.get_json()["spooled"] is True
        assert len(list(pipeline_settings.spool_dir.glob("*.json"))) == 50
    finally:
        redis_server.start()
    # the drainer moves them without waiting for another request
    wait_for(lambda: exactly_once(jsonl_path, sids), timeout=90)
    assert list(pipeline_settings.spool_dir.glob("*.json")) == []


def test_spool_unwritable_answers_503(
    pipeline_env: dict[str, str], redis_server: RedisServer, tmp_path: Path
) -> None:
    from web.app import create_app

    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    pipeline_env["SPOOL_DIR"] = str(blocker / "spool")
    app = create_app(Settings.from_env(pipeline_env, dotenv=False))
    redis_server.stop()
    try:
        answer = app.test_client().post(URL, data={"CallSid": "nospool", "Status": "completed"})
    finally:
        redis_server.start()
        app.extensions["exolegs"].drainer.stop()
    assert answer.status_code == 503
    assert "retry" in answer.get_json()["error"]


# --------------------------------------------------------- configuration faults
def test_401_storm_parks_calls_probes_and_recovers(
    pipeline_env: dict[str, str], simulator: Simulator, tmp_path: Path, jsonl_path: Path
) -> None:
    pipeline_env["CIRCUIT_PROBE_SECONDS"] = "4"
    pipeline_env["READYZ_DETAILS"] = "true"
    settings = Settings.from_env(pipeline_env, dotenv=False)
    from web.app import create_app

    client = create_app(settings).test_client()
    simulator.mode("unauthorized")
    sids = [f"auth{n}" for n in range(10)]
    worker = start_worker(pipeline_env, tmp_path / "w.log")
    try:
        book(settings, sids)
        wait_for(lambda: "circuit open" in worker.output(), timeout=30)
        ready = client.get("/readyz").get_json()
        assert any("exotel" in p and "1010" in p for p in ready["problems"]), ready
        # Fetches already on their way when it opened (the rate limit's burst,
        # FETCH_CONCURRENCY at a time per process) still arrive: not probes.
        opened = time.time() + 0.5
        time.sleep(9)
        during = simulator.total()
        simulator.mode("normal")
        wait_for(lambda: exactly_once(jsonl_path, sids), timeout=60)
    finally:
        worker.stop()
    times = sorted(t for s in sids for t in simulator.requests_for(s) if t > opened)
    # at most one probe per CIRCUIT_PROBE_SECONDS while the circuit was open
    assert windows([t for t in times if t < opened + 8.5], 4.0) <= 1
    assert during <= 10 + 3
    assert client.get("/readyz").get_json()["problems"] == []
    assert worker.output().count("Exotel circuit open") <= 2  # shouted at most once a minute


# ------------------------------------------------------------- dead letters
def exolegs(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "worker.cli", *args],
        env={**env, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        check=False,
    )


def test_dead_letters_list_show_replay_purge(
    pipeline_env: dict[str, str], simulator: Simulator, tmp_path: Path, jsonl_path: Path
) -> None:
    # 500/10715 (error retrieving leg details) until the attempts run out: a dead
    # letter. (10743/10744 would not be one: the callback's record is delivered.)
    pipeline_env["RETRY_MAX_ATTEMPTS"] = "3"
    settings = Settings.from_env(pipeline_env, dotenv=False)
    failing = {"status": 500, "code": 10715}
    simulator.script("dlq1", [failing, failing, failing])
    worker = start_worker(pipeline_env, tmp_path / "w.log")
    try:
        book(settings, ["dlq1"])
        listed = wait_for(
            lambda: json.loads(exolegs(pipeline_env, "dead", "list", "--json").stdout)
        )
        [letter] = listed
        assert letter["call_sid"] == "dlq1" and letter["sink"] is None
        assert letter["attempts"] == 3 and "10715" in letter["last_error"]
        assert {"reason", "failed_at", "first_attempt_at", "last_attempt_at"} <= set(letter)
        shown = exolegs(pipeline_env, "dead", "show", "dlq1")
        assert shown.returncode == 0 and "10715" in shown.stdout
        replay = exolegs(pipeline_env, "dead", "replay", "dlq1")
        assert replay.returncode == 0 and "replayed 1" in replay.stdout
        wait_for(lambda: counts(jsonl_path)["dlq1"] == 1, timeout=30)
        assert json.loads(exolegs(pipeline_env, "dead", "list", "--json").stdout) == []
        purge = exolegs(pipeline_env, "dead", "purge", "--older-than", "30d")
        assert purge.returncode == 0 and "purged 0" in purge.stdout
    finally:
        worker.stop()
