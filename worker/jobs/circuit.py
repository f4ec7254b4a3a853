"""A circuit per upstream for configuration faults (wrong credentials, wrong account).

While it is open, work for that upstream is parked (neither retried hot nor
dropped) and only one probe a minute goes out, from whichever worker gets
the probe lock. A probe that succeeds closes the circuit and releases every
parked job at once.
"""

from __future__ import annotations

import json
import logging
import random
import time
from typing import TYPE_CHECKING, Any

from worker import keys

if TYPE_CHECKING:
    from redis import Redis

    from worker.jobs.book import JobBook

log = logging.getLogger("exolegs.circuit")

PROBE_INTERVAL = 60
#: The least time between two released jobs when a circuit closes: 100 a second,
#: never a burst that holds up other work (an upstream's rate may space them more).
RELEASE_SPACING = 0.01

# KEYS: circuit, parked set, probe, shouted, failures, jobs, open-circuits set.
# ARGV: name, spacing. Returns how many parked jobs were released, or -1 when
# the circuit was not open. The released jobs come due one every ``spacing``
# seconds from now, so the pump hands them over a few at a time, between
# other upstreams' work, instead of in one wall of messages.
_CLOSE = """
redis.call('SREM', KEYS[7], ARGV[1])
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
local parked = redis.call('SMEMBERS', KEYS[2])
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
for i, id in ipairs(parked) do
  redis.call('ZADD', KEYS[6], 'XX', now + (i - 1) * tonumber(ARGV[2]), id)
end
return #parked
"""


def failures_key(name: str) -> str:
    """How many times in a row upstream ``name`` failed (sinks), while it counts."""
    return f"{keys.circuit(name)}:failures"


class Circuit:
    def __init__(self, redis: Redis, name: str, *, probe_interval: int = PROBE_INTERVAL) -> None:
        self.redis = redis
        self.name = name
        self.key = keys.circuit(name)
        self.probe_interval = probe_interval
        self._close = redis.register_script(_CLOSE)

    def state(self) -> dict[str, Any] | None:
        raw = self.redis.get(self.key)
        return json.loads(raw) if raw else None

    def is_open(self) -> bool:
        return bool(self.redis.exists(self.key))

    def try_probe(self) -> bool:
        """True for the one caller a minute allowed through while the circuit is open."""
        return bool(self.redis.set(f"{self.key}:probe", "1", nx=True, ex=self.probe_interval))

    def park_delay(self) -> float:
        ttl = self.redis.ttl(f"{self.key}:probe")
        return float(max(1, ttl if ttl and ttl > 0 else self.probe_interval)) + random.uniform(0, 5)

    def park(self, job_id: str) -> None:
        self.redis.sadd(f"{self.key}:parked", job_id)

    def open(self, reason: str) -> bool:
        """Open (or keep open) the circuit; True at most once a minute, when to shout."""
        state = self.state() or {"opened_at": time.time()}
        state.update(reason=reason, last_failure_at=time.time())
        pipe = self.redis.pipeline()
        pipe.set(self.key, json.dumps(state))
        pipe.sadd(keys.CIRCUITS, self.name)
        pipe.execute()
        self.redis.set(f"{self.key}:probe", "1", nx=True, ex=self.probe_interval)
        return bool(self.redis.set(f"{self.key}:shouted", "1", nx=True, ex=60))

    def close(self, book: JobBook, *, spacing: float | None = None) -> int:
        """Close after a successful probe; parked jobs become due from now on.

        They come due ``spacing`` seconds apart (the upstream's rate, when it
        has one), at least RELEASE_SPACING apart (1000 parked jobs over 10 s),
        so a long outage's backlog does not crowd out other accounts and sinks.

        The circuit goes first and the release after, in one Lua call, so no
        released job can start, still see the circuit open and park again.
        """
        raw = self._close(
            keys=[
                self.key,
                f"{self.key}:parked",
                f"{self.key}:probe",
                f"{self.key}:shouted",
                f"{self.key}:failures",
                book.key,
                keys.CIRCUITS,
            ],
            args=[self.name, max(RELEASE_SPACING, spacing or 0.0)],
        )
        released = int(raw)
        if released >= 0:
            log.warning(
                "circuit %s closed: a probe succeeded; %d parked job(s) released",
                self.name,
                released,
            )
        return max(0, released)

    def failed(self, reason: str, threshold: int) -> bool | None:
        """Count one more failure in a row.

        None while under ``threshold``; at or over it the circuit is (kept)
        open and, as with :meth:`open`, True means it is time to shout.
        """
        key = failures_key(self.name)
        pipe = self.redis.pipeline()
        pipe.incr(key)
        pipe.expire(key, max(300, self.probe_interval * 5))
        count = int(pipe.execute()[0])
        if count < threshold:
            return None
        return self.open(f"{count} failures in a row, the last: {reason}")

    def succeeded(self) -> None:
        self.redis.delete(f"{self.key}:failures")


def open_circuits(redis: Redis) -> dict[str, dict[str, Any]]:
    """Every open circuit and why, for /readyz and `exolegs check`.

    Two round trips whatever the size of the keyspace: the names come from
    the one set :meth:`Circuit.open` adds to, then their states in one MGET.
    """
    raw_names: Any = redis.smembers(keys.CIRCUITS)
    names = sorted(n.decode() if isinstance(n, bytes) else str(n) for n in raw_names)
    if not names:
        return {}
    states: Any = redis.mget([keys.circuit(name) for name in names])
    return {name: json.loads(raw) for name, raw in zip(names, states, strict=True) if raw}
