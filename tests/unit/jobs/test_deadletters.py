from __future__ import annotations

import time

import redis

from worker.jobs import JobBook, JobId
from worker.jobs.deadletters import DeadLetters


def test_dead_letter_keeps_reason_attempts_and_callback(redis_client: redis.Redis) -> None:
    book = JobBook(redis_client)
    dead = DeadLetters(redis_client, book)
    job = JobId("deliver", "c1", "hubspot")
    book.schedule(str(job))
    for _ in range(2):
        [batch] = book.claim()
        book.begin(str(job), batch.token)
        book.release(str(job), batch.token, 0)
    letter = dead.add(
        job,
        reason="permanent error",
        error="HubSpot answered 400",
        upstream_status=400,
        callback={"CallSid": "c1"},
    )
    assert not book.pending(str(job))
    [listed] = list(dead)
    assert listed == letter
    assert (listed.call_sid, listed.sink, listed.attempts) == ("c1", "hubspot", 2)
    assert listed.first_attempt_at and listed.last_attempt_at and listed.failed_at
    assert listed.callback == {"CallSid": "c1"}
    fetch = dead.add(JobId("fetch", "c2"), reason="retries exhausted", error="10744")
    assert fetch is not None and fetch.sink is None and dead.count() == 2


def test_replay_books_the_job_again_with_fresh_attempts(redis_client: redis.Redis) -> None:
    book = JobBook(redis_client)
    dead = DeadLetters(redis_client, book)
    job = JobId("deliver", "c1", "jsonl")
    book.schedule(str(job))
    [batch] = book.claim()
    book.begin(str(job), batch.token)
    letter = dead.add(job, token=batch.token, reason="retries exhausted", error="x")
    assert letter is not None
    dead.replay(letter, force=True)
    assert book.pending(str(job)) and dead.count() == 0
    assert book.info(str(job)) == {"force": "1"}


def test_purge_older_than(redis_client: redis.Redis) -> None:
    dead = DeadLetters(redis_client, JobBook(redis_client))
    dead.add(JobId("fetch", "old"), reason="r", error="e")
    redis_client.zadd("exolegs:dead", {"fetch:old": time.time() - 40 * 86400})
    dead.add(JobId("fetch", "new"), reason="r", error="e")
    assert dead.purge(30 * 86400) == 1
    assert [d.call_sid for d in dead] == ["new"]


def test_dead_letters_of_one_account_are_listed_replayed_and_purged_alone(
    redis_client: redis.Redis,
) -> None:
    book = JobBook(redis_client)
    dead = DeadLetters(redis_client, book)
    north = JobId("deliver", "c1", "hubspot", "north")
    assert str(north) == "north/deliver:c1:hubspot" and JobId.parse(str(north)) == north
    dead.add(north, reason="permanent error", error="400")
    dead.add(JobId("fetch", "c1", None, "south"), reason="retries exhausted", error="10744")
    dead.add(JobId("fetch", "c2"), reason="retries exhausted", error="10744")
    assert [d.account for d in dead] == ["north", "south", "default"]
    assert [d.call_sid for d in dead.listed("south")] == ["c1"]
    assert [d.account for d in dead.for_call("c1", "north")] == ["north"]
    (letter,) = dead.listed("north")
    dead.replay(letter)
    assert book.pending("north/deliver:c1:hubspot")
    assert dead.purge(0, "south") == 1
    assert [d.account for d in dead] == ["default"]


def test_purge_reports_progress(redis_client: redis.Redis) -> None:
    dead = DeadLetters(redis_client, JobBook(redis_client))
    for n in range(7):
        dead.add(JobId("fetch", f"old{n}"), reason="r", error="e")
        redis_client.zadd("exolegs:dead", {f"fetch:old{n}": time.time() - 40 * 86400})
    dead.add(JobId("fetch", "new"), reason="r", error="e")
    progress: list[int] = []
    assert dead.purge(30 * 86400, on_progress=progress.append) == 7
    assert sum(progress) == 7
    assert [d.call_sid for d in dead] == ["new"]


def test_discard_gives_the_call_its_ttl_back_like_purge(redis_client: redis.Redis) -> None:
    from worker import keys

    dead = DeadLetters(redis_client, JobBook(redis_client), retention_seconds=3600)
    redis_client.set(keys.record("gone"), "{}", ex=3600)
    dead.add(JobId("deliver", "gone", "crm"), reason="r", error="e")
    dead.add(JobId("deliver", "kept", "crm"), reason="r", error="e")
    assert redis_client.ttl(keys.record("gone")) == -1  # held while it has a dead letter
    assert dead.ids() == ["deliver:gone:crm", "deliver:kept:crm"]
    assert dead.discard(["deliver:gone:crm", "deliver:nothing:crm"]) == 1
    assert dead.ids() == ["deliver:kept:crm"]
    assert 0 < redis_client.ttl(keys.record("gone")) <= 3600
    assert not redis_client.exists(keys.dead_of("gone"))
