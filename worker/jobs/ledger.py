"""The delivery ledger: which sinks already have which call.

One Redis hash per call (``exolegs:ledger:<call_sid>``), one field per sink
name. A sink that succeeded is never called again for that call unless a
replay says ``force``. This is what makes sinks without a natural upsert
idempotent on ``call_sid``.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from worker import keys
from worker.settings import DEFAULT_ACCOUNT

if TYPE_CHECKING:
    from redis import Redis

    from worker.sinks.base import CallRecord, Sink


PENDING = "pending"


def _state(
    redis: Redis, call_sid: str, sink_name: str, account: str = DEFAULT_ACCOUNT
) -> str | None:
    raw = redis.hget(keys.ledger(call_sid, account), sink_name)
    return raw.decode() if isinstance(raw, bytes) else raw


def states(redis: Redis, call_sid: str, account: str = DEFAULT_ACCOUNT) -> dict[str, str]:
    """Every sink's ledger entry for a call: a delivery time, or ``pending:<time>``."""
    return {
        (k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
        for k, v in redis.hgetall(keys.ledger(call_sid, account)).items()
    }


def delivered(redis: Redis, call_sid: str, sink_name: str, account: str = DEFAULT_ACCOUNT) -> bool:
    state = _state(redis, call_sid, sink_name, account)
    return state is not None and not state.startswith(PENDING)


def mark_delivered(
    redis: Redis,
    call_sid: str,
    sink_name: str,
    retention_seconds: int,
    account: str = DEFAULT_ACCOUNT,
) -> None:
    key = keys.ledger(call_sid, account)
    pipe = redis.pipeline()
    pipe.hset(key, sink_name, f"{time.time():.3f}")
    pipe.expire(key, retention_seconds)
    pipe.execute()


# KEYS[1] ledger hash. ARGV: sink, pending marker, retention, force.
# Marks the delivery pending and returns the state it had ('' for none),
# unless the sink already has the call (and this is not forced): then only
# returns that state.
_CLAIM = """
local state = redis.call('HGET', KEYS[1], ARGV[1])
if state and ARGV[4] ~= '1' and string.sub(state, 1, 7) ~= 'pending' then return state end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[3])
return state or ''
"""


def deliver_once(
    redis: Redis,
    sink: Sink,
    record: CallRecord,
    *,
    retention_seconds: int,
    force: bool = False,
    account: str = DEFAULT_ACCOUNT,
) -> bool:
    """Deliver unless the ledger says this sink has the call; True when delivered now.

    The ledger lives in the account's namespace: a sink several accounts
    share gets each account's call once.
    """
    call_sid = str(record["call_sid"])
    raw = redis.register_script(_CLAIM)(
        keys=[keys.ledger(call_sid, account)],
        args=[sink.name, f"{PENDING}:{time.time():.3f}", retention_seconds, "1" if force else ""],
    )
    prior = raw.decode() if isinstance(raw, bytes) else str(raw)
    if prior and not prior.startswith(PENDING) and not force:
        return False
    if prior.startswith(PENDING) and not force and not sink.native_idempotency:
        # An earlier attempt died mid-delivery: ask the destination before writing again.
        if sink.lookup(call_sid):
            mark_delivered(redis, call_sid, sink.name, retention_seconds, account)
            return False
    sink.deliver(record)
    mark_delivered(redis, call_sid, sink.name, retention_seconds, account)
    return True
