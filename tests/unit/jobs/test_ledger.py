from __future__ import annotations

from pathlib import Path

import pytest
import redis

from worker import keys
from worker.errors import TransientError
from worker.jobs import ledger
from worker.settings import Settings
from worker.sinks.base import SinkContext
from worker.sinks.jsonl import JsonlSink
from worker.sinks.memory import MemorySink


@pytest.fixture(autouse=True)
def _clean_memory() -> None:
    MemorySink.reset()


def test_a_sink_gets_a_call_once_unless_forced(redis_client: redis.Redis) -> None:
    sink = MemorySink("memory://once", SinkContext(Settings()))
    record = {"call_sid": "c1", "n": 1}
    assert ledger.deliver_once(redis_client, sink, record, retention_seconds=60)
    assert not ledger.deliver_once(redis_client, sink, record, retention_seconds=60)
    assert MemorySink.attempts["once"] == 1
    assert ledger.deliver_once(redis_client, sink, record, retention_seconds=60, force=True)
    assert MemorySink.attempts["once"] == 2


def test_a_failed_delivery_is_not_recorded(redis_client: redis.Redis) -> None:
    sink = MemorySink("memory://flaky?fail=1", SinkContext(Settings()))
    with pytest.raises(TransientError):
        ledger.deliver_once(redis_client, sink, {"call_sid": "c1"}, retention_seconds=60)
    assert not ledger.delivered(redis_client, "c1", sink.name)
    assert ledger.deliver_once(redis_client, sink, {"call_sid": "c1"}, retention_seconds=60)
    assert ledger.delivered(redis_client, "c1", sink.name)


def test_unknown_outcome_asks_the_destination_before_writing_again(
    redis_client: redis.Redis, tmp_path: Path
) -> None:
    sink = JsonlSink(f"jsonl://{tmp_path}/calls.jsonl", SinkContext(Settings()))
    record = {"schema": "exolegs.call/v1", "call_sid": "c9"}
    sink.deliver(record)  # written, then the worker "died" before the ledger said so
    redis_client.hset(keys.ledger("c9"), sink.name, "pending:1")
    assert not ledger.deliver_once(redis_client, sink, record, retention_seconds=60)
    assert (tmp_path / "calls.jsonl").read_text().count('"c9"') == 1
    assert ledger.delivered(redis_client, "c9", sink.name)
    # a pending entry whose write never happened is written
    redis_client.hset(keys.ledger("c10"), sink.name, "pending:1")
    assert ledger.deliver_once(redis_client, sink, {"call_sid": "c10"}, retention_seconds=60)
    assert (tmp_path / "calls.jsonl").read_text().count('"c10"') == 1


def test_keep_alive_extends_the_calls_state_but_never_shortens_or_expires_a_held_one(
    redis_client: redis.Redis,
) -> None:
    record, ledger_key, call = ledger.state_keys("k1")
    redis_client.set(record, b"{}", ex=10)
    redis_client.hset(ledger_key, "a", "1")  # held for a dead letter: no TTL
    redis_client.hset(call, "terminal", "{}")
    redis_client.expire(call, 10_000)
    assert ledger.keep_alive(redis_client, "k1", 3600) == b"{}"
    assert 3500 < redis_client.ttl(record) <= 3600
    assert redis_client.ttl(ledger_key) == -1
    assert redis_client.ttl(call) > 9000
    assert ledger.keep_alive(redis_client, "nothing", 3600) is None
    assert not redis_client.exists(*ledger.state_keys("nothing"))


def test_a_delivery_never_puts_a_ttl_on_a_held_ledger(redis_client: redis.Redis) -> None:
    sink = MemorySink("memory://held", SinkContext(Settings()))
    redis_client.hset(keys.ledger("k2"), "other", "1")  # another sink's dead letter holds it
    assert ledger.deliver_once(redis_client, sink, {"call_sid": "k2"}, retention_seconds=60)
    assert redis_client.ttl(keys.ledger("k2")) == -1
    assert ledger.deliver_once(redis_client, sink, {"call_sid": "k3"}, retention_seconds=60)
    assert 0 < redis_client.ttl(keys.ledger("k3")) <= 60
