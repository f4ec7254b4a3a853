"""The worker benchmark's baseline: Celery's own throughput for a task that does nothing.

    BENCH_BROKER_URL=redis://... celery -A bench.noop_app worker -Q bench-noop ...

A separate Celery app (importing ``worker.celery_app`` would start the job
pump in this worker too). Its settings mirror what affects throughput in
``worker.celery_app.configure`` (late acks, prefetch 1, JSON, no results, no
events, the visibility timeout), so the comparison is exolegs' work, not a
different Celery configuration; ``bench/worker.py`` checks they still agree.
The one side effect is an INCR, the least that can be observed from outside.
"""

from __future__ import annotations

import os

import redis
from celery import Celery

QUEUE = "bench-noop"
DONE_KEY = "bench:noop:done"

# Everything in worker.celery_app.configure that changes what a task costs.
SETTINGS: dict[str, object] = {
    "broker_transport_options": {"visibility_timeout": 300},
    "broker_connection_retry_on_startup": True,
    "result_backend": None,
    "task_ignore_result": True,
    "task_serializer": "json",
    "accept_content": ["json"],
    "task_acks_late": True,
    "task_reject_on_worker_lost": True,
    "task_acks_on_failure_or_timeout": True,
    "worker_prefetch_multiplier": 1,
    "worker_hijack_root_logger": False,
    "worker_send_task_events": False,
}

app = Celery("bench-noop")
app.conf.update(
    broker_url=os.environ.get("BENCH_BROKER_URL", "redis://127.0.0.1:6379/0"),
    task_default_queue=QUEUE,
    **SETTINGS,
)

_clients: dict[int, redis.Redis] = {}


def _redis() -> redis.Redis:
    """One client per process, made after the pool forks."""
    pid = os.getpid()
    if pid not in _clients:
        _clients.clear()
        _clients[pid] = redis.Redis.from_url(app.conf.broker_url)
    return _clients[pid]


@app.task(name="bench.noop", ignore_result=True)  # type: ignore[untyped-decorator]
def noop() -> None:
    _redis().incr(DONE_KEY)
