"""Accepting a callback: dedupe, remember it, and book one legs fetch per call.

It is one Lua script, so a callback costs the web process one Redis round
trip, and duplicates arriving together on different web processes cannot
both win.
"""

from __future__ import annotations

import functools
import json
import os
import threading
import zlib
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError
from redis.retry import Retry

from worker import jobs, keys, metrics
from worker.calls import readiness, stored, timeline
from worker.calls.provenance import Source
from worker.settings import DEFAULT_ACCOUNT

if TYPE_CHECKING:
    from redis import Redis

    from worker.calls.callbacks import CallbackEvent

# KEYS: call hash, jobs, the call's timeline, then metrics.bucket_keys(), then
# the adaptive fetch delay. ARGV: retention, callback json, terminal, fetch job
# id, delay, event key, direction, timeline entry, timeline cap, the "accepted"
# and "duplicate" counter fields, source, adaptive, max events, the "dropped"
# counter field.
# Everything about a call lives in its one hash: "seen:<event>" marks each event
# once, "fetch" that its legs fetch was booked, "terminal" holds the terminal
# callback, "event:<event>" any other one, "received_at" the first callback's
# time, "source" how the call reached us and "terminal_at" when its end was
# first heard of. With "adaptive", the fetch waits the larger of the delay and
# the one legs readiness has raised (worker.calls.readiness).
# "events" counts the distinct events kept; once it reaches ARGV[14]
# (CALLBACK_MAX_EVENTS) a new event is only counted ("dropped", and the
# ARGV[15] counter) and nothing else is written, except a call's first
# terminal event, which is always kept so the call still gets its fetch.
# Returns 0 duplicate, 1 accepted, 2 accepted and a fetch was booked,
# 3 dropped.
# Every command touches one key or one member: one HMGET reads what decides
# the outcome and one HSET writes the hash, so a callback costs the same
# whatever the call, the job book or the timeline already hold.
_ACCEPT = (
    metrics.LUA
    + timeline.LUA
    + """
local state = redis.call('HMGET', KEYS[1], 'seen:' .. ARGV[6], 'events', 'fetch',
                         'received_at', 'direction')
if state[1] then
  metric(KEYS[4], KEYS[5], KEYS[6], ARGV[11], 1)
  return 0
end
local kept = tonumber(state[2] or '0')
if kept >= tonumber(ARGV[14]) and (ARGV[3] ~= '1' or state[3]) then
  redis.call('HINCRBY', KEYS[1], 'dropped', 1)
  metric(KEYS[4], KEYS[5], KEYS[6], ARGV[15], 1)
  return 3
end
local result = 1
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local put = {'seen:' .. ARGV[6], '1', 'events', tostring(kept + 1)}
if not state[4] then
  put[#put + 1] = 'received_at'; put[#put + 1] = tostring(now)
end
if ARGV[7] ~= '' and not state[5] then
  put[#put + 1] = 'direction'; put[#put + 1] = ARGV[7]
end
if ARGV[3] == '1' then
  put[#put + 1] = 'terminal'; put[#put + 1] = ARGV[2]
  if not state[3] then
    local delay = tonumber(ARGV[5])
    if ARGV[13] == '1' then
      local raised = tonumber(redis.call('GET', KEYS[7]) or '0') or 0
      if raised > delay then delay = raised end
    end
    put[#put + 1] = 'fetch'; put[#put + 1] = '1'
    put[#put + 1] = 'source'; put[#put + 1] = ARGV[12]
    put[#put + 1] = 'terminal_at'; put[#put + 1] = tostring(now)
    redis.call('ZADD', KEYS[2], 'NX', now + delay, ARGV[4])
    result = 2
  end
else
  put[#put + 1] = 'event:' .. ARGV[6]; put[#put + 1] = ARGV[2]
end
redis.call('HSET', KEYS[1], unpack(put))
redis.call('EXPIRE', KEYS[1], ARGV[1])
timeline(KEYS[3], ARGV[8], ARGV[9], ARGV[1])
metric(KEYS[4], KEYS[5], KEYS[6], ARGV[10], 1)
return result
"""
)


@functools.cache
def _counted(account: str) -> tuple[str, str]:
    """The "accepted" and "duplicate" series of one account's callbacks."""
    return (
        metrics.series(
            metrics.Counter.CALLBACKS, outcome=metrics.CallbackOutcome.ACCEPTED, account=account
        ),
        metrics.series(
            metrics.Counter.CALLBACKS, outcome=metrics.CallbackOutcome.DUPLICATE, account=account
        ),
    )


#: The script's KEYS: call hash, jobs, timeline, the 3 metrics buckets, the adaptive delay.
_ACCEPT_KEYS = 7
#: Compact JSON, non-ASCII kept as UTF-8 (as worker/calls/stored.py writes it).
_encode = json.JSONEncoder(separators=(",", ":"), default=str, ensure_ascii=False).encode


@functools.cache
def _dropped(account: str) -> str:
    """The "dropped" series of one account's callbacks (over CALLBACK_MAX_EVENTS)."""
    return metrics.series(
        metrics.Counter.CALLBACKS, outcome=metrics.CallbackOutcome.DROPPED, account=account
    )


#: Distinct events kept per call unless the settings say otherwise (CALLBACK_MAX_EVENTS).
MAX_EVENTS = 100
#: How far a stored callback (JSON) may exceed the body limit: a form field
#: costs 4 more bytes as JSON (quotes, colon), and there are at most 1000.
STORED_OVERHEAD_BYTES = 8 * 1024


class CallbackTooLarge(ValueError):
    """A callback whose stored form would be over the limit; str() is the reason (413)."""


@dataclass(frozen=True)
class Accepted:
    duplicate: bool
    fetch_booked: bool
    #: Answered but not kept: the call already has its CALLBACK_MAX_EVENTS events.
    dropped: bool = False


class Intake:
    def __init__(
        self,
        redis: Redis,
        *,
        retention_seconds: int,
        fetch_delay: float,
        max_events: int = MAX_EVENTS,
        max_stored_bytes: int = 64 * 1024 + STORED_OVERHEAD_BYTES,
    ) -> None:
        self.redis = redis
        self.retention_seconds = retention_seconds
        self.fetch_delay = fetch_delay
        self.max_events = max_events
        self.max_stored_bytes = max_stored_bytes
        self._accept = redis.register_script(_ACCEPT)
        self._own = _OwnConnections()
        self._constant_args: dict[tuple[str, str, bool], tuple[Any, ...]] = {}

    def _constants(
        self, account: str, source: str, adaptive: bool
    ) -> tuple[Any, tuple[Any, ...], tuple[Any, ...]]:
        """The script's arguments that depend on the account, source and settings only:
        ARGV[1] (retention), ARGV[9..11] (cap, the accepted and duplicate counters) and
        ARGV[12..15] (source, adaptive, max events, the dropped counter)."""
        found = self._constant_args.get((account, source, adaptive))
        if found is None:
            accepted, duplicate = _counted(account)
            found = (
                self.retention_seconds,
                (timeline.CAP, accepted, duplicate),
                (source, "1" if adaptive else "0", self.max_events, _dropped(account)),
            )
            if len(self._constant_args) < 1024:  # accounts x sources x 2: a handful
                self._constant_args[(account, source, adaptive)] = found
        return found[0], found[1], found[2]

    def accept(
        self,
        event: CallbackEvent,
        account: str = DEFAULT_ACCOUNT,
        *,
        source: Source = Source.CALLBACK,
        fetch_delay: float | None = None,
    ) -> Accepted:
        """Remember the event in ``account``'s namespace; a terminal one books the call's fetch.

        A callback's fetch waits FETCH_DELAY_SECONDS, or longer when legs
        readiness raised it. The sweeper and backfill find calls that ended a
        while ago and pass their own ``fetch_delay``.
        """
        sid = event.call_sid
        # ensure_ascii=False: a non-ASCII character is stored as its UTF-8 bytes,
        # not as a \uXXXX escape up to three times longer.
        text = _encode(
            {"event": event.event, "status": event.status, "fields": event.fields}
        ).encode()
        if len(text) > self.max_stored_bytes:
            raise CallbackTooLarge(
                f"callback over {self.max_stored_bytes} bytes once decoded ({len(text)})"
            )
        head, middle, tail = self._constants(account, Source(source).value, fetch_delay is None)
        args = (
            keys.call(sid, account),
            jobs.JOBS,
            timeline.key(sid, account),
            *metrics.bucket_keys(),
            readiness.DELAY_KEY,
            head,
            stored.pack(text),
            "1" if event.terminal else "0",
            jobs.fetch_id(sid, account),
            self.fetch_delay if fetch_delay is None else fetch_delay,
            event.dedupe_key,
            event.direction or "",
            timeline.callback_entry(
                event.event, event.status if event.status != event.event else None
            ),
            *middle,
            *tail,
        )
        result = int(self._run(_ACCEPT_KEYS, args))
        return Accepted(duplicate=result == 0, fetch_booked=result == 2, dropped=result == 3)

    def bound_waits(self, seconds: float) -> bool:
        """On the calling thread, wait at most ``seconds`` for Redis, and never retry.

        For a thread that must not block long, such as the web worker's event
        loop (web/gthread.py): its own connection connects and reads with this
        timeout and no retries, so a slow or unreachable Redis raises a
        ``RedisError`` within ``seconds`` (and the callback is spooled). False
        when this client has no connection of its own to give the thread.
        """
        self._own.conn = None
        self._own.bound = seconds
        return self._own.connection(self.redis) is not None

    def _run(self, numkeys: int, keys_and_args: tuple[Any, ...]) -> Any:
        """EVALSHA the intake script; loaded again if this Redis does not know it (a
        restart, a flush)."""
        try:
            return self._evalsha(numkeys, keys_and_args)
        except NoScriptError:
            self._accept.sha = self.redis.script_load(_ACCEPT)
            return self._evalsha(numkeys, keys_and_args)

    def _evalsha(self, numkeys: int, keys_and_args: tuple[Any, ...]) -> Any:
        """One round trip on this thread's own connection, else through the client.

        Each thread that accepts callbacks has a connection of its own, made by
        the client's pool with the pool's settings but not lent out by it: the
        pool's per-command work (its lock, a poll of the socket for stray data,
        bookkeeping) and the client's layers around it cost a callback more CPU
        than the script does. Health checks, reconnecting and retries are the
        connection's own, with the client's retry policy.
        """
        conn = self._own.connection(self.redis)
        if conn is None:
            return self.redis.execute_command(  # type: ignore[no-untyped-call]
                "EVALSHA", self._accept.sha, numkeys, *keys_and_args
            )
        command = ("EVALSHA", self._accept.sha, numkeys, *keys_and_args)
        packed = [_pack(command)] if self._own.hiredis else conn.pack_command(*command)

        def roundtrip() -> Any:
            conn.send_packed_command(packed)
            return conn.read_response()

        return conn.retry.call_with_retry(roundtrip, lambda _error: conn.disconnect())

    def known(self, call_sids: list[str], account: str = DEFAULT_ACCOUNT) -> dict[str, CallState]:
        """What exolegs already has of each call (one round trip); absent: never booked."""
        pipe = self.redis.pipeline(transaction=False)
        for sid in call_sids:
            pipe.hmget(keys.call(sid, account), ["fetch", "legs_unavailable"])
        found: dict[str, CallState] = {}
        for sid, (booked, unavailable) in zip(call_sids, pipe.execute(), strict=True):
            if booked:
                found[sid] = CallState.LEGS_UNAVAILABLE if unavailable else CallState.BOOKED
        return found


try:
    import hiredis
except ImportError:  # pragma: no cover - hiredis is a dependency
    hiredis = None  # type: ignore[assignment]


def _pack(command: tuple[Any, ...]) -> bytes:
    """The command in Redis's protocol, by hiredis (what redis-py calls with hiredis)."""
    return hiredis.pack_command(command)  # type: ignore[no-any-return]


#: Arguments of every type the intake script is sent (str, bytes, int, float, non-ASCII).
_PROBE = ("EVALSHA", "x", 2, "k\u00e9y", b"\x01\xff", 172800, 30.0, 0.1, "")


class _OwnConnections(threading.local):
    """One connection per thread (and process), made by a plain client's pool."""

    conn: Any = None
    pid = 0
    #: hiredis packs a command exactly as this connection would (its encoder is hiredis's).
    hiredis = False
    #: This thread's longest wait for Redis, without retries (Intake.bound_waits); None: the pool's.
    bound: float | None = None

    def connection(self, client: Redis) -> Any:
        if self.conn is not None and self.pid == os.getpid():
            return self.conn
        pool = getattr(client, "connection_pool", None)
        if getattr(client, "connection", None) is not None or not hasattr(pool, "make_connection"):
            return None  # a single-connection client, or something else: use it as it is
        self.conn, self.pid = pool.make_connection(), os.getpid()  # type: ignore[union-attr]
        if self.bound is not None:
            for name in (
                "socket_timeout",
                "socket_connect_timeout",
                "orig_socket_timeout",
                "orig_socket_connect_timeout",
            ):
                setattr(self.conn, name, self.bound)
            self.conn.retry = Retry(NoBackoff(), 0)
        self.hiredis = hiredis is not None and self.conn.pack_command(*_PROBE) == [_pack(_PROBE)]
        return self.conn


class CallState(StrEnum):
    """What the sweeper needs to know of a listed call exolegs has seen."""

    BOOKED = "booked"  # its fetch is booked or done
    LEGS_UNAVAILABLE = "legs-unavailable"  # delivered from its callback; legs may turn up


def mark_legs_unavailable(redis: Redis, call_sid: str, account: str = DEFAULT_ACCOUNT) -> None:
    redis.hset(keys.call(call_sid, account), "legs_unavailable", "1")


def upgrade_sinks(
    pipe: Any, call_sid: str, sinks: list[str], account: str = DEFAULT_ACCOUNT
) -> None:
    """Queue on ``pipe``: these sinks get the full record again once its legs turned up."""
    key = keys.call(call_sid, account)
    if sinks:
        pipe.hset(key, mapping={f"upgrade:{name}": "1" for name in sinks})
    pipe.hdel(key, "legs_unavailable")


def queue_pending_upgrade(
    pipe: Any, call_sid: str, sink: str, account: str = DEFAULT_ACCOUNT
) -> None:
    """Queue on ``pipe``: does ``sink`` await the record with its legs? (0 or 1 there)."""
    pipe.hexists(keys.call(call_sid, account), f"upgrade:{sink}")


def upgraded(redis: Redis | Any, call_sid: str, sink: str, account: str = DEFAULT_ACCOUNT) -> None:
    """``sink`` has the record with its legs (on a client, or queued on a pipeline)."""
    redis.hdel(keys.call(call_sid, account), f"upgrade:{sink}")


# KEYS: call hash. ARGV: terminal json, direction, retention. Puts back a
# terminal callback the hash has lost (it outlived RETENTION_HOURS in a dead
# letter), marked as fetched so a repeat of it books nothing.
_RESTORE = """
if redis.call('HEXISTS', KEYS[1], 'terminal') == 1 then return 0 end
redis.call('HSET', KEYS[1], 'terminal', ARGV[1], 'fetch', '1')
if ARGV[2] ~= '' then redis.call('HSETNX', KEYS[1], 'direction', ARGV[2]) end
if redis.call('TTL', KEYS[1]) ~= -1 then redis.call('EXPIRE', KEYS[1], ARGV[3]) end
return 1
"""


def restore_callback(
    redis: Redis,
    call_sid: str,
    fields: dict[str, Any],
    *,
    status: str | None,
    direction: str | None,
    retention_seconds: int,
    account: str = DEFAULT_ACCOUNT,
) -> bool:
    """Give a call back its terminal callback (from a dead letter); True if it had lost it."""
    payload = stored.dumps({"event": "restored", "status": status, "fields": fields})
    script = redis.register_script(_RESTORE)
    return bool(
        script(
            keys=[keys.call(call_sid, account)], args=[payload, direction or "", retention_seconds]
        )
    )


CALLBACK_FIELDS = ["terminal", "direction"]


def parse_callback(raw: list[Any]) -> tuple[dict[str, Any], str | None, str | None]:
    """``HMGET call-hash terminal direction`` -> (fields, normalised status, direction)."""
    terminal = stored.loads(raw[0]) if raw[0] else {}
    direction = raw[1].decode() if isinstance(raw[1], bytes) else raw[1]
    return terminal.get("fields") or {}, terminal.get("status"), direction


def terminal_callback(
    redis: Redis, call_sid: str, account: str = DEFAULT_ACCOUNT
) -> tuple[dict[str, Any], str | None, str | None]:
    """The terminal callback's fields, its normalised status and the call's direction."""
    return parse_callback(redis.hmget(keys.call(call_sid, account), CALLBACK_FIELDS))


def call_summary(redis: Redis, call_sid: str, account: str = DEFAULT_ACCOUNT) -> dict[str, Any]:
    """What the call's hash holds, for the console: when it arrived, events, callbacks."""
    raw = redis.hgetall(keys.call(call_sid, account))
    if not raw:
        return {}
    callbacks = []
    fields: dict[str, str] = {}
    for key, value in sorted(raw.items()):
        name = key.decode() if isinstance(key, bytes) else key
        if name == "terminal" or name.startswith("event:"):
            try:
                callbacks.append(stored.loads(value))  # kept deflated (worker/calls/stored.py)
            except (ValueError, zlib.error):
                continue
        else:
            fields[name] = value.decode() if isinstance(value, bytes) else value
    received = fields.get("received_at")
    return {
        "received_at": float(received) if received else None,
        "events": sorted(
            k.removeprefix("seen:").removeprefix(f"{call_sid}:")
            for k in fields
            if k.startswith("seen:")
        ),
        "direction": fields.get("direction"),
        "callbacks": callbacks,
    }


@dataclass(frozen=True)
class CallFacts:
    """What the record needs from the call's hash besides the callback itself."""

    source: Source
    terminal_at: float | None
    fetch_tried: bool = False  # a legs fetch was already made for the call


#: The call hash's fields behind :class:`CallFacts`, to read with the callback in one HMGET.
FACT_FIELDS = ["source", "terminal_at", "fetch_tried"]


def facts_of(raw: list[Any]) -> CallFacts:
    """``HMGET call-hash *FACT_FIELDS`` -> :class:`CallFacts`."""
    raw_source, raw_at, tried = raw
    text = raw_source.decode() if isinstance(raw_source, bytes) else raw_source
    try:
        source = Source(text) if text else Source.CALLBACK
    except ValueError:
        source = Source.CALLBACK
    return CallFacts(source, float(raw_at) if raw_at else None, bool(tried))


def call_facts(redis: Redis, call_sid: str, account: str = DEFAULT_ACCOUNT) -> CallFacts:
    return facts_of(redis.hmget(keys.call(call_sid, account), FACT_FIELDS))


def mark_fetch_tried(pipe: Any, call_sid: str, account: str = DEFAULT_ACCOUNT) -> None:
    """Queue on ``pipe``: the call has had its first legs fetch."""
    pipe.hset(keys.call(call_sid, account), "fetch_tried", "1")
