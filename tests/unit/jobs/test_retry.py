from __future__ import annotations

import logging
import random

import pytest

from worker.errors import ConfigFaultError, PermanentError, RateLimitedError, TransientError
from worker.jobs import Outcome
from worker.jobs.retry import backoff, decide, within_retention
from worker.settings import Settings

SETTINGS = Settings.from_env(
    {"RETRY_BASE_SECONDS": "5", "RETRY_MAX_SECONDS": "600", "RETRY_MAX_ATTEMPTS": "12"},
    dotenv=False,
)


def test_backoff_is_full_jitter_under_an_exponential_cap() -> None:
    rng = random.Random(1)
    for attempt, cap in [(1, 5), (2, 10), (3, 20), (8, 600), (20, 600)]:
        samples = [backoff(attempt, 5, 600, rng) for _ in range(300)]
        assert all(0 <= s <= cap for s in samples)
        assert max(samples) > cap * 0.8  # the whole range is used, not a fixed delay
        assert min(samples) < cap * 0.2


def test_transient_errors_retry_until_attempts_run_out() -> None:
    err = TransientError("legs not ready")
    assert decide(err, 1, SETTINGS).action is Outcome.RETRY
    assert decide(err, 11, SETTINGS).action is Outcome.RETRY
    assert decide(err, 12, SETTINGS).action is Outcome.DEAD


def test_retry_after_is_a_floor() -> None:
    err = RateLimitedError("429", retry_after=30)
    for _ in range(50):
        decision = decide(err, 1, SETTINGS)
        assert decision.action is Outcome.RETRY and decision.delay >= 30


def test_per_error_attempt_limit_for_call_not_found() -> None:
    err = TransientError("404/10744", max_attempts=3)
    assert decide(err, 2, SETTINGS).action is Outcome.RETRY
    assert decide(err, 3, SETTINGS).action is Outcome.DEAD


def test_permanent_dead_letters_at_once_and_config_faults_park() -> None:
    assert decide(PermanentError("bad"), 1, SETTINGS).action is Outcome.DEAD
    parked = decide(ConfigFaultError("401/1010"), 50, SETTINGS)
    assert parked.action is Outcome.PARKED and parked.delay > 0


def test_a_retry_after_beyond_half_the_retention_is_cut_with_an_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = SETTINGS.with_(retention_hours=0.01)  # 36 s
    with caplog.at_level(logging.ERROR, logger="exolegs.retry"):
        decision = decide(RateLimitedError("slow down", retry_after=86400), 1, settings)
    assert decision.action is Outcome.RETRY and decision.delay == pytest.approx(18)
    assert "beyond half of RETENTION_HOURS" in caplog.text


def test_no_wait_outlives_half_the_retention(caplog: pytest.LogCaptureFixture) -> None:
    """Parking and rate-limit waits are cut too: the call's state must outlive every wait."""
    settings = SETTINGS.with_(retention_hours=0.01, circuit_probe_seconds=600)  # 36 s
    with caplog.at_level(logging.ERROR, logger="exolegs.retry"):
        parked = decide(ConfigFaultError("401/1010"), 1, settings)
        slot = within_retention(5000.0, settings, "a rate-limit slot")
    assert parked.action is Outcome.PARKED and parked.delay == pytest.approx(18)
    assert slot == pytest.approx(18)
    assert caplog.text.count("beyond half of RETENTION_HOURS") == 2
    assert within_retention(3.0, settings, "a short wait") == 3.0
