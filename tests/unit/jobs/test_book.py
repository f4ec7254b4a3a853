"""The job book's Lua against a real Redis: fencing, ownership, never early, one clock."""

from __future__ import annotations

import json
import time

import pytest
import redis

from tests.support.redis_server import RedisServer
from worker import jobs
from worker.jobs import Batch, JobBook, JobId, Outcome, Started
from worker.jobs.deadletters import DEAD, DeadLetters, dead_key
from worker.jobs.heartbeat import Heartbeat
from worker.jobs.pump import Pump


def claimed(book: JobBook, **kwargs: object) -> dict[str, str]:
    """Job id -> fencing token of everything one claim takes."""
    return {str(j): b.token for b in book.claim(**kwargs) for j in b.jobs}  # type: ignore[arg-type]


def redis_now(client: redis.Redis) -> float:
    seconds, micros = client.time()
    return seconds + micros / 1e6


def test_job_ids_round_trip() -> None:
    assert JobId.parse("fetch:abc") == JobId("fetch", "abc")
    assert JobId.parse(b"deliver:abc:jsonl-2") == JobId("deliver", "abc", "jsonl-2")
    assert str(JobId("deliver", "abc", "hubspot")) == "deliver:abc:hubspot"


def test_claim_takes_only_due_jobs_and_fences_them(redis_client: redis.Redis) -> None:
    book = JobBook(redis_client, lease_seconds=30)
    book.schedule("fetch:now")
    book.schedule("fetch:later", delay=60)
    tokens = claimed(book)
    assert list(tokens) == ["fetch:now"]
    assert claimed(book) == {}  # leased: a second pump does not take it
    assert book.pending("fetch:now")  # still in the book until finished
    score = redis_client.zscore(jobs.JOBS, "fetch:now")
    assert score == float(tokens["fetch:now"])  # the token is the claim's lease end
    assert score > redis_now(redis_client) + 25


def test_delays_are_relative_to_redis_clock(redis_client: redis.Redis) -> None:
    """Scores come from Redis TIME: the caller's clock never enters them."""
    book = JobBook(redis_client)
    before = redis_now(redis_client)
    book.schedule("fetch:a", delay=60)
    book.schedule_many(["fetch:b", "fetch:c"], delay=5)
    after = redis_now(redis_client)
    assert before + 60 <= (redis_client.zscore(jobs.JOBS, "fetch:a") or 0) <= after + 60
    assert before + 5 <= (redis_client.zscore(jobs.JOBS, "fetch:b") or 0) <= after + 5
    book.reschedule("fetch:a", 1)
    assert (redis_client.zscore(jobs.JOBS, "fetch:a") or 0) <= redis_now(redis_client) + 1


def test_lease_expiry_makes_a_job_due_again_under_a_new_token(redis_client: redis.Redis) -> None:
    book = JobBook(redis_client, lease_seconds=0.3)
    book.schedule("fetch:crashy")
    first = claimed(book)["fetch:crashy"]
    time.sleep(0.4)  # the message was lost, its run never started
    second = claimed(book)["fetch:crashy"]
    assert second != first
    assert book.begin("fetch:crashy", first) is Outcome.STALE  # the old message is fenced off
    assert isinstance(book.begin("fetch:crashy", second), Started)


def test_schedule_is_idempotent_and_finish_removes(redis_client: redis.Redis) -> None:
    book = JobBook(redis_client)
    assert book.schedule("fetch:a") is True
    assert book.schedule("fetch:a") is False
    token = claimed(book)["fetch:a"]
    assert isinstance(book.begin("fetch:a", token), Started)
    assert book.finish("fetch:a", token)
    assert not book.pending("fetch:a")
    assert book.info("fetch:a") == {}
    assert not redis_client.exists("exolegs:job:fetch:a:lock")


def test_reschedule_moves_only_existing_jobs(redis_client: redis.Redis) -> None:
    book = JobBook(redis_client)
    book.reschedule("fetch:ghost", 0)
    assert not book.pending("fetch:ghost")
    book.schedule("fetch:a")
    book.reschedule("fetch:a", 100)
    assert claimed(book) == {}


def test_a_job_never_runs_before_it_is_due(redis_client: redis.Redis) -> None:
    """A restored or re-sent message for a job waiting out a backoff is a no-op."""
    book = JobBook(redis_client)
    assert book.begin("fetch:a", "123.000000") is Outcome.STALE  # never booked
    book.schedule("fetch:a")
    token = claimed(book)["fetch:a"]
    assert isinstance(book.begin("fetch:a", token), Started)
    assert book.release("fetch:a", token, 600, error="Exotel 500")  # a retry, 10 minutes on
    # The same message again (a broker restore): the job is waiting, so nothing runs.
    assert book.begin("fetch:a", token) is Outcome.STALE
    assert book.info("fetch:a")["attempts"] == "1"
    assert book.info("fetch:a")["last_error"] == "Exotel 500"
    assert claimed(book) == {}


def test_a_second_copy_of_the_same_claim_is_busy(redis_client: redis.Redis) -> None:
    book = JobBook(redis_client)
    book.schedule("fetch:a")
    token = claimed(book)["fetch:a"]
    first = book.begin("fetch:a", token)
    assert isinstance(first, Started) and first.attempt == 1 and not first.force
    assert book.begin("fetch:a", token) is Outcome.BUSY  # a redelivered copy while it runs
    assert book.info("fetch:a")["attempts"] == "1"
    info = book.info("fetch:a")
    assert "first_attempt" in info and "last_attempt" in info


def test_only_the_owner_releases_or_finishes(redis_client: redis.Redis) -> None:
    """A run whose lock lapsed cannot release, reschedule or finish its successor's run."""
    book = JobBook(redis_client, lease_seconds=0.3)
    book.schedule("deliver:c1:crm")
    old = claimed(book)["deliver:c1:crm"]
    assert isinstance(book.begin("deliver:c1:crm", old), Started)
    time.sleep(0.4)  # the old run stalled past its lease without a heartbeat
    new = claimed(book)["deliver:c1:crm"]
    assert isinstance(book.begin("deliver:c1:crm", new), Started)
    assert not book.release("deliver:c1:crm", old, 0, error="late")
    assert not book.finish("deliver:c1:crm", old)
    assert redis_client.get("exolegs:job:deliver:c1:crm:lock") == new.encode()
    assert book.pending("deliver:c1:crm") and "last_error" not in book.info("deliver:c1:crm")
    assert book.finish("deliver:c1:crm", new)
    assert not book.pending("deliver:c1:crm")


def test_the_pump_never_reclaims_a_job_whose_run_is_alive(redis_client: redis.Redis) -> None:
    book = JobBook(redis_client, lease_seconds=0.5)
    beat = Heartbeat(book, interval=0.1)
    book.schedule("deliver:c1:slow")
    token = claimed(book)["deliver:c1:slow"]
    assert isinstance(book.begin("deliver:c1:slow", token), Started)
    with beat.run("deliver:c1:slow", token):
        deadline = time.monotonic() + 1.5  # three leases of a slow but healthy run
        while time.monotonic() < deadline:
            assert claimed(book) == {}
            time.sleep(0.05)
        assert book.finish("deliver:c1:slow", token)
    assert not book.pending("deliver:c1:slow")


def test_a_dead_runs_work_comes_back_within_one_lease(redis_client: redis.Redis) -> None:
    book = JobBook(redis_client, lease_seconds=0.5)
    book.schedule("fetch:a")
    token = claimed(book)["fetch:a"]
    assert isinstance(book.begin("fetch:a", token), Started)
    died = time.monotonic()  # no heartbeat from here on: the worker was killed
    while not (again := claimed(book)):
        assert time.monotonic() - died < 1.0
        time.sleep(0.02)
    assert again["fetch:a"] != token
    assert book.begin("fetch:a", token) is Outcome.STALE


def test_release_can_undo_the_attempt(redis_client: redis.Redis) -> None:
    book = JobBook(redis_client)
    book.schedule("fetch:a")
    token = claimed(book)["fetch:a"]
    book.begin("fetch:a", token)
    assert book.release("fetch:a", token, 0, undo_attempt=True)  # only waited for a token
    assert book.info("fetch:a")["attempts"] == "0"
    assert not redis_client.exists("exolegs:job:fetch:a:lock")
    again = claimed(book)["fetch:a"]
    started = book.begin("fetch:a", again)
    assert isinstance(started, Started) and started.attempt == 1


def test_a_claimed_job_that_never_started_can_be_handed_back(redis_client: redis.Redis) -> None:
    book = JobBook(redis_client)
    book.schedule("fetch:a")
    token = claimed(book)["fetch:a"]
    assert book.release("fetch:a", token, 0)
    assert book.begin("fetch:a", token) is Outcome.STALE
    assert list(claimed(book)) == ["fetch:a"]


def test_pump_dispatches_due_jobs(redis_client: redis.Redis) -> None:
    book = JobBook(redis_client)
    seen: list[JobId] = []
    for n in range(5):
        book.schedule(jobs.fetch_id(f"c{n}"))
    pump = Pump(book, lambda b: seen.extend(b.jobs), interval=0.05).start()
    try:
        deadline = time.time() + 5
        while len(seen) < 5 and time.time() < deadline:
            time.sleep(0.05)
    finally:
        pump.stop()
    assert sorted(j.call_sid for j in seen) == [f"c{n}" for n in range(5)]


def test_pump_batches_a_backlog_by_kind_and_sink(redis_client: redis.Redis) -> None:
    book = JobBook(redis_client)
    for n in range(200):
        book.schedule(jobs.fetch_id(f"c{n}"))
        book.schedule(jobs.deliver_id(f"c{n}", "crm"))
    book.schedule(jobs.deliver_id("c0", "jsonl"))
    messages: list[Batch] = []
    Pump(book, messages.append).run_once()
    assert all(len({(j.kind, j.sink) for j in m.jobs}) == 1 for m in messages)  # never mixed
    assert max(len(m.jobs) for m in messages) == book.batch
    assert sum(len(m.jobs) for m in messages) == 401
    assert len({m.token for m in messages}) == 1  # one claim, one token


def test_each_sink_has_at_most_its_cap_of_messages_in_flight(redis_client: redis.Redis) -> None:
    book = JobBook(redis_client, sink_concurrency=2, batch=4)
    for n in range(40):
        book.schedule(jobs.deliver_id(f"c{n}", "slow"))
        book.schedule(jobs.deliver_id(f"c{n}", "jsonl"))
    first = book.claim()
    slow = [b for b in first if b.jobs[0].sink == "slow"]
    assert len(slow) == 2 and sum(len(b.jobs) for b in slow) == 8
    assert sum(len(b.jobs) for b in first if b.jobs[0].sink == "jsonl") == 8
    assert book.claim() == []  # both sinks at their cap; nothing else is taken
    for batch in first:
        if batch.jobs[0].sink == "jsonl":
            book.free_slot("jsonl", batch.slot or "")
    second = book.claim()  # at once: a freed slot wakes its sink's waiting jobs
    assert {b.jobs[0].sink for b in second} == {"jsonl"}  # the slow sink still holds its two
    assert sum(len(b.jobs) for b in second) == 8


def test_a_freed_slot_never_wakes_a_job_early(redis_client: redis.Redis) -> None:
    """A waiting job that was rescheduled since (a Retry-After) keeps its later due time."""
    book = JobBook(redis_client, sink_concurrency=1, batch=1, cap_wait=30)
    book.schedule_many([jobs.deliver_id(f"c{n}", "crm") for n in range(3)])
    [batch] = book.claim()
    assert book.claim() == []  # c1 and c2 wait for the slot
    book.reschedule(jobs.deliver_id("c1", "crm"), 60)
    assert book.free_slot("crm", batch.slot or "") == 0  # c1 (oldest) moved on: not woken
    assert book.free_slot("crm", batch.slot or "") == 1  # c2
    assert [j.call_sid for b in book.claim() for j in b.jobs] == ["c2"]
    assert book.describe(jobs.deliver_id("c1", "crm"))["due_at"] > redis_now(redis_client) + 50


def test_a_capped_slot_of_a_dead_worker_expires_with_its_lease(redis_client: redis.Redis) -> None:
    book = JobBook(redis_client, lease_seconds=0.4, sink_concurrency=1, cap_wait=0.05)
    book.schedule_many([jobs.deliver_id("a", "crm"), jobs.deliver_id("b", "crm")])
    [batch] = book.claim()
    assert len(batch.jobs) == 2
    time.sleep(0.5)  # never renewed: the worker died
    assert sum(len(b.jobs) for b in book.claim()) == 2


def test_pump_stops_at_the_high_water_mark(redis_client: redis.Redis) -> None:
    book = JobBook(redis_client)
    for n in range(10):
        book.schedule(jobs.fetch_id(f"c{n}"))
    redis_client.rpush("q", *[json.dumps({"headers": {}})] * 64)
    messages: list[Batch] = []
    assert Pump(book, messages.append, queue="q", high_water=64).run_once() == 0
    assert messages == [] and len(claimed(book)) == 10  # still due, nobody leased them


def test_pump_waits_while_the_oldest_message_has_waited_too_long(
    redis_client: redis.Redis,
) -> None:
    """The high-water mark counts time too: a message never waits its lease in the queue."""
    book = JobBook(redis_client, lease_seconds=8)
    book.schedule("fetch:a")
    old = redis_now(redis_client) - 3  # more than a quarter of the lease ago
    redis_client.lpush("q", json.dumps({"headers": {"exolegs_claimed_at": old}}))
    assert claimed(book, queue="q") == {}
    redis_client.delete("q")
    redis_client.lpush("q", json.dumps({"headers": {"exolegs_claimed_at": old + 2.5}}))
    assert list(claimed(book, queue="q")) == ["fetch:a"]


def test_dead_lettering_is_fenced_and_timed_by_redis(redis_client: redis.Redis) -> None:
    book = JobBook(redis_client, lease_seconds=0.3)
    dead = DeadLetters(redis_client, book)
    job = JobId("deliver", "c1", "crm")
    book.schedule(str(job))
    old = claimed(book)[str(job)]
    book.begin(str(job), old)
    time.sleep(0.4)
    new = claimed(book)[str(job)]
    book.begin(str(job), new)
    assert dead.add(job, token=old, reason="r", error="late") is None  # not the owner
    assert dead.count() == 0 and book.pending(str(job))
    before = redis_now(redis_client)
    letter = dead.add(job, token=new, reason="r", error="e")
    assert letter is not None and before <= letter.failed_at <= redis_now(redis_client)
    assert not book.pending(str(job)) and redis_client.exists(dead_key(str(job)))
    assert redis_client.zscore(DEAD, str(job)) == pytest.approx(letter.failed_at)


def test_kombu_restore_on_a_torn_down_connection_does_not_stop_the_worker() -> None:
    from kombu.transport import redis as kombu_redis

    from worker.celery_app import guard_kombu_restore

    class TornDown:
        """A channel whose Redis connection is already gone (kombu #582)."""

        def conn_or_acquire(self, client: object = None) -> object:
            raise AttributeError("'NoneType' object has no attribute 'hostname'")

    guard_kombu_restore()
    guard_kombu_restore()  # idempotent
    qos = kombu_redis.QoS.__new__(kombu_redis.QoS)
    qos.channel = TornDown()
    assert qos.restore_unacked() is None


def test_a_task_finishing_after_redis_went_away_does_not_stop_the_worker(
    redis_server: RedisServer,
) -> None:
    """Its ack lands on the channel kombu closed when Redis went away: the same AttributeError."""
    from kombu import Connection

    from worker.celery_app import guard_kombu_restore

    guard_kombu_restore()
    with Connection(f"redis://127.0.0.1:{redis_server.port}/0") as connection:
        channel = connection.channel()
        qos = channel.qos
        channel.close()  # what kombu does when the broker connection drops
        assert qos.ack("a-delivery-tag") is None
        assert qos.reject("another", requeue=True) is None


def test_begin_says_whether_the_upstream_has_failures_to_clear(redis_client: redis.Redis) -> None:
    book = JobBook(redis_client)
    book.schedule("deliver:c1:crm")
    token = claimed(book)["deliver:c1:crm"]
    started = book.begin("deliver:c1:crm", token, "exolegs:circuit:sink:crm", "f:crm")
    assert isinstance(started, Started) and not started.failing and not started.circuit_open
    book.release("deliver:c1:crm", token, 0)
    redis_client.set("f:crm", 2)
    again = claimed(book)["deliver:c1:crm"]
    started = book.begin("deliver:c1:crm", again, "exolegs:circuit:sink:crm", "f:crm")
    assert isinstance(started, Started) and started.failing
