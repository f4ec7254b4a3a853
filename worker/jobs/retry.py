"""The retry policy: exponential backoff with full jitter, Retry-After honoured."""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass

from worker.errors import ExolegsError, Kind
from worker.jobs.book import Outcome
from worker.settings import Settings

log = logging.getLogger("exolegs.retry")



@dataclass(frozen=True)
class Decision:
    action: Outcome  # RETRY, PARKED or DEAD
    delay: float = 0.0


def backoff(attempt: int, base: float, cap: float, rng: random.Random | None = None) -> float:
    """Full jitter: uniform between 0 and min(cap, base * 2**(attempt-1))."""
    ceiling = min(cap, base * (2 ** max(0, attempt - 1)))
    return (rng or random).uniform(0, ceiling)


def decide(
    error: ExolegsError, attempt: int, settings: Settings, rng: random.Random | None = None
) -> Decision:
    """What to do after ``attempt`` (1-based) failed with ``error``."""
    if error.kind is Kind.PERMANENT:
        return Decision(Outcome.DEAD)
    if error.kind is Kind.CONFIG:
        return Decision(Outcome.PARKED, float(settings.circuit_probe_seconds))
    limit = min(settings.retry_max_attempts, error.max_attempts or settings.retry_max_attempts)
    if attempt >= limit:
        return Decision(Outcome.DEAD)
    delay = backoff(attempt, settings.retry_base_seconds, settings.retry_max_seconds, rng)
    if error.retry_after is not None:
        delay = max(delay, error.retry_after)
    # A job must run again while its call's state is still kept (each run
    # extends it by the retention), or a late delivery would have no ledger.
    longest = settings.retention_seconds / 2
    if delay > longest:
        log.error(
            "a retry in %.0fs was asked for (%s), beyond half of RETENTION_HOURS: retrying in "
            "%.0fs instead so the call's delivery ledger is still there; raise RETENTION_HOURS "
            "if this upstream really needs that long",
            delay,
            error.message[:200],
            longest,
        )
        delay = longest
    return Decision(Outcome.RETRY, delay)
