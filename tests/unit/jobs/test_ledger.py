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
