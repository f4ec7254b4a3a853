"""Which sinks the running workers know, so a rolling deploy loses no delivery.

During a deploy that adds a sink, old workers (without it) and new ones (with
it) run side by side. Each worker announces its sink names, per account,
every ``ANNOUNCE_SECONDS``; a fetch books a delivery for every sink of the
account announced recently, not only its own, so a call fetched by an old
worker still reaches the new sink. An old worker that meets such a delivery
hands it back (``UNKNOWN_SINK_GRACE_SECONDS``) for a worker that knows it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

from worker import keys

if TYPE_CHECKING:
    from redis import Redis

ANNOUNCE_SECONDS = 30.0
# A sink nobody has announced for this long is gone: its last worker stopped.
LIVE_SECONDS = 4 * ANNOUNCE_SECONDS
FORGET_SECONDS = 7 * 86400

# KEYS[1] sinks hash. ARGV: forget-after seconds, then <account>/<sink> names.
# Stamps each with Redis's clock and drops names nobody announced for a week.
_ANNOUNCE = """
local now = tonumber(redis.call('TIME')[1])
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  if tonumber(all[i + 1]) < now - tonumber(ARGV[1]) then redis.call('HDEL', KEYS[1], all[i]) end
end
for i = 2, #ARGV do redis.call('HSET', KEYS[1], ARGV[i], now) end
return now
"""


def announce(redis: Redis, sinks: Iterable[tuple[str, str]]) -> None:
    """Stamp each (account, sink name) this worker delivers to."""
    names = [f"{account}/{sink}" for account, sink in sinks]
    redis.register_script(_ANNOUNCE)(keys=[keys.SINKS], args=[FORGET_SECONDS, *names])


def live(raw: Mapping[bytes | str, bytes | str], account: str) -> set[str]:
    """The account's sinks in ``HGETALL exolegs:sinks`` announced within LIVE_SECONDS of the newest.

    Relative to the newest stamp, so no clock but Redis's is involved.
    """
    stamps: dict[str, float] = {}
    for key, value in raw.items():
        name = key.decode() if isinstance(key, bytes) else key
        stamps[name] = float(value)
    if not stamps:
        return set()
    newest = max(stamps.values())
    prefix = f"{account}/"
    return {
        name.removeprefix(prefix)
        for name, at in stamps.items()
        if name.startswith(prefix) and at >= newest - LIVE_SECONDS
    }


def announced(redis: Redis, account: str) -> set[str]:
    return live(redis.hgetall(keys.SINKS), account)
