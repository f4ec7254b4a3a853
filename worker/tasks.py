"""Thin Celery tasks: decode ids, apply the retry policy, bind log context.

The work is in :mod:`worker.pipeline`; the waiting is in the job book.
"""

from __future__ import annotations

import logging

from worker import jobs, pipeline
from worker.celery_app import app
from worker.errors import Deferred, ExolegsError, Kind, TransientError
from worker.jobs import JobId, Pump
from worker.retry import DEAD, PARK, decide
from worker.runtime import Runtime

log = logging.getLogger("exolegs.tasks")


@app.task(name="exolegs.fetch_legs", ignore_result=True)
def fetch_legs(call_sid: str) -> str:
    return execute(app.runtime(), JobId(jobs.FETCH, call_sid))


@app.task(name="exolegs.deliver", ignore_result=True)
def deliver(call_sid: str, sink: str) -> str:
    return execute(app.runtime(), JobId(jobs.DELIVER, call_sid, sink))


def dispatch(job: JobId) -> None:
    if job.kind == jobs.FETCH:
        fetch_legs.apply_async(args=[job.call_sid])
    else:
        deliver.apply_async(args=[job.call_sid, job.sink])


def execute(rt: Runtime, job: JobId) -> str:
    """Run one job once; returns what happened (for logs and tests)."""
    job_id = str(job)
    if not rt.book.pending(job_id):
        return "stale"  # finished already: a repeated or restored message
    if not rt.book.lock(job_id):
        return "busy"  # another copy is running; the book re-dispatches if it dies
    context = f"call={job.call_sid} job={job_id}"
    try:
        attempt = rt.book.start_attempt(job_id)
        try:
            if job.kind == jobs.FETCH:
                pipeline.fetch_call(rt, job.call_sid)
            else:
                force = rt.book.info(job_id).get("force") == "1"
                pipeline.deliver_call(rt, job.call_sid, job.sink or "", force=force)
        except Deferred as wait:
            rt.book.undo_attempt(job_id)
            rt.book.reschedule(job_id, wait.delay)
            log.debug("%s deferred: %s", context, wait.reason)
            return "deferred"
        except ExolegsError as err:
            return _failed(rt, job, attempt, err)
        except Exception as err:
            log.exception("%s failed unexpectedly; will retry", context)
            wrapped = TransientError(f"unexpected {type(err).__name__}: {err}")
            return _failed(rt, job, attempt, wrapped)
        rt.book.finish(job_id)
        log.info("%s done (attempt %d)", context, attempt)
        return "done"
    finally:
        rt.book.unlock(job_id)


def _failed(rt: Runtime, job: JobId, attempt: int, err: ExolegsError) -> str:
    job_id = str(job)
    decision = decide(err, attempt, rt.settings)
    rt.book.record_error(job_id, err.message)
    context = f"call={job.call_sid} job={job_id} attempt={attempt}"
    if decision.action == DEAD:
        from worker.intake import terminal_callback

        callback, _, _ = terminal_callback(rt.redis, job.call_sid)
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
        rt.limiter.block(rt.exotel_limit_name, err.retry_after)
    rt.book.reschedule(job_id, decision.delay)
    log.warning("%s will retry in %.1fs: %s", context, decision.delay, err.message)
    return "retry"


def start_pump() -> Pump:
    rt = app.runtime()
    app.pump = Pump(rt.book, dispatch).start()
    log.info("job pump started (lease %.0fs)", rt.settings.job_lease_seconds)
    return app.pump


def stop_pump() -> None:
    if app.pump is not None:
        app.pump.stop()
        app.pump = None
