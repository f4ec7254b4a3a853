"""Retention and rolling deploys in the pipeline, in-process, with real Redis and the simulator."""

from __future__ import annotations

import pytest

from tests.support.processes import Simulator
from worker import jobs, keys
from worker.calls import stored
from worker.calls.callbacks import event_from_fields
from worker.jobs import JobId, Outcome, ledger
from worker.runtime import Runtime
from worker.sinks import fleet
from worker.sinks.memory import MemorySink
from worker.tasks import execute, run_batch


@pytest.fixture
def runtime_env() -> dict[str, str]:
    return {"SINKS": "memory://a?name=a memory://b?name=b"}


def accept(rt: Runtime, call_sid: str) -> None:
    rt.intake.accept(
        event_from_fields({"CallSid": call_sid, "Status": "no-answer", "Direction": "inbound"})
    )


def run_due(rt: Runtime) -> list[Outcome]:
    """Run every message one claim of the book makes, as the workers would."""
    return [o for batch in rt.book.claim() for o in run_batch(rt, batch)]


def run_now(rt: Runtime, job_id: str) -> Outcome:
    """Make one job due, claim it and run it (other due jobs are claimed and left)."""
    rt.book.reschedule(job_id, 0)
    for batch in rt.book.claim():
        if job_id in map(str, batch.jobs):
            return execute(rt, JobId.parse(job_id), batch.token)
    raise AssertionError(f"{job_id} was not claimed")


def ttls(rt: Runtime, call_sid: str) -> list[int]:
    return [int(rt.redis.ttl(k)) for k in ledger.state_keys(call_sid)]


def test_a_dead_letter_keeps_its_calls_state_until_it_is_replayed(make_rt) -> None:  # type: ignore[no-untyped-def]
    rt = make_rt(
        SINKS="memory://a?name=a memory://b?name=b&fail=1&kind=permanent",
        RETENTION_HOURS="1",
        RECONCILE="off",  # a lookback beyond retention is refused
    )
    accept(rt, "r1")
    run_due(rt)
    assert sorted(run_due(rt)) == ["dead", "done"]
    assert ttls(rt, "r1") == [-1, -1, -1]  # no expiry while the dead letter exists
    [letter] = list(rt.dead)
    assert (letter.status, letter.direction) == ("no-answer", "inbound")
    rt.dead.replay(letter)
    assert all(0 < t <= 3600 for t in ttls(rt, "r1"))  # its last letter gone: retention again
    assert run_due(rt) == ["done"]
    assert MemorySink.attempts["a"] == 1 and MemorySink.attempts["b"] == 2


def test_two_dead_letters_of_one_call_keep_its_state_until_both_are_gone(make_rt) -> None:  # type: ignore[no-untyped-def]
    rt = make_rt(SINKS="memory://a?name=a&fail=1&kind=permanent memory://b?name=b&fail=1&kind=permanent")
    accept(rt, "r2")
    run_due(rt)
    assert run_due(rt) == ["dead", "dead"]
    first, _ = list(rt.dead)
    rt.dead.replay(first)
    assert ttls(rt, "r2") == [-1, -1, -1]
    assert rt.dead.purge(0) == 1
    assert all(t > 0 for t in ttls(rt, "r2"))


def test_past_retention_a_replay_refetches_for_its_sink_alone_and_keeps_the_callback(
    make_rt, sim: Simulator  # type: ignore[no-untyped-def]
) -> None:
    rt = make_rt(SINKS="memory://a?name=a memory://b?name=b&fail=1&kind=permanent")
    accept(rt, "r3")
    run_due(rt)
    run_due(rt)
    [letter] = list(rt.dead)
    # Everything about the call expired meanwhile (as it did before dead letters kept it).
    rt.redis.delete(*ledger.state_keys("r3"))
    rt.dead.replay(letter)
    assert run_due(rt) == ["done"]
    assert rt.book.size() == 0  # no delivery booked for sink a
    assert MemorySink.attempts["a"] == 1
    [record] = MemorySink.records("b")
    assert record["status"] == "no-answer" and record["direction"] == "inbound"
    assert record["callback"]["CallSid"] == "r3"
    assert len(sim.requests_for("r3")) == 2  # the first fetch, and b's own
    kept = stored.loads(rt.redis.get(keys.record("r3")))
    assert kept["status"] == "no-answer"


def test_each_run_of_a_calls_job_gives_its_state_another_retention(make_rt) -> None:  # type: ignore[no-untyped-def]
    rt = make_rt(SINKS="memory://a?name=a&fail=1", RETENTION_HOURS="1", RECONCILE="off")
    accept(rt, "r4")
    run_due(rt)
    for key in ledger.state_keys("r4"):
        rt.redis.expire(key, 5)  # almost gone while the delivery waits for its retry
    rt.redis.zadd(jobs.JOBS, {jobs.deliver_id("r4", "a"): 0})
    assert run_due(rt) == ["retry"]
    assert all(t > 3000 for t in ttls(rt, "r4"))
    rt.redis.zadd(jobs.JOBS, {jobs.deliver_id("r4", "a"): 0})
    assert run_due(rt) == ["done"]
    assert all(t > 3000 for t in ttls(rt, "r4"))


def test_a_delivery_for_an_unknown_sink_is_handed_back_not_dead_lettered(make_rt) -> None:  # type: ignore[no-untyped-def]
    new = make_rt(SINKS="memory://a?name=a memory://crm?name=crm")
    old = make_rt(SINKS="memory://a?name=a", UNKNOWN_SINK_GRACE_SECONDS="600")
    accept(new, "d1")
    run_due(new)  # the fetch books a and crm
    job = jobs.deliver_id("d1", "crm")
    assert run_now(old, job) is Outcome.DEFERRED
    assert old.book.pending(job) and old.dead.count() == 0
    assert run_now(new, job) is Outcome.DONE
    assert [r["call_sid"] for r in MemorySink.records("crm")] == ["d1"]


def test_after_the_grace_an_unannounced_unknown_sink_is_dead_lettered(make_rt) -> None:  # type: ignore[no-untyped-def]
    old = make_rt(SINKS="memory://a?name=a", UNKNOWN_SINK_GRACE_SECONDS="0")
    old.book.schedule(jobs.deliver_id("d2", "gone"))
    assert run_due(old) == ["dead"]
    [letter] = list(old.dead)
    assert "'gone' is not configured on any running worker" in letter.last_error
    # While some running worker announces it, it is handed back whatever the grace.
    fleet.announce(old.redis, [("default", "gone")])
    old.dead.replay(letter)
    assert run_due(old) == ["deferred"]


def test_an_old_worker_books_deliveries_for_sinks_only_new_workers_have(make_rt) -> None:  # type: ignore[no-untyped-def]
    old = make_rt(SINKS="memory://a?name=a")
    fleet.announce(old.redis, [("default", "a")])
    # a new worker started with one more sink
    fleet.announce(old.redis, [("default", "a"), ("default", "crm")])
    accept(old, "d3")
    run_due(old)  # the old worker fetches
    assert old.book.pending(jobs.deliver_id("d3", "crm"))
    assert old.book.pending(jobs.deliver_id("d3", "a"))
