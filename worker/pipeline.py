"""The work itself, as plain functions: fetch a call's legs, deliver it to a sink.

Nothing here knows about Celery. Each function either finishes, raises an
:class:`~worker.errors.ExolegsError` for the retry policy to judge, or raises
:class:`~worker.errors.Deferred` when it must wait its turn.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

from worker import jobs, keys, metrics
from worker.calls import readiness, stored, timeline
from worker.calls.intake import (
    CALLBACK_FIELDS,
    FACT_FIELDS,
    CallFacts,
    facts_of,
    mark_fetch_tried,
    mark_legs_unavailable,
    parse_callback,
    queue_pending_upgrade,
    upgrade_sinks,
    upgraded,
)
from worker.calls.provenance import Legs, Source
from worker.errors import (
    ConfigFaultError,
    Deferred,
    ExolegsError,
    PermanentError,
    RateLimitedError,
)
from worker.jobs import Commit, JobId, ledger
from worker.jobs.book import Settle, Started, execute_with, job_key
from worker.jobs.ratelimit import taken
from worker.settings import DEFAULT_ACCOUNT, Account, Rate
from worker.sinks import fleet

if TYPE_CHECKING:
    from redis.client import Pipeline

    from worker.jobs.circuit import Circuit
    from worker.runtime import Runtime
    from worker.sinks.base import CallRecord

log = logging.getLogger("exolegs.pipeline")
T = TypeVar("T")


def take_slot(
    rt: Runtime, job_id: str, limit_name: str, rate: Rate, turn: Opening | None = None
) -> None:
    """Return when this job may call the upstream now; else raise Deferred.

    A job first takes a slot in the limiter's book and is deferred to it, so a
    backlog drains in order at the full rate. At its slot it must still pass
    the strict gate; if it is refused (it came late, bunched with others) it
    keeps its place and waits only as long as the gate says. ``turn``: the
    take was sent already, with the previous job's commit.
    """
    if turn is not None and turn.sent:
        wait = taken(turn.answer)
    else:
        wait = rt.limiter.take(limit_name, rate, job_key(job_id))
    if wait > 0:
        raise Deferred(wait, f"waiting {wait:.2f}s for its {limit_name} rate-limit slot")
    if wait < 0:
        raise Deferred(-wait * random.uniform(1.0, 1.5), f"{limit_name} gate closed")


def build_call_record(
    rt: Runtime,
    body: dict[str, Any] | None,
    callback: tuple[dict[str, Any], str | None, str | None],
    account: str = DEFAULT_ACCOUNT,
    source: Source = Source.CALLBACK,
) -> CallRecord:
    """The record, numbers read in the account's DEFAULT_COUNTRY, naming the account.

    Built from the legs answer, or from the callback alone (``legs:
    unavailable``) when ``body`` is None.
    """
    from worker.calls.enrich import build_record, leg_details_of

    fields, status, direction = callback
    record = build_record(
        leg_details_of(body) if body is not None else {},
        fields,
        default_country=rt.account(account).default_country,
        fetched_at=datetime.now(UTC),
        direction=direction,
        status=status,
        source=source,
        legs_state=Legs.FETCHED if body is not None else Legs.UNAVAILABLE,
        recording_hosts=rt.settings.recording_hosts,
    )
    record["account"] = account
    return record


#: Legs errors that mean "Exotel has no legs for this call (yet)".
LEGS_NOT_READY = 10743
LEGS_ABSENT = frozenset({10743, 10744})


def _code(err: ExolegsError) -> int | None:
    try:
        return int(err.upstream_code) if err.upstream_code is not None else None
    except (TypeError, ValueError):
        return None


def legs_absent(err: ExolegsError) -> bool:
    """Did the legs API say it has no legs for the call (10743 not ready, 10744 not found)?"""
    return _code(err) in LEGS_ABSENT


def _fetch_legs(
    rt: Runtime,
    acct: Account,
    call_sid: str,
    circuit_open: bool | None,
    facts: CallFacts,
    turn: Opening | None = None,
) -> dict[str, Any]:
    """One legs request; a call's first one that finds no legs yet is counted for readiness.

    A first one that finds them is counted with the record (:func:`_book_deliveries`).
    """
    account = acct.name
    client = rt.exotel_for(account)
    try:
        return call_upstream(
            rt,
            jobs.fetch_id(call_sid, account),
            acct.limit_name,
            acct.rate_limit,
            lambda: client.fetch_legs(call_sid),
            circuit_open=circuit_open,
            turn=turn,
        )
    except ExolegsError as err:
        if _code(err) == LEGS_NOT_READY and not facts.fetch_tried:
            pipe = rt.redis.pipeline(transaction=False)
            mark_fetch_tried(pipe, call_sid, account)
            readiness.note_first_fetch(pipe, rt.settings, ready=False, terminal_at=None)
            pipe.execute()
            readiness.maybe_adjust(rt.redis, rt.settings)
        raise


def _book_deliveries(
    rt: Runtime,
    call_sid: str,
    account: str,
    record: CallRecord | None,
    names: set[str],
    *,
    upgrade: bool = False,
    fetched: CallFacts | None = None,
    commit: Commit | None = None,
) -> None:
    """Keep the record (unless None) and book a delivery per sink in ``names``, in one round trip.

    ``upgrade``: the legs came after a record built without them was
    delivered; only sinks that update in place (upsert, CRM external id)
    get the full record, the rest keep the one they have. ``fetched``: the
    legs were just fetched (these are the call's facts from before): counted,
    put on the call's timeline and, for its first fetch, on the readiness
    count in the same MULTI. ``commit`` queues the caller's own end of the
    work (the fetch job's finish) in that MULTI too.
    """
    if upgrade:
        sinks = rt.sinks_of(account)
        names = {n for n in names if n in sinks and sinks[n].native_idempotency}
    pipe = rt.redis.pipeline(transaction=True)
    if record is not None:
        pipe.set(
            keys.record(call_sid, account),
            stored.dumps(record),
            ex=rt.settings.retention_seconds,
        )
    if upgrade:
        upgrade_sinks(pipe, call_sid, sorted(names), account)
    if record is not None:
        retention = rt.settings.retention_seconds
        timeline.index_numbers(pipe, call_sid, timeline.numbers_in(record), retention, account)
    if fetched is not None:
        _legs_fetched(rt, pipe, call_sid, account, fetched)
    rt.book.schedule_many([jobs.deliver_id(call_sid, name, account) for name in names], pipe=pipe)
    execute_with(pipe, commit)
    if fetched is not None and not fetched.fetch_tried:
        readiness.maybe_adjust(rt.redis, rt.settings)


def deliver_without_legs(
    rt: Runtime, call_sid: str, account: str = DEFAULT_ACCOUNT
) -> CallRecord | None:
    """The legs never came: deliver the record built from the callback, ``legs: unavailable``.

    Returns None when the call already has a record (a later re-fetch that
    failed again changes nothing).
    """
    pipe = rt.redis.pipeline(transaction=False)
    pipe.exists(keys.record(call_sid, account))
    pipe.hmget(keys.call(call_sid, account), CALL_FIELDS)
    exists, raw_call = pipe.execute()
    if exists:
        return None
    raw_callback, facts = _callback_and_facts(raw_call)
    record = build_call_record(rt, None, parse_callback(raw_callback), account, facts.source)
    mark_legs_unavailable(rt.redis, call_sid, account)
    names = set(rt.sinks_of(account)) | fleet.live(rt.redis.hgetall(keys.SINKS), account)
    _book_deliveries(rt, call_sid, account, record, names)
    return record


# A sink that fails this many times in a row (timeouts, 5xx) is treated like a
# sink that rejects our credentials: its deliveries park behind its circuit, so
# a hanging CRM cannot fill the worker pool and hold up the other sinks.
SINK_FAILURES_TO_OPEN = 5


def call_upstream(
    rt: Runtime,
    job_id: str,
    name: str,
    rate: Rate | None,
    call: Callable[[], T],
    *,
    circuit_open: bool | None = None,
    failing: bool = True,
    turn: Opening | None = None,
) -> T:
    """Call an upstream (Exotel, a sink) through its circuit and its rate limit.

    While the upstream's circuit is open (our credentials or account are
    wrong, or a sink keeps failing), the job is parked instead of calling,
    except for the one probe per CIRCUIT_PROBE_SECONDS; a probe that works
    closes the circuit. ``circuit_open`` is what the job saw when it
    started (None: look now); ``failing`` whether the upstream had failures
    counted then (False: a success has nothing to clear). ``turn``: the
    rate-limit take, sent already (:class:`Opening`).
    """
    circuit = rt.circuit(name)
    probing = False
    if circuit.is_open() if circuit_open is None else circuit_open:
        if not circuit.try_probe():
            circuit.park(job_id)
            if not circuit.is_open():  # it closed while we parked: go again now
                raise Deferred(0, f"{name} circuit just closed")
            reason = (circuit.state() or {}).get("reason", "configuration fault")
            raise Deferred(circuit.park_delay(), f"parked: {name} circuit open ({reason})")
        probing = True
    elif rate is not None:
        take_slot(rt, job_id, name, rate, turn)
    try:
        result = call()
    except ConfigFaultError as err:
        _upstream_failed(rt, job_id, name, err)
        _trip(circuit, job_id, err.message, shout=circuit.open(err.message), error=err)
        raise
    except Exception as err:
        _upstream_failed(rt, job_id, name, err)
        # Timeouts, 5xx, and a run cut off by its time limit count as a sink
        # failing; a refusal of this one record (permanent) or a 429 do not.
        if name.startswith("sink:") and not isinstance(err, PermanentError | RateLimitedError):
            reason = err.message if isinstance(err, ExolegsError) else repr(err)
            shout = circuit.failed(reason, SINK_FAILURES_TO_OPEN)
            if shout is not None:
                _trip(circuit, job_id, reason, shout=shout)
        raise
    if probing:
        # The parked work comes due at the pace the upstream's rate limit lets
        # it run anyway, so its release never crowds out other accounts' work.
        circuit.close(rt.book, spacing=rate.period / rate.count if rate else None)
    elif name.startswith("sink:") and failing:
        circuit.succeeded()
    return result


def _trip(
    circuit: Circuit, job_id: str, reason: str, *, shout: bool, error: Exception | None = None
) -> None:
    """Park this job behind the open circuit and say so (at most once a minute)."""
    circuit.park(job_id)
    if shout:
        log.error(
            "%s (%s circuit open: work is parked, one probe every %ds until it works)",
            reason,
            circuit.name,
            circuit.probe_interval,
        )
        _sentry(error or RuntimeError(f"{circuit.name} circuit open: {reason}"))


def upstream_of(rt: Runtime, job: JobId) -> str:
    """The name of the upstream a job calls: its circuit and rate limit.

    A fetch calls its own account's Exotel (``exotel:<sid>``), so one
    account's 401s or 429s never hold up another's; a sink several accounts
    share has one circuit and one rate limit, as it is one upstream.
    """
    if job.kind == jobs.FETCH:
        account = rt.accounts.get(job.account)
        return account.limit_name if account else f"exotel:{job.account}"
    return f"sink:{job.sink}"


def account_of(rt: Runtime, name: str, call_sid: str) -> Account:
    """The job's account; a job of an account no longer configured cannot run (permanent)."""
    account = rt.accounts.get(name)
    if account is None:
        raise PermanentError(
            f"call {call_sid}: account {name!r} is no longer configured (EXOTEL_ACCOUNTS); "
            "add it back and replay, or purge the dead letter"
        )
    return account


def fetch_call(
    rt: Runtime,
    call_sid: str,
    *,
    account: str = DEFAULT_ACCOUNT,
    circuit_open: bool | None = None,
    commit: Commit | None = None,
    state: JobState | None = None,
    opening: Opening | None = None,
) -> CallRecord:
    """Fetch the legs once, keep the record, and book one delivery per sink of the account.

    ``state`` is what :func:`queue_reads` read for the job (None: read it
    now). ``commit`` is queued in the ``MULTI`` that keeps the record and books its
    deliveries: the fetch job ends in the same atomic step. ``opening``: its
    rate-limit take, if it went ahead (:class:`Opening`).
    """
    acct = account_of(rt, account, call_sid)
    job = JobId(jobs.FETCH, call_sid, None, account)
    state = read_state(rt, job) if state is None else state
    assert isinstance(state, FetchState)
    raw_record, raw_callback, facts, announced = state
    # Every sink of the account that a running worker knows, not only ours: in
    # a rolling deploy that adds a sink, a call fetched by an old worker must
    # reach it too.
    names = set(rt.sinks_of(account)) | fleet.live(announced, account)
    kept: CallRecord | None = stored.loads(raw_record) if raw_record else None
    if kept is not None and kept.get("legs") != Legs.UNAVAILABLE:
        # Its deliveries again; a sink that already has the call finishes its
        # delivery job at once (the ledger says so).
        _book_deliveries(rt, call_sid, account, None, names, commit=commit)
        return kept
    body = _fetch_legs(rt, acct, call_sid, circuit_open, facts, opening)
    record = build_call_record(rt, body, parse_callback(raw_callback), account, facts.source)
    _book_deliveries(
        rt,
        call_sid,
        account,
        record,
        names,
        upgrade=kept is not None,
        fetched=facts,
        commit=commit,
    )
    return record


def _legs_fetched(
    rt: Runtime, pipe: Pipeline, call_sid: str, account: str, facts: CallFacts
) -> None:
    """Count the fetch, time it from the first callback, put it on the call's timeline.

    A call's first fetch also goes on the readiness count (a call the
    sweeper found late says nothing about how soon Exotel has legs).
    """
    retention = rt.settings.retention_seconds
    metrics.count(pipe, metrics.Counter.LEGS_FETCHES, account=account, code="200")
    item = timeline.entry(timeline.Kind.LEGS, "done", code="200")
    timeline.append(pipe, call_sid, item, retention, account)
    metrics.observe_since(pipe, "legs", account, keys.call(call_sid, account), "received_at")
    if not facts.fetch_tried:
        mark_fetch_tried(pipe, call_sid, account)
        if facts.source is Source.CALLBACK:
            readiness.note_first_fetch(pipe, rt.settings, ready=True, terminal_at=facts.terminal_at)


def _upstream_failed(rt: Runtime, job_id: str, name: str, err: Exception) -> None:
    """An Exotel request or a sink delivery failed: count it and put it on the call's timeline."""
    job = JobId.parse(job_id)
    message = err.message if isinstance(err, ExolegsError) else f"{type(err).__name__}: {err}"
    status = err.upstream_status if isinstance(err, ExolegsError) else None
    code = err.upstream_code if isinstance(err, ExolegsError) else None
    shown = f"{status}/{code}" if status and code else str(status or "")
    pipe = rt.redis.pipeline(transaction=False)
    if job.kind == jobs.FETCH:
        shown = shown or "network"  # no answer from Exotel: a timeout or a connection error
        metrics.count(pipe, metrics.Counter.LEGS_FETCHES, account=job.account, code=shown)
        item = timeline.entry(timeline.Kind.LEGS, "failed", code=shown, message=message)
    else:
        item = timeline.entry(
            timeline.Kind.DELIVER, "failed", sink=job.sink, code=shown or None, message=message
        )
    timeline.append(pipe, job.call_sid, item, rt.settings.retention_seconds, job.account)
    try:
        pipe.execute()
    except Exception:
        log.debug("could not count the failure of %s", job_id, exc_info=True)


def report(rt: Runtime, job: JobId, outcome: jobs.Outcome) -> None:
    """After a run: count a delivery's retry, park or dead letter; a dead job on the timeline."""
    Outcome = jobs.Outcome
    if outcome not in (Outcome.RETRY, Outcome.PARKED, Outcome.DEAD, Outcome.UNAVAILABLE):
        return  # done is counted where it happens; the rest did no work
    pipe = rt.redis.pipeline(transaction=False)
    if job.kind == jobs.DELIVER and outcome is not Outcome.UNAVAILABLE:
        delivery = metrics.DeliveryOutcome(str(outcome))
        metrics.count(
            pipe, metrics.Counter.DELIVERIES, sink=job.sink, outcome=delivery, account=job.account
        )
    if outcome is Outcome.UNAVAILABLE:
        item = timeline.entry(timeline.Kind.LEGS, "unavailable", message="record from the callback")
        timeline.append(pipe, job.call_sid, item, rt.settings.retention_seconds, job.account)
    if outcome is Outcome.DEAD:
        sink = job.sink if job.kind == jobs.DELIVER else "legs"
        metrics.count(pipe, metrics.Counter.DEAD_LETTERS, sink=sink, account=job.account)
        letter = rt.dead.get(str(job))
        item = timeline.entry(
            timeline.Kind.DEAD,
            letter.reason if letter else "dead",
            sink=job.sink,
            attempt=letter.attempts if letter else None,
        )
        timeline.append(pipe, job.call_sid, item, rt.settings.retention_seconds, job.account)
    try:
        pipe.execute()
    except Exception:
        log.debug("could not count %s of %s", outcome, job, exc_info=True)


def deliver_call(
    rt: Runtime,
    call_sid: str,
    sink_name: str,
    *,
    account: str = DEFAULT_ACCOUNT,
    force: bool = False,
    circuit_open: bool | None = None,
    failing: bool = True,
    commit: Commit | None = None,
    state: JobState | None = None,
    opening: Opening | None = None,
) -> bool:
    """Deliver the stored record to one sink; True when it was delivered now.

    ``state`` is what :func:`queue_reads` read for the job (None: read it
    now). ``commit`` is queued with the ledger's last write for the call and sink.
    ``opening``: its ledger claim, if it went ahead (:class:`Opening`).
    """
    account_of(rt, account, call_sid)
    job_id = jobs.deliver_id(call_sid, sink_name, account)
    sink = rt.sinks_of(account).get(sink_name)
    if sink is None:
        hand_back_unknown_sink(rt, job_id, call_sid, sink_name, account)
    assert sink is not None
    # The legs came after a record without them: this sink updates in place.
    job = JobId(jobs.DELIVER, call_sid, sink_name, account)
    state = read_state(rt, job) if state is None else state
    assert isinstance(state, DeliveryState)
    record, upgrade = state
    if record is None:
        record = refetch(rt, call_sid, job_id, account)

    def done(pipe: Pipeline) -> Settle | None:
        if upgrade:
            upgraded(pipe, call_sid, sink_name, account)
        return commit(pipe) if commit is not None else None

    delivered = call_upstream(
        rt,
        job_id,
        f"sink:{sink_name}",
        sink.rate_limit,
        lambda: ledger.deliver_once(
            rt.redis,
            sink,
            record,
            retention_seconds=rt.settings.retention_seconds,
            force=force or upgrade,
            account=account,
            all_sinks=tuple(rt.sinks_of(account)),
            commit=done,
            claimed=opening.answer if opening is not None and opening.sent else None,
        ),
        circuit_open=circuit_open,
        failing=failing,
    )
    return delivered


class FetchState(NamedTuple):
    """What a fetch reads first: the kept record, the callback, the call's facts, live sinks."""

    raw_record: bytes | None
    raw_callback: list[Any]
    facts: CallFacts
    announced: dict[Any, Any]


class DeliveryState(NamedTuple):
    """What a delivery reads first: the kept record, and whether its sink awaits an upgrade."""

    record: CallRecord | None
    upgrade: bool


JobState = FetchState | DeliveryState


#: The call hash's fields a run reads at once: the callback, then its facts.
CALL_FIELDS = [*CALLBACK_FIELDS, *FACT_FIELDS]


def _callback_and_facts(raw: list[Any]) -> tuple[list[Any], CallFacts]:
    """``HMGET call-hash *CALL_FIELDS`` -> (the callback's raw fields, the call's facts)."""
    n = len(CALLBACK_FIELDS)
    return raw[:n], facts_of(raw[n:])


def queue_reads(rt: Runtime, job: JobId, pipe: Pipeline) -> None:
    """Queue the reads a job's run starts with (see :func:`parse_reads`).

    They also give the call's state another RETENTION_HOURS: they only read
    or extend, so they may ride with the job's begin.
    """
    ledger.keep_alive(pipe, job.call_sid, rt.settings.retention_seconds, job.account)
    if job.kind == jobs.FETCH:
        pipe.hmget(keys.call(job.call_sid, job.account), CALL_FIELDS)
        pipe.hgetall(keys.SINKS)
    else:
        queue_pending_upgrade(pipe, job.call_sid, job.sink or "", job.account)


def parse_reads(job: JobId, raw: list[Any]) -> JobState:
    """:func:`queue_reads`'s results as the job's state."""
    if job.kind == jobs.FETCH:
        raw_record, raw_call, announced = raw
        return FetchState(raw_record, *_callback_and_facts(raw_call), announced)
    raw_record, upgrade = raw
    return DeliveryState(stored.loads(raw_record) if raw_record else None, bool(upgrade))


class Opening:
    """A job's one write before it calls its upstream, sent ahead of its run.

    A legs fetch takes its rate-limit turn first; a delivery marks its ledger
    entry pending. The thread that runs a message's jobs one after another
    sends the next job's opening with the ``MULTI`` that commits the job
    before it (:data:`worker.jobs.book.Commit`): the moment it would go
    anyway, one round trip fewer per job. Unsent (the commit failed), the
    job sends it itself.
    """

    def __init__(self, queue: Callable[[Pipeline], object]) -> None:
        self._queue = queue
        self.sent = False
        self.answer: Any = None

    def ride(self, pipe: Pipeline) -> Settle:
        """Queue it on ``pipe``; the returned callable takes the pipeline's results."""
        at = len(pipe)
        self._queue(pipe)

        def settle(results: list[Any]) -> None:
            self.answer = results[at]
            self.sent = True

        return settle


def opening_for(rt: Runtime, job: JobId, started: Started, reads: list[Any]) -> Opening | None:
    """``job``'s opening, when it may go before the run starts; None when it must not.

    Not while the upstream's circuit may be open (a probe or a park comes
    first), nor for a fetch whose record is kept (its run calls nobody), nor
    for a delivery to a sink with a rate limit of its own (its claim must
    follow its turn) or without a record (it refetches first). ``reads``
    are the job's raw :func:`queue_reads`.
    """
    if started.circuit_open is not False:
        return None
    if job.kind == jobs.FETCH:
        acct = rt.accounts.get(job.account)
        if reads[0] or acct is None:
            return None
        name, rate, key = acct.limit_name, acct.rate_limit, job_key(str(job))
        return Opening(lambda pipe: rt.limiter.queue_take(pipe, name, rate, key))
    sink = rt.sinks_of(job.account).get(job.sink or "")
    if sink is None or sink.rate_limit is not None or not reads[0]:
        return None
    retention, force = rt.settings.retention_seconds, started.force or bool(reads[1])
    return Opening(
        lambda pipe: ledger.queue_claim(
            pipe, job.call_sid, sink.name, retention, force=force, account=job.account
        )
    )


def read_state(rt: Runtime, job: JobId) -> JobState:
    """:func:`queue_reads` and :func:`parse_reads` in one round trip of their own."""
    pipe = rt.redis.pipeline(transaction=False)
    queue_reads(rt, job, pipe)
    return parse_reads(job, pipe.execute())


def refetch(rt: Runtime, call_sid: str, job_id: str, account: str) -> CallRecord:
    """The record is gone (past retention, or Redis lost it): fetch it again for one sink.

    Only the delivery that asked gets it: booking every sink again would repeat
    the call wherever the ledger has expired. The terminal callback comes from
    the call's hash (a replay puts back the dead letter's copy), so the record
    keeps its ``status`` and ``callback``.
    """
    from worker.calls.intake import terminal_callback

    acct = account_of(rt, account, call_sid)
    client = rt.exotel_for(account)
    body = call_upstream(
        rt, job_id, acct.limit_name, acct.rate_limit, lambda: client.fetch_legs(call_sid)
    )
    callback = terminal_callback(rt.redis, call_sid, account)
    record = build_call_record(rt, body, callback, account)
    rt.redis.set(
        keys.record(call_sid, account),
        stored.dumps(record),
        ex=rt.settings.retention_seconds,
        nx=True,
    )
    log.warning(
        "call %s: its record had expired; fetched the legs again for %s alone", call_sid, job_id
    )
    return record


def hand_back_unknown_sink(
    rt: Runtime, job_id: str, call_sid: str, sink_name: str, account: str
) -> None:
    """A delivery for a sink this worker does not have: hand it back, or dead-letter it.

    In a rolling deploy that adds a sink, old workers meet its deliveries:
    they hand them back (Deferred) for a worker that knows it, while any
    running worker announces the sink or for UNKNOWN_SINK_GRACE_SECONDS from
    the job's first attempt. After that the sink was removed: a dead letter.
    """
    grace = rt.settings.unknown_sink_grace_seconds
    first = rt.book.info(job_id).get("first_attempt")
    seconds, micros = rt.redis.time()
    waited = seconds + micros / 1e6 - float(first) if first else 0.0
    if sink_name in fleet.announced(rt.redis, account) or waited < grace:
        raise Deferred(
            random.uniform(2.0, 6.0),
            f"sink {sink_name!r} is not configured on this worker; handed back for one that has it",
        )
    where = "SINKS" if account == DEFAULT_ACCOUNT else f"account {account}'s sinks"
    raise PermanentError(
        f"call {call_sid}: sink {sink_name!r} is not configured on any running worker ({where}) "
        f"and none took the delivery in {grace:.0f}s; add it back and replay, "
        "or purge the dead letter"
    )


def _sentry(err: Exception) -> None:
    try:
        import sentry_sdk

        sentry_sdk.capture_exception(err)
    except Exception:  # noqa: BLE001, S110 - alerting must never break the work
        pass
