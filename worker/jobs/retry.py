"""The retry policy: exponential backoff with full jitter, Retry-After honoured."""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass

from worker.errors import ExolegsError, Kind
from worker.jobs.book import Outcome
from worker.settings import Settings

log = logging.getLogger("exolegs.retry")


def within_retention(delay: float, settings: Settings, what: str) -> float:
    """``delay``, cut to half of RETENTION_HOURS with an ERROR when longer.

    A job must run again while its call's state is still kept (each run
    extends it), or a late delivery would have no record and no ledger: so
    no wait (a retry, a parked job's next look, a rate-limit slot) may be
    longer than half the retention.
    """
    longest = settings.retention_seconds / 2
    if delay <= longest:
        return delay
    log.error(
        "%s in %.0fs was asked for, beyond half of RETENTION_HOURS: it runs again in %.0fs "
        "instead so the call's record and delivery ledger are still there; raise "
        "RETENTION_HOURS if this upstream really needs that long",
        what,
        delay,
        longest,
    )
    return longest


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
        wait = within_retention(float(settings.circuit_probe_seconds), settings, "parking")
        return Decision(Outcome.PARKED, wait)
    limit = min(settings.retry_max_attempts, error.max_attempts or settings.retry_max_attempts)
    if attempt >= limit:
        return Decision(Outcome.DEAD)
    delay = backoff(attempt, settings.retry_base_seconds, settings.retry_max_seconds, rng)
    if error.retry_after is not None:
        delay = max(delay, error.retry_after)
    delay = within_retention(delay, settings, f"a retry ({error.message[:200]})")
    return Decision(Outcome.RETRY, delay)
