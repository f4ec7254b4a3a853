from __future__ import annotations

import time

import redis

from worker import jobs
from worker.jobs import JobBook, JobId, Pump


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
    book.start_attempt("fetch:a")
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


def test_attempts_and_lock(redis_client: redis.Redis) -> None:
    book = JobBook(redis_client)
    assert book.start_attempt("fetch:a") == 1
    assert book.start_attempt("fetch:a") == 2
    book.undo_attempt("fetch:a")
    info = book.info("fetch:a")
    assert info["attempts"] == "1" and "first_attempt" in info
    assert book.lock("fetch:a") and not book.lock("fetch:a")
    book.unlock("fetch:a")
    assert book.lock("fetch:a")


def test_pump_dispatches_due_jobs(redis_client: redis.Redis) -> None:
    book = JobBook(redis_client)
    seen: list[JobId] = []
    for n in range(5):
        book.schedule(jobs.fetch_id(f"c{n}"))
    pump = Pump(book, seen.append, interval=0.05).start()
    try:
        deadline = time.time() + 5
        while len(seen) < 5 and time.time() < deadline:
            time.sleep(0.05)
    finally:
        pump.stop()
    assert sorted(j.call_sid for j in seen) == [f"c{n}" for n in range(5)]
