"""Accepting a callback: dedupe, remember it, and book one legs fetch per call.

It is one Lua script, so a callback costs the web process one Redis round
trip, and duplicates arriving together on different web processes cannot
both win.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from worker import jobs, keys
from worker.settings import DEFAULT_ACCOUNT

if TYPE_CHECKING:
    from redis import Redis

    from worker.calls.callbacks import CallbackEvent

# KEYS: call hash, jobs. ARGV: retention, callback json, terminal, fetch job id,
# delay, event key, direction. Everything about a call lives in its one hash:
# "seen:<event>" marks each event once, "fetch" that its legs fetch was booked,
# "terminal" holds the terminal callback, "event:<event>" any other one.
# Returns 0 duplicate, 1 accepted, 2 accepted and a fetch was booked.
_ACCEPT = """
if redis.call('HSETNX', KEYS[1], 'seen:' .. ARGV[6], '1') == 0 then return 0 end
local result = 1
if ARGV[7] ~= '' then redis.call('HSETNX', KEYS[1], 'direction', ARGV[7]) end
if ARGV[3] == '1' then
  redis.call('HSET', KEYS[1], 'terminal', ARGV[2])
  if redis.call('HSETNX', KEYS[1], 'fetch', '1') == 1 then
    local t = redis.call('TIME')
    local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
    redis.call('ZADD', KEYS[2], 'NX', now + tonumber(ARGV[5]), ARGV[4])
    result = 2
  end
else
  redis.call('HSET', KEYS[1], 'event:' .. ARGV[6], ARGV[2])
end
redis.call('EXPIRE', KEYS[1], ARGV[1])
return result
"""


@dataclass(frozen=True)
class Accepted:
    duplicate: bool
    fetch_booked: bool


class Intake:
    def __init__(self, redis: Redis, *, retention_seconds: int, fetch_delay: float) -> None:
        self.redis = redis
        self.retention_seconds = retention_seconds
        self.fetch_delay = fetch_delay
        self._accept = redis.register_script(_ACCEPT)

    def accept(self, event: CallbackEvent, account: str = DEFAULT_ACCOUNT) -> Accepted:
        """Remember the callback in ``account``'s namespace and book its fetch there."""
        sid = event.call_sid
        payload = json.dumps(
            {"event": event.event, "status": event.status, "fields": event.fields},
            separators=(",", ":"),
            default=str,
        )
        result = int(
            self._accept(
                keys=[keys.call(sid, account), keys.JOBS],
                args=[
                    self.retention_seconds,
                    payload,
                    "1" if event.terminal else "0",
                    jobs.fetch_id(sid, account),
                    self.fetch_delay,
                    event.dedupe_key,
                    event.direction or "",
                ],
            )
        )
        return Accepted(duplicate=result == 0, fetch_booked=result == 2)


CALLBACK_FIELDS = ["terminal", "direction"]


def parse_callback(raw: list[Any]) -> tuple[dict[str, Any], str | None, str | None]:
    """``HMGET call-hash terminal direction`` -> (fields, normalised status, direction)."""
    terminal = json.loads(raw[0]) if raw[0] else {}
    direction = raw[1].decode() if isinstance(raw[1], bytes) else raw[1]
    return terminal.get("fields") or {}, terminal.get("status"), direction


def terminal_callback(
    redis: Redis, call_sid: str, account: str = DEFAULT_ACCOUNT
) -> tuple[dict[str, Any], str | None, str | None]:
    """The terminal callback's fields, its normalised status and the call's direction."""
    return parse_callback(redis.hmget(keys.call(call_sid, account), CALLBACK_FIELDS))
