from __future__ import annotations

import redis

from worker import jobs, keys
from worker.calls.callbacks import event_from_fields
from worker.calls.intake import Intake, terminal_callback


def intake(redis_client: redis.Redis) -> Intake:
    return Intake(redis_client, retention_seconds=3600, fetch_delay=30)


def test_terminal_books_one_fetch_after_the_delay(redis_client: redis.Redis) -> None:
    got = intake(redis_client).accept(
        event_from_fields({"CallSid": "c1", "Status": "completed", "Direction": "inbound"})
    )
    assert not got.duplicate and got.fetch_booked
    due = redis_client.zscore(jobs.JOBS, "fetch:c1")
    assert due is not None
    fields, status, direction = terminal_callback(redis_client, "c1")
    assert fields["CallSid"] == "c1" and status == "completed" and direction == "inbound"
    assert redis_client.ttl(keys.call("c1")) > 3000


def test_repeat_is_duplicate_and_other_terminal_events_do_not_refetch(
    redis_client: redis.Redis,
) -> None:
    it = intake(redis_client)
    first = it.accept(event_from_fields({"CallSid": "c2", "Status": "completed"}))
    again = it.accept(event_from_fields({"CallSid": "c2", "Status": "completed"}))
    passthru = it.accept(
        event_from_fields({"CallSid": "c2", "DialCallStatus": "no-answer", "CallType": "completed"})
    )
    assert first.fetch_booked and again.duplicate and not again.fetch_booked
    assert not passthru.duplicate and not passthru.fetch_booked
    assert redis_client.zcard(jobs.JOBS) == 1


def test_non_terminal_books_nothing(redis_client: redis.Redis) -> None:
    got = intake(redis_client).accept(
        event_from_fields({"CallSid": "c3", "Status": "in-progress", "EventType": "answered"})
    )
    assert not got.duplicate and not got.fetch_booked
    assert redis_client.zcard(jobs.JOBS) == 0
