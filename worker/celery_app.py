"""The Celery app: the project's only module-level global, configured at start-up."""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from celery import Celery, signals

from worker.settings import Settings

if TYPE_CHECKING:
    from worker.calls.reconcile import Sweeper
    from worker.jobs.pump import Pump
    from worker.runtime import Runtime

log = logging.getLogger("exolegs.worker")


class ExolegsCelery(Celery):  # type: ignore[misc]
    """The Celery app, carrying this process's Runtime and job pump."""

    _runtime: tuple[int, Runtime] | None = None
    pump: Pump | None = None
    sweeper: Sweeper | None = None

    def runtime(self) -> Runtime:
        """One Runtime per process, built after fork so no connection is shared."""
        from worker.runtime import Runtime

        pid = os.getpid()
        if self._runtime is None or self._runtime[0] != pid:
            self._runtime = (pid, Runtime(current_settings()))
        return self._runtime[1]


app = ExolegsCelery("exolegs")
app.conf.update(task_default_queue="exolegs")

# Broker redelivery backstop. The job book re-dispatches a killed worker's job
# after JOB_LEASE_SECONDS; this only bounds how long a stale message lingers.
VISIBILITY_TIMEOUT = 300


def guard_kombu_restore() -> None:
    """Survive a Redis restart: kombu's work on a torn-down channel must not kill us.

    When Redis goes away, kombu closes the broker channel (its connection
    becomes None) and restores unacked messages through it, which raises
    AttributeError (kombu #582) and stops the worker as "Unrecoverable". So
    does acking or rejecting, on that closed channel, a task that finishes
    while Redis is away. Leaving those messages in ``unacked`` is safe: the
    visibility timeout restores them, and their jobs were finished or are
    re-sent by the job book after the lease (a restored message is stale).
    """
    from kombu.transport import redis as kombu_redis

    for name in ("restore_unacked", "ack", "reject"):
        original = getattr(kombu_redis.QoS, name)
        if not getattr(original, "_exolegs_guarded", False):
            setattr(kombu_redis.QoS, name, _survive_closed_channel(name, original))


def _survive_closed_channel(name: str, original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def guarded(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return original(self, *args, **kwargs)
        except AttributeError as err:
            log.warning(
                "broker connection already gone (%s: %s); the message stays unacked "
                "until the visibility timeout, and the job book covers its job",
                name,
                err,
            )
            return None

    guarded._exolegs_guarded = True  # type: ignore[attr-defined]
    return guarded


def configure(settings: Settings) -> Celery:
    """Point the app at Redis and apply the reliability settings (docs/reliability.md)."""
    guard_kombu_restore()
    options: dict[str, Any] = {"visibility_timeout": VISIBILITY_TIMEOUT}
    conf: dict[str, Any] = dict(
        broker_url=settings.redis_url,
        broker_transport_options=options,
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,
        result_backend=None,
        task_ignore_result=True,
        task_serializer="json",
        accept_content=["json"],
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_acks_on_failure_or_timeout=True,
        worker_prefetch_multiplier=1,
        worker_cancel_long_running_tasks_on_connection_loss=True,
        worker_soft_shutdown_timeout=20.0,
        worker_enable_soft_shutdown_on_idle=False,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        task_soft_time_limit=int(settings.job_lease_seconds * 0.5),
        task_time_limit=int(settings.job_lease_seconds * 0.75),
        exolegs_settings=settings,
    )
    from worker.runtime import redis_tls_options

    tls = redis_tls_options(settings)
    if tls:
        conf["broker_use_ssl"] = tls
    app.conf.update(conf)
    return app


def current_settings() -> Settings:
    settings = app.conf.get("exolegs_settings")
    if settings is None:
        # A bare `celery -A worker.celery_app worker` start: build them now, once.
        settings = Settings.from_env()
        configure(settings)
    assert isinstance(settings, Settings)
    return settings


@signals.worker_ready.connect
def _start_pump(sender: Any = None, **_: Any) -> None:
    from worker.tasks import start_pump

    start_pump()


@signals.worker_shutting_down.connect
def _stop_pump(**_: Any) -> None:
    from worker.tasks import stop_pump

    stop_pump()


@signals.worker_ready.connect
def _start_sweeper(sender: Any = None, **_: Any) -> None:
    """The reconciliation sweeper's scheduler thread (worker/calls/reconcile.py)."""
    from worker.calls.reconcile import Sweeper

    if current_settings().reconcile:
        app.sweeper = Sweeper(app.runtime).start()
        log.info("reconciliation sweeper started")


@signals.worker_shutting_down.connect
def _stop_sweeper(**_: Any) -> None:
    if app.sweeper is not None:
        app.sweeper.stop()
        app.sweeper = None
