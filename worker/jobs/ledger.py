"""The delivery ledger: which sinks already have which call.

One Redis hash per call (``exolegs:ledger:<call_sid>``, in the account's
namespace), one field per sink name. A sink that succeeded is never called
again for that call unless a replay says ``force``. This is what makes
sinks without a natural upsert idempotent on ``call_sid``.

The ledger, like the rest of a call's state (its record and its callbacks),
must outlive every job and dead letter of the call, or a late delivery would
not know which sinks already have it. So its TTL is only ever *extended* to
``RETENTION_HOURS`` (every run of a call's job does that once a quarter of it
has gone by, :func:`keep_alive`),
and while the call has a dead letter it has no TTL at all
(:mod:`worker.jobs.deadletters`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from worker import keys, metrics, scripts
from worker.calls import timeline
from worker.jobs.book import Commit, execute_with
from worker.settings import DEFAULT_ACCOUNT

if TYPE_CHECKING:
    from redis import Redis
    from redis.client import Pipeline

    from worker.sinks.base import CallRecord, Sink


PENDING = "pending"

# Shared by the scripts below: give KEYS[i] ARGV[1] seconds to live again once
# a quarter of that has gone by (every wait between two runs of a call's jobs
# is at most half the retention, so the state always outlives the wait, and
# most runs need no EXPIRE). A key without a TTL (held for a dead letter)
# keeps none; a missing key is left missing; a key being created (ttl -2
# before the write) gets the TTL.
_EXTEND = """
local function extend(key, ttl_before, keep)
  if ttl_before == -1 then return end
  if ttl_before == -2 or ttl_before < keep * 0.75 then
    if redis.call('EXISTS', key) == 1 then redis.call('EXPIRE', key, keep) end
  end
end
"""

# KEYS: the call's state keys (record first). ARGV: retention. Returns the record.
_KEEP_ALIVE = (
    _EXTEND
    + """
local keep = tonumber(ARGV[1])
for _, key in ipairs(KEYS) do
  local ttl = redis.call('TTL', key)
  if ttl ~= -2 then extend(key, ttl, keep) end
end
return redis.call('GET', KEYS[1])
"""
)

# KEYS: ledger hash, call hash, timeline, metrics.bucket_keys() (3), the sink's
# latency list, the sinks' last-success hash. ARGV: sink, outcome counter field,
# retention, timeline entry, timeline cap, then every sink of the account.
# Delivered at Redis's clock; counted, and put on the call's timeline, in the
# same call. When this was the call's last sink, the time since its first
# callback goes into the end-to-end histogram (once: the "~e2e" field).
_MARK = (
    _EXTEND
    + metrics.LUA
    + metrics.LUA_E2E
    + timeline.LUA
    + """
local ttl = redis.call('TTL', KEYS[1])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
redis.call('HSET', KEYS[1], ARGV[1], t[1] .. '.' .. string.format('%06d', tonumber(t[2])))
extend(KEYS[1], ttl, tonumber(ARGV[3]))
metric(KEYS[4], KEYS[5], KEYS[6], ARGV[2], 1)
timeline(KEYS[3], ARGV[4], ARGV[5], ARGV[3])
redis.call('HSET', KEYS[8], ARGV[1] .. ':last_ok', string.format('%.3f', now))
local received = tonumber(redis.call('HGET', KEYS[2], 'received_at') or '')
if received then
  redis.call('LPUSH', KEYS[7], string.format('%.3f', now - received))
  redis.call('LTRIM', KEYS[7], 0, 499)
  local all = true
  for i = 6, #ARGV do
    local state = redis.call('HGET', KEYS[1], ARGV[i])
    if not state or string.sub(state, 1, 7) == 'pending' then all = false; break end
  end
  if all and redis.call('HSETNX', KEYS[1], '~e2e', '1') == 1 then
    e2e(KEYS[4], KEYS[5], KEYS[6], now - received)
  end
end
return 1
"""
)

# KEYS[1] ledger hash. ARGV: sink, retention, force.
# Marks the delivery pending (at Redis's clock) and returns the state it had
# ('' for none), unless the sink already has the call (and this is not
# forced): then only returns that state.
_CLAIM = (
    _EXTEND
    + """
local state = redis.call('HGET', KEYS[1], ARGV[1])
if state and ARGV[3] ~= '1' and string.sub(state, 1, 7) ~= 'pending' then return state end
local ttl = redis.call('TTL', KEYS[1])
local t = redis.call('TIME')
redis.call('HSET', KEYS[1], ARGV[1], 'pending:' .. t[1])
extend(KEYS[1], ttl, tonumber(ARGV[2]))
return state or ''
"""
)


def _state(
    redis: Redis, call_sid: str, sink_name: str, account: str = DEFAULT_ACCOUNT
) -> str | None:
    raw = redis.hget(keys.ledger(call_sid, account), sink_name)
    return raw.decode() if isinstance(raw, bytes) else raw


def states(redis: Redis, call_sid: str, account: str = DEFAULT_ACCOUNT) -> dict[str, str]:
    """Every sink's ledger entry for a call: a delivery time, or ``pending:<time>``."""
    out = {}
    for k, v in redis.hgetall(keys.ledger(call_sid, account)).items():
        name = k.decode() if isinstance(k, bytes) else k
        if not name.startswith("~"):  # "~e2e": the call's end-to-end time was counted
            out[name] = v.decode() if isinstance(v, bytes) else v
    return out


def delivered(redis: Redis, call_sid: str, sink_name: str, account: str = DEFAULT_ACCOUNT) -> bool:
    state = _state(redis, call_sid, sink_name, account)
    return state is not None and not state.startswith(PENDING)


def mark_delivered(
    redis: Redis,
    call_sid: str,
    sink_name: str,
    retention_seconds: int,
    account: str = DEFAULT_ACCOUNT,
    *,
    outcome: metrics.DeliveryOutcome = metrics.DeliveryOutcome.DELIVERED,
    all_sinks: Iterable[str] = (),
    commit: Commit | None = None,
) -> None:
    """The sink has the call: ledger, counters, timeline and latency in one script.

    ``commit`` queues the caller's end of the work (the delivery job's
    finish) in the same ``MULTI``: the ledger entry and the end of the job
    are one atomic step, in one round trip.
    """
    item = timeline.entry(timeline.Kind.DELIVER, outcome, sink=sink_name)
    pipe = redis.pipeline(transaction=True)
    scripts.queue(
        pipe,
        _MARK,
        [
            keys.ledger(call_sid, account),
            keys.call(call_sid, account),
            timeline.key(call_sid, account),
            *metrics.bucket_keys(),
            metrics.latency_key("sink", sink_name),
            metrics.SINKS,
        ],
        [
            sink_name,
            metrics.series(
                metrics.Counter.DELIVERIES, sink=sink_name, outcome=outcome, account=account
            ),
            retention_seconds,
            timeline.dumps(item),
            timeline.CAP,
            *(all_sinks or (sink_name,)),
        ],
    )
    execute_with(pipe, commit)


def state_keys(call_sid: str, account: str = DEFAULT_ACCOUNT) -> list[str]:
    """Everything a late delivery of a call needs: its record, ledger and callbacks."""
    return [
        keys.record(call_sid, account),
        keys.ledger(call_sid, account),
        keys.call(call_sid, account),
    ]


def keep_alive(
    redis: Redis | Pipeline,
    call_sid: str,
    retention_seconds: int,
    account: str = DEFAULT_ACCOUNT,
) -> bytes | None:
    """Give the call's state another ``RETENTION_HOURS``, in the round trip that reads its record.

    Every run of one of the call's jobs calls this, so parked and retrying
    work keeps what it needs for as long as it waits (each wait is kept
    well under the retention: :func:`worker.jobs.retry.decide`).
    On a pipeline it is queued, and the record comes back with the pipeline's results.
    """
    from redis.client import Pipeline

    if isinstance(redis, Pipeline):
        scripts.queue(redis, _KEEP_ALIVE, state_keys(call_sid, account), [retention_seconds])
        return None
    raw = redis.register_script(_KEEP_ALIVE)(
        keys=state_keys(call_sid, account), args=[retention_seconds]
    )
    return raw if isinstance(raw, bytes) else (raw.encode() if isinstance(raw, str) else None)


def queue_claim(
    pipe: Pipeline,
    call_sid: str,
    sink_name: str,
    retention_seconds: int,
    *,
    force: bool = False,
    account: str = DEFAULT_ACCOUNT,
) -> None:
    """Mark the delivery pending, queued on ``pipe``; :func:`deliver_once` takes the answer."""
    scripts.queue(
        pipe, _CLAIM, *_claim_keys_args(call_sid, sink_name, retention_seconds, force, account)
    )


def _claim_keys_args(
    call_sid: str, sink_name: str, retention_seconds: int, force: bool, account: str
) -> tuple[list[str], list[str | int]]:
    return [keys.ledger(call_sid, account)], [sink_name, retention_seconds, "1" if force else ""]


def deliver_once(
    redis: Redis,
    sink: Sink,
    record: CallRecord,
    *,
    retention_seconds: int,
    force: bool = False,
    account: str = DEFAULT_ACCOUNT,
    all_sinks: Iterable[str] = (),
    commit: Commit | None = None,
    claimed: bytes | str | None = None,
) -> bool:
    """Deliver unless the ledger says this sink has the call; True when delivered now.

    The ledger lives in the account's namespace: a sink several accounts
    share gets each account's call once. ``commit`` is queued with the
    ledger's last write (see :func:`mark_delivered`). ``claimed``: the
    delivery was marked pending already (:func:`queue_claim`), this is what
    that answered.
    """
    call_sid = str(record["call_sid"])
    raw = claimed
    if raw is None:
        claim_keys, claim_args = _claim_keys_args(
            call_sid, sink.name, retention_seconds, force, account
        )
        raw = redis.register_script(_CLAIM)(keys=claim_keys, args=claim_args)
    prior = raw.decode() if isinstance(raw, bytes) else str(raw)
    if prior and not prior.startswith(PENDING) and not force:
        already = metrics.DeliveryOutcome.ALREADY
        pipe = redis.pipeline(transaction=True)
        metrics.count(
            pipe, metrics.Counter.DELIVERIES, sink=sink.name, outcome=already, account=account
        )
        execute_with(pipe, commit)
        return False
    if prior.startswith(PENDING) and not force and not sink.native_idempotency:
        # An earlier attempt died mid-delivery: ask the destination before writing again.
        if sink.lookup(call_sid):
            mark_delivered(
                redis,
                call_sid,
                sink.name,
                retention_seconds,
                account,
                outcome=metrics.DeliveryOutcome.ALREADY,
                all_sinks=all_sinks,
                commit=commit,
            )
            return False
    sink.deliver(record)
    mark_delivered(
        redis, call_sid, sink.name, retention_seconds, account, all_sinks=all_sinks, commit=commit
    )
    return True
