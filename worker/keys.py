"""Every Redis key exolegs uses, in one place, so operators can find them."""

from __future__ import annotations

PREFIX = "exolegs"


def call(call_sid: str) -> str:
    """Hash of everything received for a call: events seen, callbacks, whether a fetch is booked."""
    return f"{PREFIX}:call:{call_sid}"


def record(call_sid: str) -> str:
    """The enriched record (JSON) once fetched, kept for deliveries and replays."""
    return f"{PREFIX}:record:{call_sid}"


def ledger(call_sid: str) -> str:
    """Hash sink name -> delivered-at: each sink gets each call once."""
    return f"{PREFIX}:ledger:{call_sid}"


JOBS = f"{PREFIX}:jobs"  # sorted set: job id -> due time (unix seconds)


def job(job_id: str) -> str:
    """Hash of a job's attempts, first/last attempt times and last error."""
    return f"{PREFIX}:job:{job_id}"


EPOCH = f"{PREFIX}:epoch"  # hash: id, created_at[, wiped_at, previous]; see worker/checks.py

DEAD = f"{PREFIX}:dead"  # sorted set: job id -> failed-at


def dead(job_id: str) -> str:
    return f"{PREFIX}:dead:{job_id}"


def bucket(name: str) -> str:
    """Token bucket state for a rate limit (Exotel account, sink, callback client)."""
    return f"{PREFIX}:bucket:{name}"


def circuit(name: str) -> str:
    return f"{PREFIX}:circuit:{name}"


def token_cache(name: str) -> str:
    """Shared OAuth access tokens (Zoho, Salesforce), so workers do not each mint one."""
    return f"{PREFIX}:oauth:{name}"
