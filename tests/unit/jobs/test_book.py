from __future__ import annotations

import time

import redis

from worker import jobs
from worker.jobs import JobBook, JobId, Started
from worker.jobs.pump import Pump


def test_job_ids_round_trip() -> None:
    assert JobId.parse("fetch:abc") == JobId("fetch", "abc")
    assert JobId.parse(b"deliver:abc:jsonl-2") == JobId("deliver", "abc", "jsonl-2")
    assert str(JobId("deliver", "abc", "hubspot")) == "deliver:abc:hubspot"


def test_claim_takes_only_due_jobs_and_leases_them(redis_client: redis.Redis) -> None:
    book = JobBook(redis_client, lease_seconds=30)
    book.schedule("fetch:now")
    book.schedule("fetch:later", delay=60)
    assert book.claim() == ["fetch:now"]
    assert book.claim() == []  # leased: a second pump does not take it
    assert book.pending("fetch:now")  # still in the book until finished
    score = redis_client.zscore("exolegs:jobs", "fetch:now")
    assert score is not None and score > time.time() + 25


def test_lease_expiry_makes_a_job_due_again(redis_client: redis.Redis) -> None:
    book = JobBook(redis_client, lease_seconds=0.3)
    book.schedule("fetch:crashy")
    assert book.claim() == ["fetch:crashy"]
    time.sleep(0.4)
    assert book.claim() == ["fetch:crashy"]  # the worker holding it died


def test_schedule_is_idempotent_and_finish_removes(redis_client: redis.Redis) -> None:
    book = JobBook(redis_client)
    assert book.schedule("fetch:a") is True
    assert book.schedule("fetch:a") is False
    book.begin("fetch:a")
    book.finish("fetch:a")
    assert not book.pending("fetch:a")
    assert book.info("fetch:a") == {}


def test_reschedule_moves_only_existing_jobs(redis_client: redis.Redis) -> None:
    book = JobBook(redis_client)
    book.reschedule("fetch:ghost", 0)
    assert not book.pending("fetch:ghost")
    book.schedule("fetch:a")
    book.reschedule("fetch:a", 100)
    assert book.claim() == []


def test_begin_counts_attempts_and_allows_one_copy(redis_client: redis.Redis) -> None:
    book = JobBook(redis_client)
    assert book.begin("fetch:a") == "stale"  # not booked: a stale message
    book.schedule("fetch:a")
    first = book.begin("fetch:a")
    assert isinstance(first, Started) and first.attempt == 1 and not first.force
    assert book.begin("fetch:a") == "busy"  # a second copy while the first runs
    book.unlock("fetch:a")
    second = book.begin("fetch:a")
    assert isinstance(second, Started) and second.attempt == 2
    book.undo_attempt("fetch:a")
    info = book.info("fetch:a")
    assert info["attempts"] == "1" and "first_attempt" in info and "last_attempt" in info
    book.finish("fetch:a")
    assert book.begin("fetch:a") == "stale"
    assert not redis_client.exists("exolegs:job:fetch:a:lock")


def test_pump_dispatches_due_jobs(redis_client: redis.Redis) -> None:
    book = JobBook(redis_client)
    seen: list[JobId] = []
    for n in range(5):
        book.schedule(jobs.fetch_id(f"c{n}"))
    pump = Pump(book, seen.extend, interval=0.05).start()
    try:
        deadline = time.time() + 5
        while len(seen) < 5 and time.time() < deadline:
            time.sleep(0.05)
    finally:
        pump.stop()
    assert sorted(j.call_sid for j in seen) == [f"c{n}" for n in range(5)]


def test_pump_batches_a_backlog_by_kind_and_sink(redis_client: redis.Redis) -> None:
    book = JobBook(redis_client)
    for n in range(100):
        book.schedule(jobs.fetch_id(f"c{n}"))
        book.schedule(jobs.deliver_id(f"c{n}", "crm"))
    book.schedule(jobs.deliver_id("c0", "jsonl"))
    messages: list[list[JobId]] = []
    Pump(book, messages.append).run_once()
    assert all(len({(j.kind, j.sink) for j in m}) == 1 for m in messages)  # never mixed
    assert max(len(m) for m in messages) == 16
    assert sum(len(m) for m in messages) == 201


def test_pump_stops_at_the_high_water_mark(redis_client: redis.Redis) -> None:
    book = JobBook(redis_client)
    for n in range(10):
        book.schedule(jobs.fetch_id(f"c{n}"))
    messages: list[list[JobId]] = []
    assert Pump(book, messages.append, queued=lambda: 64, high_water=64).run_once() == 0
    assert messages == [] and len(book.claim()) == 10  # still due, nobody leased them


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
