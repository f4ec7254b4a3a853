"""The retry policy applied by `execute`, in-process, with real Redis and the simulator."""

from __future__ import annotations

import hashlib
import itertools
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from redis.client import Monitor

from tests.support.processes import Simulator
from tests.support.redis_server import RedisServer
from worker import jobs, keys
from worker.calls.callbacks import event_from_fields
from worker.jobs import JobId, Outcome, ledger, ratelimit
from worker.jobs.book import job_key
from worker.jobs.circuit import open_circuits
from worker.runtime import Runtime
from worker.sinks.memory import MemorySink
from worker.tasks import execute, run_batch


def accept(rt: Runtime, call_sid: str) -> None:
    rt.intake.accept(event_from_fields({"CallSid": call_sid, "Status": "completed"}))


def run_due(rt: Runtime) -> list[Outcome]:
    """Run every message one claim of the book makes, as the workers would."""
    return [o for batch in rt.book.claim() for o in run_batch(rt, batch)]


def test_fetch_then_one_delivery_per_sink(make_rt) -> None:  # type: ignore[no-untyped-def]
    rt = make_rt()
    accept(rt, "t1")
    assert run_due(rt) == ["done"]
    assert rt.redis.exists(keys.record("t1"))
    assert sorted(run_due(rt)) == ["done", "done"]
    assert [r["call_sid"] for r in MemorySink.records("a")] == ["t1"]
    assert [r["call_sid"] for r in MemorySink.records("b")] == ["t1"]
    assert rt.book.size() == 0


def test_stale_message_is_a_no_op(make_rt) -> None:  # type: ignore[no-untyped-def]
    rt = make_rt()
    assert execute(rt, JobId("fetch", "never-booked"), "1.000000") is Outcome.STALE


def test_failing_sink_retries_alone_without_refetching(make_rt, sim: Simulator) -> None:  # type: ignore[no-untyped-def]
    rt = make_rt(SINKS="memory://good memory://bad?fail=2")
    accept(rt, "t2")
    run_due(rt)
    outcomes = sorted(run_due(rt))
    assert outcomes == ["done", "retry"]
    assert len(MemorySink.records("good")) == 1
    for _ in range(2):
        rt.redis.zadd(jobs.JOBS, {jobs.deliver_id("t2", "memory-2"): 0})
        run_due(rt)
    assert len(MemorySink.records("bad")) == 1
    assert MemorySink.attempts["good"] == 1  # never touched again
    assert len(sim.requests_for("t2")) == 1  # legs fetched once


def test_permanent_sink_failure_is_dead_lettered_with_its_reason(make_rt) -> None:  # type: ignore[no-untyped-def]
    rt = make_rt(SINKS="memory://nope?fail=9&kind=permanent")
    accept(rt, "t3")
    run_due(rt)
    assert run_due(rt) == ["dead"]
    [letter] = list(rt.dead)
    assert letter.sink == "memory" and letter.call_sid == "t3"
    assert "injected failure" in letter.last_error and letter.attempts == 1
    assert letter.callback and letter.callback["CallSid"] == "t3"


def _retry_until_done(rt: Runtime, call_sid: str, rounds: int) -> list[str]:
    outcomes = []
    for _ in range(rounds):
        rt.redis.zadd(jobs.JOBS, {jobs.fetch_id(call_sid): 0})
        outcomes += run_due(rt)
    return outcomes


def test_call_not_found_is_retried_a_few_times_then_delivered_without_legs(make_rt) -> None:  # type: ignore[no-untyped-def]
    rt = make_rt()
    accept(rt, "missing-call")
    assert _retry_until_done(rt, "missing-call", 3) == ["retry", "retry", "unavailable"]
    assert list(rt.dead) == []
    assert sorted(run_due(rt)) == ["done", "done"]
    for bucket in ("a", "b"):
        [record] = MemorySink.records(bucket)
        assert record["legs"] == "unavailable" and record["from"] == [] and record["to"] == []
        assert record["status"] == "completed" and record["source"] == "callback"


def test_legs_never_ready_reach_the_sinks_from_the_callback(make_rt, sim: Simulator) -> None:  # type: ignore[no-untyped-def]
    """10743 until retries run out: the sinks get the callback's record, no dead letter."""
    rt = make_rt(RETRY_MAX_ATTEMPTS="3")
    sim.script("late-legs", [{"status": 500, "code": 10743}] * 3)
    rt.intake.accept(
        event_from_fields(
            {
                "CallSid": "late-legs",
                "Status": "no-answer",
                "Direction": "inbound",
                "From": "09876543210",
                "DialWhomNumber": "09123456780",
            }
        )
    )
    assert _retry_until_done(rt, "late-legs", 3) == ["retry", "retry", "unavailable"]
    assert sorted(run_due(rt)) == ["done", "done"]
    [record] = MemorySink.records("a")
    assert record["legs"] == "unavailable" and record["missed"] is True
    assert record["customer"] == {"contact_uri": "09876543210", "phone_e164": "+919876543210"}
    assert record["agents"][0]["contact_uri"] == "09123456780"
    assert rt.dead.count() == 0


def test_legs_that_turn_up_later_update_only_sinks_that_update_in_place(  # type: ignore[no-untyped-def]
    make_rt, sim: Simulator, tmp_path
) -> None:
    """memory:// upserts, jsonl:// appends: only the first gets the full record."""
    path = tmp_path / "calls.jsonl"
    rt = make_rt(RETRY_MAX_ATTEMPTS="1", SINKS=f"memory://a jsonl://{path}")
    sim.script("later", [{"status": 500, "code": 10743}])
    accept(rt, "later")
    assert run_due(rt) == ["unavailable"]
    assert sorted(run_due(rt)) == ["done", "done"]
    # A sweep (or a replay) books the fetch again; this time Exotel has the legs.
    rt.book.schedule(jobs.fetch_id("later"))
    assert run_due(rt) == ["done"]
    assert run_due(rt) == ["done"]  # only the memory sink's delivery was booked
    [record] = MemorySink.records("a")  # upserted in place
    assert record["legs"] == "fetched" and (record["from"] or record["to"])
    assert MemorySink.attempts["a"] == 2
    lines = path.read_text().splitlines()
    assert len(lines) == 1 and '"legs":"unavailable"' in lines[0].replace(" ", "")
    assert rt.book.size() == 0


def test_config_fault_opens_the_circuit_parks_and_probes_once(make_rt, sim: Simulator) -> None:  # type: ignore[no-untyped-def]
    rt = make_rt()
    sim.mode("unauthorized")
    for n in range(5):
        accept(rt, f"cf{n}")
    outcomes = run_due(rt)
    assert outcomes.count("parked") + outcomes.count("deferred") == 5
    requests_while_open = sim.total()
    assert requests_while_open >= 1
    assert "exotel:exotel_sim" in open_circuits(rt.redis)
    # everything comes due again: only the probe lock holder may call, and it is taken
    rt.redis.zadd(jobs.JOBS, {jobs.fetch_id(f"cf{n}"): 0 for n in range(5)})
    assert set(run_due(rt)) == {"deferred"}
    assert sim.total() == requests_while_open
    # Exotel is fixed: the next probe closes the circuit and releases the parked calls
    sim.mode("normal")
    rt.redis.delete(keys.circuit("exotel:exotel_sim") + ":probe")
    rt.redis.zadd(jobs.JOBS, {jobs.fetch_id("cf0"): 0})
    run_due(rt)
    assert open_circuits(rt.redis) == {}
    # the parked calls come back at the account's rate (200/minute: 0.3 s apart)
    deadline = time.monotonic() + 5
    while len(MemorySink.records("a")) < 5 and time.monotonic() < deadline:
        run_due(rt)
        time.sleep(0.05)
    assert {r["call_sid"] for r in MemorySink.records("a")} == {f"cf{n}" for n in range(5)}
    assert not any(rt.dead)


def test_forced_replay_delivers_again(make_rt) -> None:  # type: ignore[no-untyped-def]
    rt = make_rt(SINKS="memory://a")
    accept(rt, "t4")
    run_due(rt)
    run_due(rt)
    assert ledger.delivered(rt.redis, "t4", "memory")
    rt.book.schedule(jobs.deliver_id("t4", "memory"))
    assert run_due(rt) == ["done"]
    assert MemorySink.attempts["a"] == 1  # the ledger said no
    rt.book.schedule(jobs.deliver_id("t4", "memory"))
    rt.redis.hset(job_key(jobs.deliver_id("t4", "memory")), "force", "1")
    run_due(rt)
    assert MemorySink.attempts["a"] == 2


def test_sink_with_bad_credentials_is_parked_behind_its_circuit(make_rt) -> None:  # type: ignore[no-untyped-def]
    rt = make_rt(SINKS="memory://crm?fail=1&kind=config memory://ok", CIRCUIT_PROBE_SECONDS="60")
    for n in range(3):
        accept(rt, f"sc{n}")
    run_due(rt)  # three fetches
    outcomes = run_due(rt)  # six deliveries
    assert outcomes.count("done") == 3  # the healthy sink is not held up
    assert "sink:memory" in open_circuits(rt.redis)
    assert MemorySink.attempts["crm"] <= 1 + 1  # the failure, at most one probe
    # the probe interval passes: one probe succeeds and releases every parked delivery
    rt.redis.delete(keys.circuit("sink:memory") + ":probe")
    for _ in range(4):
        pending = rt.redis.zrange(jobs.JOBS, 0, -1)
        if pending:
            rt.redis.zadd(jobs.JOBS, dict.fromkeys(pending, 0))
        run_due(rt)
    assert open_circuits(rt.redis) == {}
    assert {r["call_sid"] for r in MemorySink.records("crm")} == {"sc0", "sc1", "sc2"}


def test_a_sink_that_keeps_failing_is_parked_behind_its_circuit(make_rt) -> None:  # type: ignore[no-untyped-def]
    rt = make_rt(SINKS="memory://down?fail=1000 memory://ok", RETRY_MAX_ATTEMPTS="100")
    for n in range(8):
        accept(rt, f"hang{n}")
    run_due(rt)  # fetches
    outcomes = run_due(rt)  # 16 deliveries: 8 fine, 8 to the failing sink
    assert outcomes.count("done") == 8
    assert "sink:memory" in open_circuits(rt.redis)
    assert MemorySink.attempts["down"] == 5  # the circuit opened at the 5th failure in a row
    # everything comes due again: the failing sink is not called, except one probe
    pending = rt.redis.zrange(jobs.JOBS, 0, -1)
    rt.redis.zadd(jobs.JOBS, dict.fromkeys(pending, 0))
    run_due(rt)
    assert MemorySink.attempts["down"] <= 6
    assert len(MemorySink.records("ok")) == 8


def test_closing_a_circuit_releases_every_parked_job_at_once(make_rt) -> None:  # type: ignore[no-untyped-def]
    from worker.jobs.circuit import RELEASE_SPACING

    rt = make_rt()
    circuit = rt.circuit("exotel:exotel_sim")
    circuit.open("401/1010")
    for n in range(5):
        rt.book.schedule(f"fetch:p{n}", delay=3600)
        circuit.park(f"fetch:p{n}")
    assert circuit.close(rt.book) == 5
    assert not circuit.is_open()
    due = sorted(score for _, score in rt.redis.zrange(rt.book.key, 0, -1, withscores=True))
    # due now, one every RELEASE_SPACING: a few at a time, not one wall of messages
    assert due[0] <= time.time() + 0.01
    assert all(abs(b - a - RELEASE_SPACING) < 1e-3 for a, b in itertools.pairwise(due))
    time.sleep(5 * RELEASE_SPACING)
    assert len(rt.book.claim()) == 5  # all due
    assert circuit.close(rt.book) == 0  # closing a closed circuit does nothing


def test_parked_fetches_come_back_at_the_accounts_rate(make_rt) -> None:  # type: ignore[no-untyped-def]
    rt = make_rt(EXOTEL_RATE_LIMIT="10/second")
    accept(rt, "first")
    run_due(rt)  # a working probe closes the circuit from inside call_upstream
    circuit = rt.circuit("exotel:exotel_sim")
    circuit.open("401/1010")
    circuit.try_probe()  # the probe's turn has passed: the next job is the probe again
    rt.redis.delete(f"{circuit.key}:probe")
    for n in range(4):
        rt.book.schedule(f"fetch:q{n}", delay=3600)
        circuit.park(f"fetch:q{n}")
    accept(rt, "probe")
    assert "done" in run_due(rt)  # the probe works and closes the circuit
    assert not circuit.is_open()
    due = sorted(
        score
        for job, score in rt.redis.zrange(rt.book.key, 0, -1, withscores=True)
        if job.startswith(b"fetch:q")
    )
    assert all(abs(b - a - 0.1) < 1e-3 for a, b in itertools.pairwise(due))


def test_a_batch_fetches_its_legs_several_at_a_time(make_rt, sim: Simulator) -> None:  # type: ignore[no-untyped-def]
    """Each fetch mostly waits on Exotel: FETCH_CONCURRENCY of them wait together."""
    rt = make_rt(FETCH_CONCURRENCY="4")
    sids = [f"par{n}" for n in range(4)]
    for sid in sids:
        accept(rt, sid)
    sim.mode("slow", delay=1.0)
    try:
        batch = _one_batch(rt)
        assert len(batch.jobs) == 4
        assert run_batch(rt, batch) == ["done"] * 4
    finally:
        sim.mode("normal")
    arrivals = [t for sid in sids for t in sim.requests_for(sid)]
    # One at a time, the last would arrive three seconds after the first.
    assert len(arrivals) == 4 and max(arrivals) - min(arrivals) < 1.0


def _one_batch(rt: Runtime) -> jobs.Batch:
    """All due jobs in one message (the claim splits small backlogs into several)."""
    batches = rt.book.claim()
    token = batches[0].token
    return jobs.Batch(token, tuple(j for b in batches for j in b.jobs), batches[0].claimed_at)


def test_a_message_out_of_time_hands_its_jobs_back_uncounted(make_rt, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Jobs begun with their message but never reached are due again now, attempts undone."""
    import worker.tasks

    rt = make_rt()
    for n in range(3):
        accept(rt, f"late{n}")
    monkeypatch.setattr(worker.tasks, "BATCH_BUDGET_FRACTION", 0.0)  # the budget is spent at once
    assert run_due(rt) == ["handed back"] * 3
    for n in range(3):
        info = rt.book.describe(jobs.fetch_id(f"late{n}"))
        assert info is not None and int(info.get("attempts") or 0) == 0
    assert not rt.redis.exists(*(f"{job_key(jobs.fetch_id(f'late{n}'))}:lock" for n in range(3)))
    monkeypatch.undo()
    assert run_due(rt) == ["done"] * 3  # claimable at once, and they run


def test_a_freed_sink_slot_sends_the_next_message_at_once(make_rt, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """The run that frees its sink's slot claims the waiting jobs itself: no pump poll between."""
    import worker.tasks
    from worker.jobs import Batch

    rt = make_rt(SINKS="memory://a", SINK_CONCURRENCY="1", EXOTEL_RATE_LIMIT="100000/second")
    for n in range(rt.book.batch + 1):
        accept(rt, f"cap{n:02d}")
    run_due(rt)  # the fetches
    [first] = rt.book.claim()  # the sink's one slot: a full message; one job waits
    assert len(first.jobs) == rt.book.batch and rt.book.claim() == []
    sent: list[Batch] = []
    monkeypatch.setattr(worker.tasks, "dispatch", sent.append)
    assert run_batch(rt, first) == ["done"] * rt.book.batch
    assert [[j.call_sid for j in b.jobs] for b in sent] == [[f"cap{rt.book.batch:02d}"]]
    assert [o for b in sent for o in run_batch(rt, b)] == ["done"]
    assert len(MemorySink.records("a")) == rt.book.batch + 1


@contextmanager
def top_level_commands(rt: Runtime, redis_server: RedisServer) -> Iterator[list[list[str]]]:
    """Each command a client sent Redis meanwhile (MONITOR), not those its scripts ran:
    its name and first argument."""
    if redis_server.kind != "redis-server":
        pytest.skip("needs a real redis-server for MONITOR")
    seen: list[list[str]] = []
    end = f"end-{uuid.uuid4().hex}"

    def watch(monitor: Monitor) -> None:
        while True:
            command = monitor.next_command()
            if end in command["command"]:
                return
            if command["client_type"] != "lua":
                seen.append(command["command"].split(" ", 2)[:2])

    with rt.redis.monitor() as monitor:
        watcher = threading.Thread(target=watch, args=(monitor,))
        watcher.start()
        try:
            yield seen
        finally:
            rt.redis.echo(end)
            watcher.join(10)


def test_each_job_s_first_write_rides_the_commit_of_the_job_before(make_rt, redis_server) -> None:  # type: ignore[no-untyped-def]
    """One Redis round trip per job fewer: a fetch's rate-limit turn, a delivery's ledger claim.

    On a managed Redis a round trip is a millisecond or more of each job's run.
    """
    rt = make_rt(SINKS="memory://a", FETCH_CONCURRENCY="1")
    sids = [f"ride{n}" for n in range(6)]
    for sid in sids:
        accept(rt, sid)
    take = hashlib.sha1(ratelimit._TAKE.encode()).hexdigest()
    claim = hashlib.sha1(ledger._CLAIM.encode()).hexdigest()
    with top_level_commands(rt, redis_server) as sent:
        assert run_batch(rt, _one_batch(rt)) == ["done"] * 6
        assert run_batch(rt, _one_batch(rt)) == ["done"] * 6
    # A script's first run is sent twice: NOSCRIPT, SCRIPT LOAD, again.
    after_load = [i + 1 for i, c in enumerate(sent) if c[0].upper() == "SCRIPT"]
    alone = [
        c[1] for i, c in enumerate(sent) if c[0].upper() == "EVALSHA" and i + 1 not in after_load
    ]
    assert alone.count(take) == 1  # the first job's; the other five rode a commit
    assert alone.count(claim) == 1
    assert sorted(r["call_sid"] for r in MemorySink.records("a")) == sids
    assert all(ledger.delivered(rt.redis, sid, "memory") for sid in sids)
