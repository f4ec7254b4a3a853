"""Durable work: the job book and everything that decides when a job runs.

The book (due jobs in Redis, fenced claims), the pump that hands them to
Celery, the retry policy, circuits, rate limits, the delivery ledger and dead
letters. This package alone writes the job book's keys; others call it.
"""

from __future__ import annotations

from worker.jobs.book import DELIVER, FETCH, JobBook, JobId, Started, deliver_id, fetch_id

__all__ = ["DELIVER", "FETCH", "JobBook", "JobId", "Started", "deliver_id", "fetch_id"]
