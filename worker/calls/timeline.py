"""Where is this call? A short, capped log per call, and an index by the last digits of a number.

Each callback received, each legs attempt (with Exotel's code) and each
delivery attempt (with its outcome) appends one compact JSON entry to
``exolegs:timeline:<call_sid>`` (in the account's namespace), inside the
script or MULTI that already records the event. The list keeps the last
:data:`CAP` entries and expires with the call, so its memory cost is
bounded: see docs/benchmarks.md.

``exolegs:phone:<last 4 digits>`` is a sorted set of call sids by time for
the customer's number and the callback's From and To, so the console finds "the call from …3210"
without scanning. Both key families belong to this module.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterable
from enum import StrEnum
from typing import TYPE_CHECKING, Any, NotRequired, TypedDict

from worker import keys, scripts
from worker.settings import DEFAULT_ACCOUNT

if TYPE_CHECKING:
    from redis import Redis
    from redis.client import Pipeline

CAP = 24
LAST_DIGITS = 4
MESSAGE_CHARS = 160
#: How json.dumps quotes a str (ASCII only, as :func:`dumps` writes).
_quote = json.encoder.encode_basestring_ascii


def key(call_sid: str, account: str = DEFAULT_ACCOUNT) -> str:
    return f"{keys.namespace(account)}:timeline:{call_sid}"


def phone_key(last_digits: str) -> str:
    return f"exolegs:phone:{last_digits}"


class Kind(StrEnum):
    CALLBACK = "callback"
    LEGS = "legs"
    DELIVER = "deliver"
    DEAD = "dead"
    REPLAY = "replay"


class Entry(TypedDict):
    t: float  # unix time
    k: str  # Kind
    o: str  # outcome: the event for a callback, else done / retry / dead / ...
    s: NotRequired[str]  # sink
    c: NotRequired[str]  # upstream status/code, e.g. "500/10743"
    a: NotRequired[int]  # attempt
    m: NotRequired[str]  # a short message


# Scripts that append start with this; ARGV: entry json, cap, ttl. It trims
# only once the list is over the cap (RPUSH returns the new length).
LUA = """
local function timeline(k_timeline, entry, cap, ttl)
  if redis.call('RPUSH', k_timeline, entry) > tonumber(cap) then
    redis.call('LTRIM', k_timeline, -tonumber(cap), -1)
  end
  redis.call('EXPIRE', k_timeline, ttl)
end
"""


# KEYS: the timeline. ARGV: entry, cap, ttl.
_APPEND = LUA + "timeline(KEYS[1], ARGV[1], ARGV[2], ARGV[3])\n"

# KEYS: phone keys. ARGV: member, retention. Each keeps the calls of the last retention.
_INDEX = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local keep = tonumber(ARGV[2])
for _, k in ipairs(KEYS) do
  redis.call('ZADD', k, string.format('%.6f', now), ARGV[1])
  redis.call('ZREMRANGEBYSCORE', k, '-inf', string.format('%.6f', now - keep))
  redis.call('EXPIRE', k, keep)
end
"""


def entry(
    kind: Kind,
    outcome: str,
    *,
    sink: str | None = None,
    code: str | None = None,
    attempt: int | None = None,
    message: str | None = None,
    at: float | None = None,
) -> Entry:
    out: Entry = {"t": round(time.time() if at is None else at, 3), "k": kind, "o": outcome}
    if sink:
        out["s"] = sink
    if code:
        out["c"] = code
    if attempt:
        out["a"] = attempt
    if message:
        out["m"] = message[:MESSAGE_CHARS]
    return out


def dumps(item: Entry) -> str:
    return json.dumps(item, separators=(",", ":"))


def callback_entry(outcome: str, code: str | None = None, at: float | None = None) -> str:
    """``dumps(entry(Kind.CALLBACK, outcome, code=code, at=at))``, written directly:
    every callback the edge accepts builds one."""
    t = float.__repr__(round(time.time() if at is None else at, 3))
    if code:
        return f'{{"t":{t},"k":"callback","o":{_quote(outcome)},"c":{_quote(code)}}}'
    return f'{{"t":{t},"k":"callback","o":{_quote(outcome)}}}'


def append(
    pipe: Pipeline,
    call_sid: str,
    item: Entry,
    retention_seconds: int,
    account: str = DEFAULT_ACCOUNT,
) -> None:
    """Add an entry as part of the caller's pipeline, in one script (as metrics.count)."""
    scripts.queue(pipe, _APPEND, [key(call_sid, account)], [dumps(item), CAP, retention_seconds])


def read(redis: Redis, call_sid: str, account: str = DEFAULT_ACCOUNT) -> list[Entry]:
    out: list[Entry] = []
    for raw in redis.lrange(key(call_sid, account), 0, -1):
        try:
            out.append(json.loads(raw))
        except ValueError:
            continue
    return out


_DIGITS = re.compile(r"\d")


def digits_of(number: str) -> str:
    return "".join(_DIGITS.findall(number))


def index_numbers(
    pipe: Pipeline,
    call_sid: str,
    numbers: Iterable[str],
    retention_seconds: int,
    account: str = DEFAULT_ACCOUNT,
) -> None:
    """File the call under the last digits of each number (at least 4 digits), at Redis's clock."""
    member = call_sid if account == DEFAULT_ACCOUNT else f"{account}/{call_sid}"
    tails = sorted({d[-LAST_DIGITS:] for d in map(digits_of, numbers) if len(d) >= 4})
    if tails:
        scripts.queue(pipe, _INDEX, [phone_key(t) for t in tails], [member, retention_seconds])


def calls_ending(redis: Redis, digits: str, limit: int = 50) -> list[tuple[str, str]]:
    """(account, call sid), newest first, with a number ending in the last 4 of ``digits``."""
    d = digits_of(digits)
    if len(d) < LAST_DIGITS:
        return []
    raw = redis.zrevrange(phone_key(d[-LAST_DIGITS:]), 0, limit - 1)
    out = []
    for r in raw:
        text = r.decode() if isinstance(r, bytes) else str(r)
        account, _, sid = text.rpartition("/")
        out.append((account or DEFAULT_ACCOUNT, sid))
    return out


def numbers_in(record: dict[str, Any]) -> list[str]:
    """The numbers a call is found by: its customer's, and the callback's From and To.

    Agents' numbers are left out of the index: each is on a great many calls,
    and the customer is who an operator asks about.
    """
    found: list[str] = []
    customer = record.get("customer")
    if isinstance(customer, dict):
        found += [str(customer[k]) for k in ("phone_e164", "contact_uri") if customer.get(k)]
    callback = record.get("callback")
    if isinstance(callback, dict):
        found += [str(callback[k]) for k in ("From", "To", "from", "to") if callback.get(k)]
    return found
