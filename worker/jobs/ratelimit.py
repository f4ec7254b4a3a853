"""One global rate limit per name (an Exotel account, a sink), shared in Redis.

Two GCRA schedules live in one hash. The *book* hands each waiting job its
own future slot, so a backlog is spread out in time and drains in order
without a thundering herd; a task that is told to wait reschedules itself for
that moment instead of sleeping in a worker slot. The *gate* is checked right
before each request and is strict: a job that arrives late and bunched up
with others (a busy queue) waits a little more rather than burst. So the
upstream never sees more than ``rate`` per period plus ``burst``, and under a
backlog it sees nearly all of ``rate``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from worker import keys, scripts

if TYPE_CHECKING:
    from redis import Redis
    from redis.client import Pipeline

    from worker.settings import Rate

# KEYS[1] bucket hash. ARGV: emission interval (s), burst tolerance (s), ttl (s)
# Returns 0 when a request may go now (and counts it), else the wait in ms.
_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local emission = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local blocked = tonumber(redis.call('HGET', KEYS[1], 'blocked') or '0')
if blocked > now then return math.ceil((blocked - now) * 1000) end
local tat = tonumber(redis.call('HGET', KEYS[1], 'gate') or '0')
if tat < now then tat = now end
local allow_at = tat - tolerance
if allow_at > now then return math.ceil((allow_at - now) * 1000) end
redis.call('HSET', KEYS[1], 'gate', tostring(tat + emission))
redis.call('EXPIRE', KEYS[1], ARGV[3])
return 0
"""

# KEYS[1] bucket hash. ARGV: seconds to block. Empties the book for everyone.
_BLOCK = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local untl = now + tonumber(ARGV[1])
local blocked = tonumber(redis.call('HGET', KEYS[1], 'blocked') or '0')
if untl > blocked then redis.call('HSET', KEYS[1], 'blocked', tostring(untl)) end
local tat = tonumber(redis.call('HGET', KEYS[1], 'tat') or '0')
if tat < untl then redis.call('HSET', KEYS[1], 'tat', tostring(untl)) end
redis.call('EXPIRE', KEYS[1], math.ceil(tonumber(ARGV[1])) + 3600)
return tostring(untl)
"""


# A job's turn in one round trip: its held slot, else a new reservation in the
# book, then the strict gate. KEYS: bucket hash, job hash. ARGV: job field,
# book emission, book tolerance, gate emission, gate tolerance, ttl.
# Returns 0 (go now), a positive ms wait for its slot, or a negative ms wait at the gate.
_TAKE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local blocked = tonumber(redis.call('HGET', KEYS[1], 'blocked') or '0')
local held = redis.call('HGET', KEYS[2], ARGV[1])
-- A 429 blocked everyone: a slot held from before is void, and the job lines
-- up again in the book behind the block, spaced at the rate like the rest,
-- rather than every waiting job crowding the gate the moment the block ends.
if held and blocked > now then
  redis.call('HDEL', KEYS[2], ARGV[1])
  held = false
end
if not held then
  local tat = tonumber(redis.call('HGET', KEYS[1], 'tat') or '0')
  if tat < now then tat = now end
  if tat < blocked then tat = blocked end
  local at = tat - tonumber(ARGV[3])
  if at < now then at = now end
  if at < blocked then at = blocked end
  redis.call('HSET', KEYS[1], 'tat', tostring(tat + tonumber(ARGV[2])))
  redis.call('EXPIRE', KEYS[1], ARGV[6])
  if at - now > 0.01 then
    redis.call('HSET', KEYS[2], ARGV[1], tostring(at))
    return math.ceil((at - now) * 1000)
  end
elseif tonumber(held) > now then
  return math.ceil((tonumber(held) - now) * 1000)
end
local wait = 0
if blocked > now then
  wait = blocked - now
else
  local gate = tonumber(redis.call('HGET', KEYS[1], 'gate') or '0')
  if gate < now then gate = now end
  wait = gate - tonumber(ARGV[5]) - now
  if wait <= 0 then
    redis.call('HSET', KEYS[1], 'gate', tostring(gate + tonumber(ARGV[4])))
  end
end
if wait > 0 then
  if not held then redis.call('HSET', KEYS[2], ARGV[1], tostring(now)) end
  return -math.ceil(wait * 1000)
end
if held then redis.call('HDEL', KEYS[2], ARGV[1]) end
return 0
"""

HEADROOM = 0.98


def burst_for(rate: Rate) -> int:
    """A small burst: 5% of the period's allowance, between 2 and 10 requests.

    At least 2, so the strict gate absorbs the few milliseconds of jitter
    between a job's slot and its request without turning it into lost rate.
    """
    return max(2, min(10, math.ceil(rate.count * 0.05)))


def _take_args(name: str, rate: Rate) -> list[str | float | int]:
    book = rate.period / (rate.count * HEADROOM)
    gate = rate.period / rate.count
    burst = burst_for(rate) - 1
    ttl = int(max(60, rate.period * 2))
    return [f"slot:{name}", book, book * burst, gate, gate * burst, ttl]


def taken(result: int) -> float:
    """The take script's answer in seconds (see :meth:`RateLimiter.take`)."""
    return float(result) / 1000.0


@dataclass
class RateLimiter:
    redis: Redis

    def __post_init__(self) -> None:
        self._block = self.redis.register_script(_BLOCK)
        self._acquire = self.redis.register_script(_ACQUIRE)
        self._take = self.redis.register_script(_TAKE)

    def acquire(self, name: str, rate: Rate, burst: int | None = None) -> float:
        """Take a request from the strict gate now (0), or learn how long to wait.

        A refusal counts nothing, so a flood cannot push the gate ahead: this
        is also the per-client limit at the callback edge.
        """
        emission = rate.period / rate.count
        tolerance = emission * (max(1, burst or burst_for(rate)) - 1)
        ttl = int(max(60, rate.period * 2))
        wait_ms = self._acquire(keys=[keys.bucket(name)], args=[emission, tolerance, ttl])
        return float(wait_ms) / 1000.0

    def take(self, name: str, rate: Rate, job_key: str) -> float:
        """A job's turn: 0 to go now, > 0 seconds to its reserved slot, < 0 to wait at the gate.

        The slot a job was given is kept in its own hash (``job_key``), so a
        deferred job keeps its place in the line. See the module docstring.
        """
        return taken(self._take(keys=[keys.bucket(name), job_key], args=_take_args(name, rate)))

    def queue_take(self, pipe: Pipeline, name: str, rate: Rate, job_key: str) -> None:
        """:meth:`take`, queued on ``pipe``; its result goes through :func:`taken`."""
        scripts.queue(pipe, _TAKE, [keys.bucket(name), job_key], _take_args(name, rate))

    def backlog(self, name: str) -> float:
        """Seconds of slots already reserved ahead of now (0 when none): live work is queued.

        The reconciliation sweeper waits while this is positive, so its
        listing requests never take a slot a waiting legs fetch needs.
        """
        seconds, micros = self.redis.time()
        now = float(seconds) + micros / 1e6
        raw = self.redis.hget(keys.bucket(name), "tat")
        tat = float(raw) if raw else 0.0
        return max(0.0, tat - now - 1.0)

    def block(self, name: str, seconds: float) -> None:
        """Nobody may call ``name`` for ``seconds`` (the upstream said 429 + Retry-After)."""
        self._block(keys=[keys.bucket(name)], args=[max(0.0, seconds)])
