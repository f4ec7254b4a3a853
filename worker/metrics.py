"""Counters in Redis, so ``/metrics`` is exact on whichever web process a scrape lands.

Every process (web, worker, CLI) adds to the same Redis hashes, inside the
Lua script or MULTI it already runs for the state change being counted, so a
total can never drift from what happened, and workers need no port. This
module alone names and writes the ``exolegs:metrics:*`` keys; others call
:func:`count` (a pipeline), :data:`LUA` (a script fragment) or :func:`incr`.

Each increment lands three times: in the all-time totals (what Prometheus
reads), in this minute's bucket (kept 65 minutes) and in this hour's bucket
(kept 25 hours), which the console sums for its "last hour" and "last 24
hours" columns.
"""

from __future__ import annotations

import atexit
import json
import math
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from worker import scripts

if TYPE_CHECKING:
    from redis import Redis
    from redis.client import Pipeline

PREFIX = "exolegs:metrics"
TOTALS = f"{PREFIX}:totals"
MINUTE_TTL = 65 * 60
HOUR_TTL = 25 * 3600
LATENCY_SAMPLES = 500
PUMP_ALIVE_SECONDS = 15.0


def minute_key(minute: int) -> str:
    return f"{PREFIX}:m:{minute}"


def hour_key(hour: int) -> str:
    return f"{PREFIX}:h:{hour}"


def latency_key(kind: str, name: str) -> str:
    """A capped list of recent latencies: ``sink`` (callback -> that sink), ``legs`` (-> legs)."""
    return f"{PREFIX}:latency:{kind}:{name}"


SINKS = f"{PREFIX}:sinks"  # hash "<sink>:last_ok" -> unix time
PUMPS = f"{PREFIX}:pumps"  # sorted set pump id -> last heartbeat
RECONCILE = f"{PREFIX}:reconcile"  # hash "<tier>" -> JSON of its last run


class Counter(StrEnum):
    CALLBACKS = "exolegs_callbacks_total"
    LEGS_FETCHES = "exolegs_legs_fetches_total"
    DELIVERIES = "exolegs_deliveries_total"
    DEAD_LETTERS = "exolegs_dead_letters_added_total"
    RECONCILE_LISTED = "exolegs_reconcile_listed_total"
    RECONCILE_MISSING = "exolegs_reconcile_missing_total"
    E2E = "exolegs_callback_to_last_sink_seconds"


class CallbackOutcome(StrEnum):
    """A callback spooled while Redis was down counts once drained, as accepted or duplicate."""

    ACCEPTED = "accepted"  # a new event for a call
    DUPLICATE = "duplicate"  # the same call and event again
    REJECTED = "rejected"  # refused: token, body, call sid, rate limit
    DROPPED = "dropped"  # answered 200 but not kept: the call has CALLBACK_MAX_EVENTS events


class DeliveryOutcome(StrEnum):
    DELIVERED = "delivered"
    ALREADY = "already"  # the ledger (or the destination) already had the call
    RETRY = "retry"
    PARKED = "parked"
    DEAD = "dead"


HELP: dict[Counter, str] = {
    Counter.CALLBACKS: "Callbacks accepted, by account and outcome (refused ones by outcome).",
    Counter.LEGS_FETCHES: "Exotel legs API requests, by account and upstream HTTP status/code.",
    Counter.DELIVERIES: "Delivery attempts, by account, sink and outcome.",
    Counter.DEAD_LETTERS: "Jobs dead-lettered, by account and sink ('legs' for the legs fetch).",
    Counter.RECONCILE_LISTED: "Calls listed by reconciliation, by account and tier.",
    Counter.RECONCILE_MISSING: "Calls reconciliation found never seen and booked, by tier.",
    Counter.E2E: "Seconds from a call's first callback to its delivery to the last sink.",
}

#: Upper bounds (seconds) of the end-to-end histogram.
E2E_BUCKETS = (1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600, 86400)

# Scripts that count start with this and pass bucket_keys() as their last 3 KEYS.
LUA = f"""
local function metric(k_total, k_minute, k_hour, field, n)
  redis.call('HINCRBY', k_total, field, n)
  if redis.call('HINCRBY', k_minute, field, n) == n then
    redis.call('EXPIRE', k_minute, {MINUTE_TTL})
  end
  if redis.call('HINCRBY', k_hour, field, n) == n then redis.call('EXPIRE', k_hour, {HOUR_TTL}) end
end
"""


# KEYS: bucket_keys(). ARGV: series, n.
_COUNT = LUA + "metric(KEYS[1], KEYS[2], KEYS[3], ARGV[1], tonumber(ARGV[2]))\n"


# After LUA: observe one callback-to-last-sink duration (seconds) in the histogram.
LUA_E2E = """
local function e2e(k_total, k_minute, k_hour, secs)
  local le = '+Inf'
  for b in string.gmatch('@BOUNDS@', '[^,]+') do
    if secs <= tonumber(b) then le = b; break end
  end
  metric(k_total, k_minute, k_hour, '@NAME@_bucket{le="' .. le .. '"}', 1)
  metric(k_total, k_minute, k_hour, '@NAME@_count', 1)
  redis.call('HINCRBYFLOAT', k_total, '@NAME@_sum', string.format('%.3f', secs))
end
""".replace("@BOUNDS@", ",".join(str(b) for b in E2E_BUCKETS)).replace("@NAME@", str(Counter.E2E))


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def series(name: str, **labels: object) -> str:
    """One series as Prometheus writes it: ``name{a="x",b="y"}``, labels sorted."""
    if not labels:
        return name
    inner = ",".join(f'{k}="{_escape(str(v))}"' for k, v in sorted(labels.items()))
    return f"{name}{{{inner}}}"


def bucket_keys(now: float | None = None) -> list[str]:
    """The all-time, this-minute and this-hour hashes, in the order :data:`LUA` takes them."""
    t = time.time() if now is None else now
    return [TOTALS, minute_key(int(t // 60)), hour_key(int(t // 3600))]


def count(pipe: Pipeline, counter: Counter, n: int = 1, **labels: object) -> None:
    """Add ``n`` to a counter as part of the caller's pipeline (MULTI or not).

    One script rather than five commands: a pipeline's every command costs
    the client about as much to send and read back as the script does.
    """
    scripts.queue(pipe, _COUNT, bucket_keys(), [series(counter, **labels), n])


def incr(redis: Redis, counter: Counter, n: int = 1, **labels: object) -> None:
    """A counter on its own round trip, for events that change no other state (a refusal)."""
    pipe = redis.pipeline(transaction=False)
    count(pipe, counter, n, **labels)
    pipe.execute()


class Batched:
    """Counts kept in this process and added to Redis once a second by a background thread.

    For events that must cost no Redis round trip of their own: a flood of
    refused callbacks becomes one HINCRBY a second, not one per request.
    Totals are exact once flushed; :meth:`flush` also runs at exit.
    """

    def __init__(self, redis: Redis, interval: float = 1.0) -> None:
        self.redis = redis
        self.interval = interval
        self._pending: dict[tuple[Counter, tuple[tuple[str, str], ...]], int] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def add(self, counter: Counter, n: int = 1, **labels: str) -> None:
        key = (counter, tuple(sorted(labels.items())))
        with self._lock:
            self._pending[key] = self._pending.get(key, 0) + n
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="exolegs-metrics", daemon=True
                )
                self._thread.start()
                atexit.register(self.flush)

    def flush(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, {}
        if not pending:
            return
        try:
            pipe = self.redis.pipeline(transaction=False)
            for (counter, labels), n in pending.items():
                count(pipe, counter, n, **dict(labels))
            pipe.execute()
        except Exception:  # noqa: BLE001 - Redis down: keep the counts for the next flush
            with self._lock:
                for key, n in pending.items():
                    self._pending[key] = self._pending.get(key, 0) + n

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.flush()

    def stop(self) -> None:
        self._stop.set()
        self.flush()


# KEYS: a latency list, the hash holding the start time. ARGV: the start's field.
_SINCE = """
local start = tonumber(redis.call('HGET', KEYS[2], ARGV[1]) or '')
if not start then return 0 end
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
redis.call('LPUSH', KEYS[1], string.format('%.3f', now - start))
redis.call('LTRIM', KEYS[1], 0, @CAP@)
return 1
""".replace("@CAP@", str(LATENCY_SAMPLES - 1))


def observe_since(pipe: Pipeline, kind: str, name: str, start_key: str, field: str) -> None:
    """Add "now minus the time in ``start_key``'s ``field``" to a latency list (Redis's clock)."""
    scripts.queue(pipe, _SINCE, [latency_key(kind, name), start_key], [field])


def pump_alive(redis: Redis, pump_id: str) -> None:
    """A pump's heartbeat; the console counts the pumps seen in the last 15 s."""
    now = time.time()
    pipe = redis.pipeline(transaction=False)
    pipe.zadd(PUMPS, {pump_id: now})
    pipe.zremrangebyscore(PUMPS, "-inf", now - 3600)
    pipe.execute()


BACKLOG_FIELDS = ("~backlog_booked", "~backlog_overdue")


def start_heartbeat(
    redis: Redis,
    backlog: Callable[[], tuple[int, int]] | None = None,
    interval: float = 5.0,
) -> threading.Thread:
    """Every few seconds, report this worker's pump as alive and sample the backlog.

    ``backlog`` gives (booked, overdue); the last sample of each minute is
    kept in that minute's bucket, for the console's sparkline.
    """
    import os
    import socket

    pump_id = f"{socket.gethostname()}:{os.getpid()}"

    def beat() -> None:
        while True:
            try:
                pump_alive(redis, pump_id)
                if backlog is not None:
                    booked, overdue = backlog()
                    key = minute_key(int(time.time() // 60))
                    pipe = redis.pipeline(transaction=False)
                    pipe.hset(key, mapping={BACKLOG_FIELDS[0]: booked, BACKLOG_FIELDS[1]: overdue})
                    pipe.expire(key, MINUTE_TTL)
                    pipe.execute()
            except Exception:  # noqa: BLE001, S110 - Redis down: the console shows 0 pumps
                pass
            time.sleep(interval)

    thread = threading.Thread(target=beat, name="exolegs-pump-heartbeat", daemon=True)
    thread.start()
    return thread


def reconcile_ran(
    pipe: Pipeline, *, tier: str, account: str, listed: int, missing: int, at: float
) -> None:
    """A reconciliation tier's run: its counters and, for the console, when it last ran."""
    count(pipe, Counter.RECONCILE_LISTED, listed, account=account, tier=tier)
    count(pipe, Counter.RECONCILE_MISSING, missing, account=account, tier=tier)
    run = {"at": at, "account": account, "listed": listed, "missing": missing}
    pipe.hset(RECONCILE, f"{account}:{tier}", json.dumps(run))


# ------------------------------------------------------------------- reading
def _text(raw: Any) -> str:
    return raw.decode() if isinstance(raw, bytes) else str(raw)


def parse_series(text: str) -> tuple[str, dict[str, str]]:
    """``name{a="x"}`` -> (name, {"a": "x"}); the inverse of :func:`series`."""
    name, brace, rest = text.partition("{")
    labels: dict[str, str] = {}
    if not brace:
        return name, labels
    body = rest[:-1]
    i = 0
    while i < len(body):
        eq = body.index("=", i)
        key = body[i:eq]
        j = eq + 2
        value = []
        while body[j] != '"':
            if body[j] == "\\":
                j += 1
                value.append({"n": "\n"}.get(body[j], body[j]))
            else:
                value.append(body[j])
            j += 1
        labels[key] = "".join(value)
        i = j + 2  # past the quote and the comma
    return name, labels


def totals(redis: Redis) -> dict[str, float]:
    return {_text(k): float(v) for k, v in redis.hgetall(TOTALS).items()}


@dataclass
class Window:
    """Counters summed over recent buckets: ``per_minute`` oldest first, for sparklines."""

    minutes: list[dict[str, float]] = field(default_factory=list)
    hour: dict[str, float] = field(default_factory=dict)
    day: dict[str, float] = field(default_factory=dict)

    def sum(self, scope: str, counter: Counter, **labels: str) -> float:
        data = self.hour if scope == "1h" else self.day
        return sum(v for k, v in data.items() if _matches(k, counter, labels))

    def samples(self, field_: str) -> list[float]:
        """A gauge sampled once a minute (see :func:`start_heartbeat`), 0 where none was."""
        return [m.get(field_, 0.0) for m in self.minutes]

    def per_minute(self, counter: Counter, **labels: str) -> list[float]:
        return [sum(v for k, v in m.items() if _matches(k, counter, labels)) for m in self.minutes]


def _matches(text: str, counter: Counter, labels: Mapping[str, str]) -> bool:
    if not text.startswith(str(counter)):
        return False
    name, have = parse_series(text)
    return name == counter and all(have.get(k) == v for k, v in labels.items())


def window(redis: Redis, now: float | None = None) -> Window:
    """The last 60 minute buckets and the last 24 hour buckets, in one round trip."""
    t = time.time() if now is None else now
    minute, hour = int(t // 60), int(t // 3600)
    pipe = redis.pipeline(transaction=False)
    for m in range(minute - 59, minute + 1):
        pipe.hgetall(minute_key(m))
    for h in range(hour - 23, hour + 1):
        pipe.hgetall(hour_key(h))
    raw = pipe.execute()
    minutes = [{_text(k): float(v) for k, v in r.items()} for r in raw[:60]]
    hours = [{_text(k): float(v) for k, v in r.items()} for r in raw[60:]]
    out = Window(minutes=minutes)
    for bucket in minutes:
        for k, v in bucket.items():
            out.hour[k] = out.hour.get(k, 0.0) + v
    for bucket in hours:
        for k, v in bucket.items():
            out.day[k] = out.day.get(k, 0.0) + v
    return out


def p95(values: Iterable[float]) -> float | None:
    ordered = sorted(values)
    if not ordered:
        return None
    return ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]


def latencies(redis: Redis, kind: str, name: str) -> list[float]:
    return [float(v) for v in redis.lrange(latency_key(kind, name), 0, -1)]


def sink_last_ok(redis: Redis) -> dict[str, float]:
    out = {}
    for k, v in redis.hgetall(SINKS).items():
        name, _, what = _text(k).rpartition(":")
        if what == "last_ok":
            out[name] = float(v)
    return out


def pumps_alive(redis: Redis, now: float | None = None) -> int:
    t = time.time() if now is None else now
    return int(redis.zcount(PUMPS, t - PUMP_ALIVE_SECONDS, "+inf"))


def reconcile_runs(redis: Redis) -> dict[str, dict[str, Any]]:
    return {_text(k): json.loads(v) for k, v in redis.hgetall(RECONCILE).items()}


# ----------------------------------------------------------------- rendering
def render(counters: Mapping[str, float], gauges: Iterable[Gauge]) -> str:
    """Prometheus text exposition (version 0.0.4) of the counters and gauges."""
    grouped: dict[str, list[tuple[str, float]]] = {}
    for text, value in counters.items():
        name, _ = parse_series(text)
        grouped.setdefault(name, []).append((text, value))
    lines: list[str] = []
    for counter in Counter:
        if counter is Counter.E2E:
            lines += _histogram(counters)
            continue
        lines += [f"# HELP {counter} {HELP[counter]}", f"# TYPE {counter} counter"]
        for text, value in sorted(grouped.get(counter, [])):
            lines.append(f"{text} {_num(value)}")
    by_name: dict[str, list[Gauge]] = {}
    for gauge in gauges:
        by_name.setdefault(gauge.name, []).append(gauge)
    for name, items in by_name.items():
        lines += [f"# HELP {name} {items[0].help}", f"# TYPE {name} gauge"]
        for g in items:
            lines.append(f"{series(name, **g.labels)} {_num(g.value)}")
    return "\n".join(lines) + "\n"


def _histogram(counters: Mapping[str, float]) -> list[str]:
    name = str(Counter.E2E)
    lines = [f"# HELP {name} {HELP[Counter.E2E]}", f"# TYPE {name} histogram"]
    running = 0.0
    for bound in [*map(str, E2E_BUCKETS), "+Inf"]:
        running += counters.get(series(f"{name}_bucket", le=bound), 0.0)
        lines.append(f"{series(f'{name}_bucket', le=bound)} {_num(running)}")
    lines.append(f"{name}_sum {_num(counters.get(f'{name}_sum', 0.0))}")
    lines.append(f"{name}_count {_num(counters.get(f'{name}_count', 0.0))}")
    return lines


def _num(value: float) -> str:
    return str(int(value)) if value == int(value) else repr(value)


@dataclass(frozen=True)
class Gauge:
    name: str
    help: str
    value: float
    labels: dict[str, str] = field(default_factory=dict)
