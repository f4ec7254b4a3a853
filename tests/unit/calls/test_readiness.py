"""Legs readiness: the first-fetch delay rises when Exotel keeps answering 10743, and falls back."""

from __future__ import annotations

import pytest
import redis

from worker import jobs, keys
from worker.calls import readiness
from worker.calls.callbacks import event_from_fields
from worker.calls.intake import Intake
from worker.settings import Settings


def settings(**env: str) -> Settings:
    return Settings.from_env({"FETCH_DELAY_SECONDS": "30", **env}, dotenv=False)


def test_more_than_a_fifth_too_early_raises_the_delay_within_its_ceiling(
    redis_client: redis.Redis,
) -> None:
    s = settings(FETCH_DELAY_MAX_SECONDS="60")
    for n in range(20):
        readiness.note_first_fetch(redis_client, s, ready=n % 2 == 0, terminal_at=None)
    delays = [readiness.adjust(redis_client, s) for _ in range(5)]
    assert delays[0] == 45.0 and delays[-1] == 60.0  # x1.5, then capped
    assert readiness.current_delay(redis_client, s) == 60.0
    seen = readiness.summary(redis_client, s)
    assert seen.first_fetches == 20 and seen.not_ready == 10 and seen.raised
    assert "raised from 30s" in seen.describe() and "50% too early" in seen.describe()


def test_a_healthy_hour_brings_it_back_down(redis_client: redis.Redis) -> None:
    s = settings()
    redis_client.set(keys.READINESS_DELAY, "67.5")
    now = float(redis_client.time()[0])
    for _ in range(40):
        readiness.note_first_fetch(redis_client, s, ready=True, terminal_at=now - 20)
    assert readiness.adjust(redis_client, s) == 45.0
    assert readiness.adjust(redis_client, s) == 30.0
    assert redis_client.get(keys.READINESS_DELAY) is None
    mean = readiness.summary(redis_client, s).mean_ready_seconds
    assert mean is not None and 19 <= mean <= 25


def test_few_samples_change_nothing(redis_client: redis.Redis) -> None:
    s = settings()
    for _ in range(readiness.MIN_SAMPLES - 1):
        readiness.note_first_fetch(redis_client, s, ready=False, terminal_at=None)
    assert readiness.adjust(redis_client, s) == 30.0


def test_callbacks_book_their_fetch_after_the_raised_delay(redis_client: redis.Redis) -> None:
    redis_client.set(keys.READINESS_DELAY, "90")
    intake = Intake(redis_client, retention_seconds=3600, fetch_delay=30)
    now = float(redis_client.time()[0])
    intake.accept(event_from_fields({"CallSid": "r1", "Status": "completed"}))
    due = redis_client.zscore(jobs.JOBS, "fetch:r1")
    assert due is not None and 85 <= due - now <= 95
    # A swept call ended long ago: it states its own delay.
    intake.accept(event_from_fields({"CallSid": "r2", "Status": "completed"}), fetch_delay=0)
    due = redis_client.zscore(jobs.JOBS, "fetch:r2")
    assert due is not None and due - now <= 5


def test_readyz_fields_report_the_delay_without_any_call(
    redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(readiness, "READYZ_CACHE_SECONDS", 0.0)
    s = settings()
    assert readiness.readyz_fields(redis_client, s) == {
        "fetch_delay_seconds": 30.0,
        "fetch_delay_raised": False,
    }
    redis_client.set(keys.READINESS_DELAY, "45")
    assert readiness.readyz_fields(redis_client, s)["fetch_delay_raised"] is True
