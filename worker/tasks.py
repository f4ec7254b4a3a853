"""Thin Celery tasks: decode ids, apply the retry policy, bind log context.

The work is in :mod:`worker.pipeline`; the waiting is in the job book. Each
message carries the fencing token of the claim that sent it: a job runs only
for its current claim (see :mod:`worker.jobs.book`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from worker import jobs, keys, metrics, pipeline
from worker.celery_app import app
from worker.errors import Deferred, ExolegsError, Kind, TransientError
from worker.jobs import Batch, JobId, Outcome, Started
from worker.jobs.book import Reads, Settle
from worker.jobs.circuit import failures_key
from worker.jobs.pump import Pump
from worker.jobs.retry import decide, within_retention
from worker.logs import bind, log_context
from worker.runtime import Runtime
from worker.settings import DEFAULT_ACCOUNT

if TYPE_CHECKING:
    from redis.client import Pipeline

log = logging.getLogger("exolegs.tasks")


# Past this much time in one batch, a task hands the rest back to the book:
# every job must start well inside its lease.
BATCH_BUDGET_FRACTION = 0.25


@app.task(name="exolegs.fetch_legs", ignore_result=True)
def fetch_legs(call_sids: list[str], account: str = DEFAULT_ACCOUNT, token: str = "") -> list[str]:
    """Fetch and enrich each call of one account (a batch when there is a backlog).

    ``token`` is the fencing token of the claim that sent the message; a
    message without one (from an older worker) runs nothing, and its jobs
    come due again within a lease.
    """
    ids = tuple(JobId(jobs.FETCH, sid, None, account) for sid in call_sids)
    return [str(o) for o in run_batch(app.runtime(), Batch(token, ids, 0.0))]


@app.task(name="exolegs.deliver", ignore_result=True)
def deliver(
    call_sids: list[str], sink: str, account: str = DEFAULT_ACCOUNT, token: str = ""
) -> list[str]:
    """Deliver each call of one account to one sink; other sinks have their own tasks."""
    ids = tuple(JobId(jobs.DELIVER, sid, sink, account) for sid in call_sids)
    return [str(o) for o in run_batch(app.runtime(), Batch(token, ids, 0.0))]


def hand_on(rt: Runtime, woken: int) -> None:
    """A freed sink slot made jobs due: claim and send them now, from this process.

    The pumps would find them at their next poll, up to its interval later;
    with a sink at its cap, that wait came between every two of its messages.
    """
    if woken <= 0:
        return
    try:
        Pump(rt.book, dispatch, queue=app.conf.task_default_queue).run_once()
    except Exception as err:  # noqa: BLE001 - a pump claims them at its next poll anyway
        log.debug("could not hand on a freed slot's jobs (%s); a pump will", err)


def dispatch(batch: Batch) -> None:
    """One message per claimed batch: one kind of job of one account (and one sink).

    It carries the claim's fencing token; its header lets the pump see how
    long the oldest message has waited in the queue.
    """
    first = batch.jobs[0]
    sids = [job.call_sid for job in batch.jobs]
    extra: dict[str, str] = {"token": batch.token}
    if first.account != DEFAULT_ACCOUNT:
        extra["account"] = first.account
    headers = {"exolegs_claimed_at": batch.claimed_at}
    if first.kind == jobs.FETCH:
        fetch_legs.apply_async(args=[sids], kwargs=extra, headers=headers)
    else:
        deliver.apply_async(args=[sids, first.sink], kwargs=extra, headers=headers)


def run_batch(rt: Runtime, batch: Batch) -> list[Outcome]:
    """Each job on its own; what is left when the time budget runs out goes back due now.

    The legs fetches of a batch run up to FETCH_CONCURRENCY at a time: each
    mostly waits on Exotel and Redis, and the waits overlap. Deliveries run
    one at a time, so SINK_CONCURRENCY stays the number of requests a sink
    sees at once; a delivery batch holds one of its sink's slots while it runs.
    Each thread takes the message's next job as it commits the one before,
    and sends that job's opening in the same round trip (:class:`Lane`).
    """
    deadline = time.monotonic() + rt.settings.job_lease_seconds * BATCH_BUDGET_FRACTION
    first = batch.jobs[0]
    trouble = threading.Event()

    def started_now(started: Started) -> Started:
        if trouble.is_set():
            # A job of this message failed since it began: what the begin saw
            # of the upstream's circuit may be out of date, so look again.
            return replace(started, circuit_open=None, failing=True)
        return started

    def opening(item: tuple[JobId, Begun]) -> pipeline.Opening | None:
        job, (started, reads) = item
        if isinstance(started, Outcome):
            return None
        return pipeline.opening_for(rt, job, started_now(started), reads)

    def run(item: tuple[JobId, Begun], lane: Lane) -> Outcome:
        job, (started, reads) = item
        if isinstance(started, Outcome):
            return started  # STALE or BUSY: not this claim's to run
        if time.monotonic() > deadline:
            rt.book.release(str(job), batch.token, 0, undo_attempt=True)
            return Outcome.HANDED_BACK
        with log_context(call_sid=job.call_sid, job=str(job), account=job.account, sink=job.sink):
            outcome = execute(rt, job, batch.token, (started_now(started), reads), lane)
        if outcome not in _UNTROUBLED:
            trouble.set()
        pipeline.report(rt, job, outcome)
        return outcome

    with rt.heartbeat.slot(first.sink, batch.slot, on_free=lambda woken: hand_on(rt, woken)):
        # Every job of the message begins, with its first reads, in one round trip.
        items = list(zip(batch.jobs, begin_all(rt, batch), strict=True))
        outcomes: list[Outcome] = [Outcome.HANDED_BACK] * len(items)
        turns = _Turns(len(items))

        def lane() -> None:
            this = Lane(turns, lambda i: opening(items[i]))
            for i in this:
                outcomes[i] = run(items[i], this)

        threads = rt.settings.fetch_concurrency if first.kind == jobs.FETCH else 1
        threads = min(threads, len(items))
        if threads > 1:
            for done in [rt.fetch_threads.submit(lane) for _ in range(threads)]:
                done.result()
        else:
            lane()
        return outcomes


class _Turns:
    """A message's jobs, handed out in order to the threads that run them."""

    def __init__(self, count: int) -> None:
        self._next = iter(range(count))
        self._lock = threading.Lock()

    def take(self) -> int | None:
        with self._lock:
            return next(self._next, None)


class Lane:
    """One thread's turn through a message's jobs.

    When a job commits, the lane takes its next job there and then and puts
    that job's opening (:class:`worker.pipeline.Opening`) on the same
    ``MULTI``: one round trip instead of two, at the moment the next job
    would send it anyway.
    """

    def __init__(self, turns: _Turns, opening: Callable[[int], pipeline.Opening | None]) -> None:
        self._turns = turns
        self._opening = opening
        self._following: int | None = None
        self._taken = False
        self.opening: pipeline.Opening | None = None  # the current job's, if it went ahead

    def __iter__(self) -> Iterator[int]:
        """The indices of this thread's jobs, each taken when the one before ends or commits."""
        index = self._turns.take()
        while index is not None:
            self._taken, self._following = False, None
            yield index
            if self._taken:
                index = self._following
            else:
                index, self.opening = self._turns.take(), None

    def ride(self, pipe: Pipeline) -> Settle | None:
        """Called as the current job commits: take the next job, queue its opening on ``pipe``."""
        self._taken = True
        self._following = self._turns.take()
        self.opening = None if self._following is None else self._opening(self._following)
        return None if self.opening is None else self.opening.ride(pipe)


#: Outcomes that say nothing about the upstream's health.
_UNTROUBLED = frozenset({Outcome.DONE, Outcome.DEFERRED, Outcome.STALE, Outcome.BUSY})

#: What a job's begin gave: STALE, BUSY or Started, and its first reads.
Begun = tuple[Started | Outcome, list[Any]]


def _begin_args(rt: Runtime, job: JobId) -> tuple[str, str, str, Reads]:
    upstream = pipeline.upstream_of(rt, job)
    return (
        str(job),
        keys.circuit(upstream),
        failures_key(upstream),
        lambda pipe: pipeline.queue_reads(rt, job, pipe),
    )


def begin_all(rt: Runtime, batch: Batch) -> list[Begun]:
    """Begin each job of ``batch`` under its claim, reads included, in one round trip."""
    return rt.book.begin_all(batch.token, [_begin_args(rt, job) for job in batch.jobs])


def execute(
    rt: Runtime, job: JobId, token: str, begun: Begun | None = None, lane: Lane | None = None
) -> Outcome:
    """Run one job once under claim ``token``; returns what happened (for logs and tests).

    ``begun``: the job was begun already (:func:`begin_all`); else it begins here.
    ``lane``: the thread's run through its message (its opening, the next job's).
    """
    job_id = str(job)
    if begun is None:
        [begun] = rt.book.begin_all(token, [_begin_args(rt, job)])
    started, reads = begun
    if isinstance(started, Outcome):
        return started  # STALE: not this claim's to run; BUSY: a copy of it runs
    context = f"call={job.call_sid} job={job_id}"
    attempt = started.attempt
    bind(attempt=attempt)  # undone with the run's log_context
    committed = False
    opening = lane.opening if lane is not None else None

    def commit(pipe: Pipeline) -> Settle | None:
        """The job ends in the MULTI that writes its result (the record, the ledger)."""
        nonlocal committed
        rt.heartbeat.ended(job_id)
        rt.book.finish(job_id, token, pipe=pipe)
        committed = True
        return lane.ride(pipe) if lane is not None else None

    with rt.heartbeat.run(job_id, token):
        try:
            if job.kind == jobs.FETCH:
                pipeline.fetch_call(
                    rt,
                    job.call_sid,
                    account=job.account,
                    circuit_open=started.circuit_open,
                    commit=commit,
                    state=pipeline.parse_reads(job, reads),
                    opening=opening,
                )
            else:
                pipeline.deliver_call(
                    rt,
                    job.call_sid,
                    job.sink or "",
                    account=job.account,
                    force=started.force,
                    circuit_open=started.circuit_open,
                    failing=started.failing,
                    commit=commit,
                    state=pipeline.parse_reads(job, reads),
                    opening=opening,
                )
        except Deferred as wait:
            delay = within_retention(wait.delay, rt.settings, f"{context}: a wait ({wait.reason})")
            rt.book.release(job_id, token, delay, undo_attempt=True)
            log.debug("%s deferred: %s", context, wait.reason)
            return Outcome.DEFERRED
        except ExolegsError as err:
            return _failed(rt, job, token, attempt, err)
        except Exception as err:
            log.exception("%s failed unexpectedly; will retry", context)
            wrapped = TransientError(f"unexpected {type(err).__name__}: {err}")
            return _failed(rt, job, token, attempt, wrapped)
        except BaseException:
            # Cancelled (a cold shutdown, a hard time limit): due again now, under a new claim.
            rt.book.release(job_id, token, 0)
            raise
        if not committed:
            rt.book.finish(job_id, token)  # also drops the lock
    log.info("%s done (attempt %d)", context, attempt)
    return Outcome.DONE


def _failed(rt: Runtime, job: JobId, token: str, attempt: int, err: ExolegsError) -> Outcome:
    job_id = str(job)
    decision = decide(err, attempt, rt.settings)
    context = f"call={job.call_sid} job={job_id} attempt={attempt}"
    if decision.action is Outcome.DEAD and job.kind == jobs.FETCH and pipeline.legs_absent(err):
        # Exotel never had the legs: the callback still says who called and how
        # it ended, so the sinks get that (legs: unavailable), not a dead letter.
        record = pipeline.deliver_without_legs(rt, job.call_sid, job.account)
        rt.book.finish(job_id, token)
        if record is not None:
            log.warning(
                "%s legs unavailable (%s): delivering the record built from the callback",
                context,
                err.message,
            )
        return Outcome.UNAVAILABLE
    if decision.action is Outcome.DEAD:
        from worker.calls.intake import terminal_callback

        callback, _, _ = terminal_callback(rt.redis, job.call_sid, job.account)
        reason = "permanent error" if err.kind is Kind.PERMANENT else "retries exhausted"
        rt.dead.add(
            job,
            token=token,
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
        return Outcome.DEAD
    if decision.action is Outcome.PARKED:
        rt.book.release(job_id, token, decision.delay, undo_attempt=True, error=err.message)
        log.debug("%s parked for %.0fs: %s", context, decision.delay, err.message)
        return Outcome.PARKED
    if err.kind is Kind.RATE_LIMITED and job.kind == jobs.FETCH and err.retry_after:
        rt.limiter.block(pipeline.upstream_of(rt, job), err.retry_after)
    rt.book.release(job_id, token, decision.delay, error=err.message)
    log.warning("%s will retry in %.1fs: %s", context, decision.delay, err.message)
    return Outcome.RETRY


def start_pump() -> Pump:
    rt = app.runtime()
    app.pump = Pump(rt.book, dispatch, queue=app.conf.task_default_queue).start()

    def backlog() -> tuple[int, int]:
        found = rt.book.backlog(sample=1)
        return int(found["booked"]), int(found["overdue"])

    metrics.start_heartbeat(rt.redis, backlog)
    log.info(
        "job pump started (lease %.0fs, %d message(s) in flight per sink)",
        rt.settings.job_lease_seconds,
        rt.settings.sink_concurrency,
    )
    return app.pump


def stop_pump() -> None:
    if app.pump is not None:
        app.pump.stop()
        app.pump = None
