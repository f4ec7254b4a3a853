"""The console's audit log: every reveal, replay and purge, who did it and when.

Newest first in one capped Redis list (``exolegs:ops:audit``), shared by all
web processes and shown at ``/ops/audit``; each entry is also a log line.
"""

from __future__ import annotations

import json
import logging
import time
from typing import TYPE_CHECKING, TypedDict

if TYPE_CHECKING:
    from redis import Redis

KEY = "exolegs:ops:audit"
CAP = 5000

log = logging.getLogger("exolegs.ops.audit")


class AuditEntry(TypedDict):
    at: float
    user: str
    action: str
    target: str
    detail: str
    address: str


def record(
    redis: Redis, *, user: str, action: str, target: str, detail: str = "", address: str = ""
) -> AuditEntry:
    entry: AuditEntry = {
        "at": round(time.time(), 3),
        "user": user,
        "action": action,
        "target": target,
        "detail": detail,
        "address": address,
    }
    pipe = redis.pipeline(transaction=True)
    pipe.lpush(KEY, json.dumps(entry))
    pipe.ltrim(KEY, 0, CAP - 1)
    pipe.execute()
    log.warning("ops audit: %s %s %s %s", user, action, target, detail)
    return entry


def recent(redis: Redis, limit: int = 200) -> list[AuditEntry]:
    return [json.loads(raw) for raw in redis.lrange(KEY, 0, limit - 1)]
