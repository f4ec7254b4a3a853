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

    from worker.jobs import JobBook

log = logging.getLogger("exolegs.circuit")

PROBE_INTERVAL = 60


class Circuit:
    def __init__(self, redis: Redis, name: str, *, probe_interval: int = PROBE_INTERVAL) -> None:
        self.redis = redis
        self.name = name
        self.key = keys.circuit(name)
        self.probe_interval = probe_interval

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
        self.redis.set(self.key, json.dumps(state))
        self.redis.set(f"{self.key}:probe", "1", nx=True, ex=self.probe_interval)
        return bool(self.redis.set(f"{self.key}:shouted", "1", nx=True, ex=60))

    def close(self, book: JobBook) -> int:
        """Close after a successful probe; parked jobs become due now."""
        if not self.redis.exists(self.key):
            return 0
        parked = [
            p.decode() if isinstance(p, bytes) else p
            for p in self.redis.smembers(f"{self.key}:parked")
        ]
        for job_id in parked:
            book.reschedule(job_id, 0)
        self.redis.delete(
            self.key, f"{self.key}:parked", f"{self.key}:probe", f"{self.key}:shouted"
        )
        log.warning(
            "circuit %s closed: a probe succeeded; %d parked job(s) released",
            self.name,
            len(parked),
        )
        return len(parked)


def open_circuits(redis: Redis) -> dict[str, dict[str, Any]]:
    """Every open circuit and why, for /readyz and `exolegs check`."""
    out: dict[str, dict[str, Any]] = {}
    for key in redis.scan_iter(match=keys.circuit("*")):
        name = key.decode() if isinstance(key, bytes) else key
        if any(name.endswith(s) for s in (":probe", ":parked", ":shouted")):
            continue
        raw = redis.get(name)
        if raw:
            out[name.removeprefix(keys.circuit(""))] = json.loads(raw)
    return out
