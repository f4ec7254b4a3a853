"""Legs readiness: how long after a call's end Exotel has its legs, and the delay that follows.

Exotel's legs API answers ``500/10743 Legs not found`` until post-call
processing is done (its v1 callback docs call that state "post call
processing data is yet to be processed"); no document gives a time. So the
worker measures it: every call's *first* legs fetch is counted per minute,
with whether it was ready and, when it was, how long after the terminal
callback. When more than :data:`RAISE_ABOVE` of the last hour's first fetches
were too early, the first-fetch delay is raised (x1.5, at most
``FETCH_DELAY_MAX_SECONDS``); below :data:`LOWER_BELOW` it comes back down
towards ``FETCH_DELAY_SECONDS`` (as after an hour without calls). New
callbacks read the raised delay inside the intake script, so the web process
pays nothing for it.

All times are Redis ``TIME``, so workers with skewed clocks agree.
"""

from __future__ import annotations

import threading
import time
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING

from redis import Redis
from redis.client import Pipeline

from worker import keys, scripts

if TYPE_CHECKING:
    from worker.settings import Settings

DELAY_KEY = keys.READINESS_DELAY
WINDOW_MINUTES = 60
RAISE_ABOVE = 0.20
LOWER_BELOW = 0.05
STEP = 1.5
#: Too few first fetches in the hour say nothing about Exotel.
MIN_SAMPLES = 10
_ADJUST_LOCK = f"{DELAY_KEY}:adjusting"

# ARGV: minute-key prefix, ready ('1'), terminal time ('' unknown), ttl. The
# minute and the time to ready are read off Redis's clock here.
_NOTE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local key = ARGV[1] .. math.floor(now / 60)
redis.call('HINCRBY', key, 'first', 1)
if ARGV[2] == '1' then
  redis.call('HINCRBY', key, 'ready', 1)
  local terminal = tonumber(ARGV[3])
  if terminal then
    local seconds = string.format('%.3f', math.max(0, now - terminal))
    redis.call('HINCRBYFLOAT', key, 'ready_seconds', seconds)
    redis.call('HINCRBY', key, 'timed', 1)
  end
else
  redis.call('HINCRBY', key, 'not_ready', 1)
end
redis.call('EXPIRE', key, ARGV[4])
return 1
"""


@dataclass(frozen=True)
class Readiness:
    """The last hour of first legs fetches, and the first-fetch delay now in force."""

    first_fetches: int
    not_ready: int
    mean_ready_seconds: float | None
    delay_seconds: float
    base_seconds: float
    ceiling_seconds: float

    @property
    def not_ready_share(self) -> float:
        return self.not_ready / self.first_fetches if self.first_fetches else 0.0

    @property
    def raised(self) -> bool:
        return self.delay_seconds > self.base_seconds

    def describe(self) -> str:
        """One line for ``exolegs check`` and logs; counts only, nothing about any call."""
        ready = (
            f", legs ready {self.mean_ready_seconds:.0f}s after the call on average"
            if self.mean_ready_seconds is not None
            else ""
        )
        state = (
            f"raised from {self.base_seconds:g}s (ceiling {self.ceiling_seconds:g}s)"
            if self.raised
            else f"FETCH_DELAY_SECONDS, ceiling {self.ceiling_seconds:g}s"
        )
        return (
            f"first legs fetch after {self.delay_seconds:g}s ({state}); last hour: "
            f"{self.first_fetches} first fetches, {self.not_ready_share:.0%} too early{ready}"
        )


def _now(redis: Redis) -> float:
    seconds, micros = redis.time()
    return float(seconds) + micros / 1e6


def current_delay(redis: Redis, settings: Settings) -> float:
    """The first-fetch delay new callbacks get now: O(1), safe for /readyz."""
    raw = redis.get(DELAY_KEY)
    try:
        raised = float(raw) if raw else 0.0
    except ValueError:
        raised = 0.0
    return min(settings.fetch_delay_max_seconds, max(settings.fetch_delay_seconds, raised))


#: /readyz reads the delay at most this often per process (it must cost a fixed few commands).
READYZ_CACHE_SECONDS = 5.0
_readyz_cache: weakref.WeakKeyDictionary[Redis, tuple[float, float]] = weakref.WeakKeyDictionary()
_readyz_lock = threading.Lock()


def readyz_fields(redis: Redis, settings: Settings) -> dict[str, float | bool]:
    """What ``/readyz`` shows: the first-fetch delay in force and whether it was raised.

    Read from Redis at most once per :data:`READYZ_CACHE_SECONDS` per client.
    """
    now = time.monotonic()
    with _readyz_lock:
        cached = _readyz_cache.get(redis)
    if cached is None or now - cached[0] >= READYZ_CACHE_SECONDS:
        cached = (now, current_delay(redis, settings))
        with _readyz_lock:
            _readyz_cache[redis] = cached
    delay = cached[1]
    return {
        "fetch_delay_seconds": delay,
        "fetch_delay_raised": delay > settings.fetch_delay_seconds,
    }


def note_first_fetch(
    redis: Redis | Pipeline, settings: Settings, *, ready: bool, terminal_at: float | None
) -> None:
    """Count one call's first legs fetch (queued on a pipeline, or at once).

    The delay itself is adjusted by :func:`maybe_adjust`, at most once a
    minute; on a plain client that is tried here too.
    """
    args = [keys.readiness_prefix(), "1" if ready else "0", terminal_at or "", _MINUTE_TTL]
    if isinstance(redis, Pipeline):
        scripts.queue(redis, _NOTE, [], args)
        return
    redis.eval(_NOTE, 0, *args)
    maybe_adjust(redis, settings)


_MINUTE_TTL = (WINDOW_MINUTES + 5) * 60
#: When this process may next try to adjust (monotonic); the Redis lock decides among processes.
_next_adjust = 0.0


def maybe_adjust(redis: Redis, settings: Settings) -> None:
    """Adjust the delay if no process did in the last minute (one SET per process per minute)."""
    global _next_adjust
    now = time.monotonic()
    if now < _next_adjust:
        return
    _next_adjust = now + 60.0
    if redis.set(_ADJUST_LOCK, "1", nx=True, ex=60):
        adjust(redis, settings)


def summary(redis: Redis, settings: Settings, *, now: float | None = None) -> Readiness:
    """The last hour's first fetches (60 small hashes in one round trip)."""
    now = _now(redis) if now is None else now
    minute = int(now // 60)
    pipe = redis.pipeline(transaction=False)
    for m in range(minute - WINDOW_MINUTES + 1, minute + 1):
        pipe.hmget(keys.readiness(m), ["first", "not_ready", "ready_seconds", "timed"])
    first = not_ready = timed = 0
    seconds = 0.0
    for row in pipe.execute():
        first += int(row[0] or 0)
        not_ready += int(row[1] or 0)
        seconds += float(row[2] or 0)
        timed += int(row[3] or 0)
    return Readiness(
        first_fetches=first,
        not_ready=not_ready,
        mean_ready_seconds=seconds / timed if timed else None,
        delay_seconds=current_delay(redis, settings),
        base_seconds=settings.fetch_delay_seconds,
        ceiling_seconds=settings.fetch_delay_max_seconds,
    )


def adjust(redis: Redis, settings: Settings, *, now: float | None = None) -> float:
    """Raise or lower the first-fetch delay from the last hour; returns the delay in force."""
    seen = summary(redis, settings, now=now)
    delay = seen.delay_seconds
    if seen.first_fetches >= MIN_SAMPLES and seen.not_ready_share > RAISE_ABOVE:
        delay = min(settings.fetch_delay_max_seconds, max(delay * STEP, delay + 5.0))
    elif seen.raised and (
        seen.first_fetches == 0
        or (seen.first_fetches >= MIN_SAMPLES and seen.not_ready_share < LOWER_BELOW)
    ):
        delay = max(settings.fetch_delay_seconds, delay / STEP)
    if delay != seen.delay_seconds:
        if delay <= settings.fetch_delay_seconds:
            redis.delete(DELAY_KEY)
        else:
            redis.set(DELAY_KEY, f"{delay:.1f}")
    return delay
