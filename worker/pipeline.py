"""The work itself, as plain functions: fetch a call's legs, deliver it to a sink.

Nothing here knows about Celery. Each function either finishes, raises an
:class:`~worker.errors.ExolegsError` for the retry policy to judge, or raises
:class:`~worker.errors.Deferred` when it must wait its turn.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

from worker import jobs, keys, ledger
from worker.errors import ConfigFaultError, Deferred, PermanentError
from worker.settings import Rate

if TYPE_CHECKING:
    from worker.runtime import Runtime
    from worker.sinks.base import CallRecord

log = logging.getLogger("exolegs.pipeline")
T = TypeVar("T")


def take_slot(rt: Runtime, job_id: str, limit_name: str, rate: Rate) -> None:
    """Return when this job may call the upstream now; else raise Deferred.

    A job first takes a slot in the limiter's book and is deferred to it, so a
    backlog drains in order at the full rate. At its slot it must still pass
    the strict gate; if it is refused (it came late, bunched with others) it
    keeps its place and waits only as long as the gate says.
    """
    field = f"slot:{limit_name}"
    held = rt.redis.hget(keys.job(job_id), field)
    now = time.time()
    if held is None:
        delay = rt.limiter.reserve(limit_name, rate)
        if delay > 0.01:
            rt.redis.hset(keys.job(job_id), field, f"{now + delay:.3f}")
            raise Deferred(delay, f"waiting {delay:.2f}s for a {limit_name} rate-limit slot")
    elif float(held) > now:
        raise Deferred(float(held) - now, f"waiting for its {limit_name} rate-limit slot")
    wait = rt.limiter.acquire(limit_name, rate)
    if wait > 0:
        if held is None:
            rt.redis.hset(keys.job(job_id), field, f"{now:.3f}")
        raise Deferred(wait + random.uniform(0, wait / 2), f"{limit_name} gate closed")
    if held is not None:
        rt.redis.hdel(keys.job(job_id), field)


def load_record(rt: Runtime, call_sid: str) -> CallRecord | None:
    raw = rt.redis.get(keys.record(call_sid))
    return json.loads(raw) if raw else None


def book_deliveries(rt: Runtime, call_sid: str) -> None:
    for name in rt.sinks:
        if not ledger.delivered(rt.redis, call_sid, name):
            rt.book.schedule(jobs.deliver_id(call_sid, name))


def build_call_record(rt: Runtime, call_sid: str, body: dict[str, Any]) -> CallRecord:
    from worker.enrich import build_record, leg_details_of
    from worker.intake import terminal_callback

    fields, status, direction = terminal_callback(rt.redis, call_sid)
    return build_record(
        leg_details_of(body),
        fields,
        default_country=rt.settings.default_country,
        fetched_at=datetime.now(UTC),
        direction=direction,
        status=status,
    )


def call_upstream(
    rt: Runtime, job_id: str, name: str, rate: Rate | None, call: Callable[[], T]
) -> T:
    """Call an upstream (Exotel, a sink) through its circuit and its rate limit.

    While the upstream's circuit is open (our credentials or account are
    wrong), the job is parked instead of calling, except for the one probe
    per CIRCUIT_PROBE_SECONDS; a probe that works closes the circuit.
    """
    circuit = rt.circuit(name)
    probing = False
    if circuit.is_open():
        if not circuit.try_probe():
            circuit.park(job_id)
            reason = (circuit.state() or {}).get("reason", "configuration fault")
            raise Deferred(circuit.park_delay(), f"parked: {name} circuit open ({reason})")
        probing = True
    elif rate is not None:
        take_slot(rt, job_id, name, rate)
    try:
        result = call()
    except ConfigFaultError as err:
        circuit.park(job_id)
        if circuit.open(err.message):
            log.error(
                "%s (%s circuit open: work is parked, one probe every %ds until it works)",
                err.message,
                name,
                circuit.probe_interval,
            )
            _sentry(err)
        raise
    if probing:
        circuit.close(rt.book)
    return result


def fetch_call(rt: Runtime, call_sid: str) -> CallRecord:
    """Fetch the legs once, keep the record, and book one delivery per sink."""
    record = load_record(rt, call_sid)
    if record is None:
        body = call_upstream(
            rt,
            jobs.fetch_id(call_sid),
            rt.exotel_limit_name,
            rt.settings.exotel_rate_limit,
            lambda: rt.exotel.fetch_legs(call_sid),
        )
        record = build_call_record(rt, call_sid, body)
        rt.redis.set(
            keys.record(call_sid),
            json.dumps(record, separators=(",", ":"), default=str),
            ex=rt.settings.retention_seconds,
        )
    book_deliveries(rt, call_sid)
    return record


def deliver_call(rt: Runtime, call_sid: str, sink_name: str, *, force: bool = False) -> bool:
    """Deliver the stored record to one sink; True when it was delivered now."""
    sink = rt.sinks.get(sink_name)
    if sink is None:
        raise PermanentError(
            f"call {call_sid}: sink {sink_name!r} is no longer configured (SINKS); "
            "add it back and replay, or purge the dead letter"
        )
    record = load_record(rt, call_sid)
    if record is None:
        # Past retention, or a replay long after: fetch again; the fetch books deliveries.
        rt.redis.delete(keys.fetch_once(call_sid))
        rt.book.schedule(jobs.fetch_id(call_sid))
        return False
    if not force and ledger.delivered(rt.redis, call_sid, sink_name):
        return False
    return call_upstream(
        rt,
        jobs.deliver_id(call_sid, sink_name),
        f"sink:{sink_name}",
        sink.rate_limit,
        lambda: ledger.deliver_once(
            rt.redis, sink, record, retention_seconds=rt.settings.retention_seconds, force=force
        ),
    )


def _sentry(err: Exception) -> None:
    try:
        import sentry_sdk

        sentry_sdk.capture_exception(err)
    except Exception:  # noqa: BLE001, S110 - alerting must never break the work
        pass
