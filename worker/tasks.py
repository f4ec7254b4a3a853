"""Thin Celery tasks: decode ids, apply the retry policy, bind log context.

The work is in :mod:`worker.pipeline`; the waiting is in the job book.
"""

from __future__ import annotations

import logging
import time

from worker import jobs, pipeline
from worker.celery_app import app
from worker.errors import Deferred, ExolegsError, Kind, TransientError
from worker.jobs import JobId
from worker.jobs.pump import Pump
from worker.jobs.retry import DEAD, PARK, decide
from worker.runtime import Runtime
from worker.settings import DEFAULT_ACCOUNT

log = logging.getLogger("exolegs.tasks")


# Past this much time in one batch, a task hands the rest back to the book:
# every job must start well inside its lease.
BATCH_BUDGET_FRACTION = 0.25


@app.task(name="exolegs.fetch_legs", ignore_result=True)
def fetch_legs(call_sids: list[str], account: str = DEFAULT_ACCOUNT) -> list[str]:
    """Fetch and enrich each call of one account (a batch when there is a backlog)."""
    return run_batch(app.runtime(), [JobId(jobs.FETCH, sid, None, account) for sid in call_sids])


@app.task(name="exolegs.deliver", ignore_result=True)
def deliver(call_sids: list[str], sink: str, account: str = DEFAULT_ACCOUNT) -> list[str]:
    """Deliver each call of one account to one sink; other sinks have their own tasks."""
    return run_batch(app.runtime(), [JobId(jobs.DELIVER, sid, sink, account) for sid in call_sids])


def dispatch(batch: list[JobId]) -> None:
    """One message per batch; a batch holds one kind of job of one account (and one sink)."""
    first = batch[0]
    sids = [job.call_sid for job in batch]
    extra = {} if first.account == DEFAULT_ACCOUNT else {"account": first.account}
    if first.kind == jobs.FETCH:
        fetch_legs.apply_async(args=[sids], kwargs=extra)
    else:
        deliver.apply_async(args=[sids, first.sink], kwargs=extra)


def run_batch(rt: Runtime, batch: list[JobId]) -> list[str]:
    """Each job on its own; what is left when the time budget runs out goes back due now."""
    deadline = time.monotonic() + rt.settings.job_lease_seconds * BATCH_BUDGET_FRACTION
    outcomes = []
    for n, job in enumerate(batch):
        if time.monotonic() > deadline:
            for rest in batch[n:]:
                rt.book.reschedule(str(rest), 0)
            outcomes += ["handed back"] * (len(batch) - n)
            break
        outcomes.append(execute(rt, job))
    return outcomes


def execute(rt: Runtime, job: JobId) -> str:
    """Run one job once; returns what happened (for logs and tests)."""
    job_id = str(job)
    started = rt.book.begin(job_id, pipeline.upstream_of(rt, job))
    if isinstance(started, str):
        return started  # "stale": finished already; "busy": another copy runs it
    context = f"call={job.call_sid} job={job_id}"
    attempt = started.attempt
    try:
        if job.kind == jobs.FETCH:
            pipeline.fetch_call(
                rt, job.call_sid, account=job.account, circuit_open=started.circuit_open
            )
        else:
            pipeline.deliver_call(
                rt,
                job.call_sid,
                job.sink or "",
                account=job.account,
                force=started.force,
                circuit_open=started.circuit_open,
            )
    except Deferred as wait:
        rt.book.undo_attempt(job_id)
        rt.book.reschedule(job_id, wait.delay)
        log.debug("%s deferred: %s", context, wait.reason)
        outcome = "deferred"
    except ExolegsError as err:
        outcome = _failed(rt, job, attempt, err)
    except Exception as err:
        log.exception("%s failed unexpectedly; will retry", context)
        wrapped = TransientError(f"unexpected {type(err).__name__}: {err}")
        outcome = _failed(rt, job, attempt, wrapped)
    else:
        rt.book.finish(job_id)  # also drops the lock
        log.info("%s done (attempt %d)", context, attempt)
        return "done"
    rt.book.unlock(job_id)
    return outcome


def _failed(rt: Runtime, job: JobId, attempt: int, err: ExolegsError) -> str:
    job_id = str(job)
    decision = decide(err, attempt, rt.settings)
    rt.book.record_error(job_id, err.message)
    context = f"call={job.call_sid} job={job_id} attempt={attempt}"
    if decision.action == DEAD and job.kind == jobs.FETCH and pipeline.legs_absent(err):
        # Exotel never had the legs: the callback still says who called and how
        # it ended, so the sinks get that (legs: unavailable), not a dead letter.
        record = pipeline.deliver_without_legs(rt, job.call_sid, job.account)
        rt.book.finish(job_id)
        if record is not None:
            log.warning(
                "%s legs unavailable (%s): delivering the record built from the callback",
                context,
                err.message,
            )
        return "unavailable"
    if decision.action == DEAD:
        from worker.calls.intake import terminal_callback

        callback, _, _ = terminal_callback(rt.redis, job.call_sid, job.account)
        reason = "permanent error" if err.kind is Kind.PERMANENT else "retries exhausted"
        rt.dead.add(
            job,
            reason=reason,
            error=err.message,
            upstream_status=err.upstream_status,
            upstream_code=err.upstream_code,
            callback=callback,
        )
        log.error(
            "%s dead-lettered (%s): %s; see `exolegs dead show %s`",
            context,
            reason,
            err.message,
            job.call_sid,
        )
        return "dead"
    if decision.action == PARK:
        rt.book.undo_attempt(job_id)
        rt.book.reschedule(job_id, decision.delay)
        log.debug("%s parked for %.0fs: %s", context, decision.delay, err.message)
        return "parked"
    if err.kind is Kind.RATE_LIMITED and job.kind == jobs.FETCH and err.retry_after:
        rt.limiter.block(pipeline.upstream_of(rt, job), err.retry_after)
    rt.book.reschedule(job_id, decision.delay)
    log.warning("%s will retry in %.1fs: %s", context, decision.delay, err.message)
    return "retry"


def start_pump() -> Pump:
    rt = app.runtime()
    queue = app.conf.task_default_queue
    app.pump = Pump(rt.book, dispatch, queued=lambda: int(rt.redis.llen(queue))).start()
    log.info("job pump started (lease %.0fs)", rt.settings.job_lease_seconds)
    return app.pump


def stop_pump() -> None:
    if app.pump is not None:
        app.pump.stop()
        app.pump = None
