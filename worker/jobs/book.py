"""Durable delays without holding messages: the job book.

Every unit of work (fetch a call's legs, deliver a call to one sink) is a
member of one Redis sorted set scored by the time it is due. A pump in every
worker process claims due jobs atomically, pushes each to the job's lease
end (so a second pump does not take it), and hands it to Celery. The job
leaves the book only when its task finishes it; a retry, a rate-limit wait
or a parked call just moves its score. So no Celery countdown ever sits
unacknowledged in a worker's memory: a killed worker's job simply comes due
again when its lease runs out, and the broker's visibility timeout can stay
short. Stale or repeated messages are harmless: a task runs only while its
job is still in the book, and only one copy at a time (a per-job lock).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from worker import keys
from worker.settings import DEFAULT_ACCOUNT

if TYPE_CHECKING:
    from redis import Redis

log = logging.getLogger("exolegs.jobs")

FETCH = "fetch"
DELIVER = "deliver"

# KEYS[1] jobs zset. ARGV: lease seconds, max count. Uses Redis's clock.
_CLAIM = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[2]))
for _, id in ipairs(due) do
  redis.call('ZADD', KEYS[1], 'XX', now + tonumber(ARGV[1]), id)
end
return due
"""


# Starting a job in one round trip. KEYS: jobs zset, job hash, lock, the circuit
# of the upstream it calls. ARGV: lease, now, job id. The lock ends just before
# the job's lease does (its score after the claim), so if this run dies, the copy
# the pump sends when the lease runs out finds the lock gone, not "busy".
# Returns {} when the job is no longer booked (a stale message), {0, lock ms
# left} when another copy holds the lock, else {attempt, force, circuit open}.
_BEGIN = """
local score = redis.call('ZSCORE', KEYS[1], ARGV[3])
if not score then return {} end
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local ttl = math.floor((tonumber(score) - now) * 1000) - 500
if ttl < 1000 or ttl > tonumber(ARGV[1]) * 1000 then ttl = tonumber(ARGV[1]) * 1000 end
if not redis.call('SET', KEYS[3], '1', 'NX', 'PX', ttl) then
  return {0, redis.call('PTTL', KEYS[3])}
end
local attempt = redis.call('HINCRBY', KEYS[2], 'attempts', 1)
redis.call('HSETNX', KEYS[2], 'first_attempt', ARGV[2])
redis.call('HSET', KEYS[2], 'last_attempt', ARGV[2])
local force = redis.call('HGET', KEYS[2], 'force') or ''
return {attempt, force, redis.call('EXISTS', KEYS[4])}
"""

# Finishing a job: out of the book, its state and lock gone. KEYS: jobs, hash, lock.
_FINISH = """
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('DEL', KEYS[2], KEYS[3])
return 1
"""


@dataclass(frozen=True)
class Started:
    attempt: int
    force: bool
    circuit_open: bool = False


def _account_prefix(account: str) -> str:
    """A job of an account other than ``default`` starts ``<account>/``: its credentials,
    rate limit, circuit and keys come from that account."""
    return "" if account == DEFAULT_ACCOUNT else f"{account}/"


def fetch_id(call_sid: str, account: str = DEFAULT_ACCOUNT) -> str:
    return f"{_account_prefix(account)}{FETCH}:{call_sid}"


def deliver_id(call_sid: str, sink: str, account: str = DEFAULT_ACCOUNT) -> str:
    return f"{_account_prefix(account)}{DELIVER}:{call_sid}:{sink}"


@dataclass(frozen=True)
class JobId:
    kind: str
    call_sid: str
    sink: str | None = None
    account: str = DEFAULT_ACCOUNT

    @classmethod
    def parse(cls, raw: str | bytes) -> JobId:
        text = raw.decode() if isinstance(raw, bytes) else raw
        head, _, rest = text.partition(":")
        account, _, kind = head.rpartition("/")
        account = account or DEFAULT_ACCOUNT
        if kind == DELIVER:
            call_sid, _, sink = rest.partition(":")
            return cls(kind, call_sid, sink, account)
        return cls(kind, rest, None, account)

    def __str__(self) -> str:
        if self.kind == DELIVER:
            return deliver_id(self.call_sid, self.sink or "", self.account)
        return fetch_id(self.call_sid, self.account)


@dataclass
class JobBook:
    redis: Redis
    lease_seconds: float = 120.0

    def __post_init__(self) -> None:
        self._claim = self.redis.register_script(_CLAIM)
        self._begin = self.redis.register_script(_BEGIN)
        self._finish = self.redis.register_script(_FINISH)

    # -------------------------------------------------------------- schedule
    def schedule(self, job_id: str, delay: float = 0.0, *, replace: bool = False) -> bool:
        """Put a job in the book ``delay`` seconds from now; False if it was already there."""
        due = time.time() + max(0.0, delay)
        if replace:
            self.redis.zadd(keys.JOBS, {job_id: due})
            return True
        return bool(self.redis.zadd(keys.JOBS, {job_id: due}, nx=True))

    def reschedule(self, job_id: str, delay: float) -> None:
        """Move a job already in the book (a retry, a wait for a token, a parked call)."""
        self.redis.zadd(keys.JOBS, {job_id: time.time() + max(0.0, delay)}, xx=True)

    def pending(self, job_id: str) -> bool:
        return self.redis.zscore(keys.JOBS, job_id) is not None

    def begin(self, job_id: str, circuit: str | None = None) -> Started | str:
        """Start a run: "stale" if the job is no longer booked, "busy" if it runs elsewhere.

        Otherwise the job is locked (one copy at a time, even if a stale
        message turns up), its attempt is counted, and the state of the
        ``circuit`` of the upstream it will call comes back with it.
        """
        lock = f"{keys.job(job_id)}:lock"
        raw = self._begin(
            keys=[keys.JOBS, keys.job(job_id), lock, keys.circuit(circuit or "-")],
            args=[int(self.lease_seconds), f"{time.time():.3f}", job_id],
        )
        if not raw:
            return "stale"
        if int(raw[0]) == 0:
            # Another copy holds the lock: come back when it ends, not a lease later.
            self.reschedule(job_id, max(0, int(raw[1])) / 1000 + 0.1)
            return "busy"
        force = raw[1].decode() if isinstance(raw[1], bytes) else str(raw[1])
        return Started(int(raw[0]), force == "1", bool(circuit) and bool(raw[2]))

    def finish(self, job_id: str) -> None:
        """Done: out of the book, with its attempts and lock."""
        self._finish(keys=[keys.JOBS, keys.job(job_id), f"{keys.job(job_id)}:lock"], args=[job_id])

    def claim(self, limit: int = 200) -> list[str]:
        """Due jobs, each pushed to its lease end so no other pump takes it meanwhile."""
        raw = self._claim(keys=[keys.JOBS], args=[self.lease_seconds, limit])
        return [r.decode() if isinstance(r, bytes) else str(r) for r in raw]

    def size(self) -> int:
        return int(self.redis.zcard(keys.JOBS))

    def unlock(self, job_id: str) -> None:
        self.redis.delete(f"{keys.job(job_id)}:lock")

    # -------------------------------------------------------------- attempts
    def undo_attempt(self, job_id: str) -> None:
        """A run that only waited for a token or a circuit is not an attempt."""
        self.redis.hincrby(keys.job(job_id), "attempts", -1)

    def record_error(self, job_id: str, error: str) -> None:
        self.redis.hset(keys.job(job_id), "last_error", error[:2000])

    def backlog(self, sample: int = 500) -> dict[str, Any]:
        """Jobs booked, overdue (due now or earlier), the oldest overdue's age, and retrying.

        ``retrying`` counts jobs that have failed at least once among the first
        ``sample`` booked jobs (a lower bound when the book is larger).
        """
        now = time.time()
        pipe = self.redis.pipeline(transaction=False)
        pipe.zcard(keys.JOBS)
        pipe.zcount(keys.JOBS, "-inf", now)
        pipe.zrange(keys.JOBS, 0, 0, withscores=True)
        pipe.zrange(keys.JOBS, 0, sample - 1)
        booked, overdue, first, ids = pipe.execute()
        pipe = self.redis.pipeline(transaction=False)
        for raw in ids:
            pipe.hexists(keys.job(raw.decode() if isinstance(raw, bytes) else raw), "last_error")
        retrying = sum(1 for failed in pipe.execute() if failed) if ids else 0
        oldest = now - float(first[0][1]) if first and float(first[0][1]) <= now else 0.0
        return {
            "booked": int(booked),
            "waiting": int(booked) - int(overdue),
            "overdue": int(overdue),
            "oldest_overdue_seconds": round(oldest, 3),
            "retrying": retrying,
            "retrying_sampled": len(ids) < int(booked),
        }

    def describe(self, job_id: str) -> dict[str, Any] | None:
        """A booked job's due time and attempts; None when it is not in the book."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.zscore(keys.JOBS, job_id)
        pipe.hgetall(keys.job(job_id))
        score, raw = pipe.execute()
        if score is None:
            return None
        info = {
            (k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
            for k, v in raw.items()
        }
        return {
            "job_id": job_id,
            "due_at": float(score),
            "attempts": int(info.get("attempts", 0) or 0),
            "last_error": info.get("last_error"),
        }

    def info(self, job_id: str) -> dict[str, str]:
        raw = self.redis.hgetall(keys.job(job_id))
        return {
            (k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
            for k, v in raw.items()
        }
