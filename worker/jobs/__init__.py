"""Durable work: the job book and everything that decides when a job runs.

The book (due jobs in Redis, fenced claims, owned and renewed locks), the
pump that hands them to Celery, the heartbeat, the retry policy, circuits,
rate limits, the delivery ledger and dead letters. This package alone names
and writes the job book's keys; other code calls :class:`JobBook`.
"""

from __future__ import annotations

from worker.jobs.book import (
    DELIVER,
    FETCH,
    JOBS,
    Batch,
    Commit,
    JobBook,
    JobId,
    Outcome,
    Started,
    deliver_id,
    fetch_id,
)

__all__ = [
    "DELIVER",
    "FETCH",
    "JOBS",
    "Batch",
    "Commit",
    "JobBook",
    "JobId",
    "Outcome",
    "Started",
    "deliver_id",
    "fetch_id",
]
