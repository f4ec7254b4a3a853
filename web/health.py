"""Liveness and readiness, safe to leave open to the internet.

``/readyz`` costs a fixed number of Redis commands whatever the size of the
keyspace (a PING, the open-circuit set and one MGET, and every few seconds
the Redis-safety look of :func:`worker.checks.inspect_redis`), so it cannot be
used to load Redis. Anyone may ask it and gets only the status and counts, never
which upstream failed or why (those names carry hosts, paths and error
text). The details are for operators: a request with a live ``/ops`` console
session (its cookie), or every request when ``READYZ_DETAILS=true``.
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Any

from flask import Blueprint, current_app, jsonify, request
from flask.typing import ResponseReturnValue

if TYPE_CHECKING:
    from redis import Redis

    from worker.checks import RedisSafety

bp = Blueprint("health", __name__)

#: How long one look at Redis's safety (INFO, the epoch) answers /readyz.
SAFETY_CACHE_SECONDS = 5.0


class SafetyCache:
    """:class:`worker.checks.RedisWatch` looked at most once per few seconds per process."""

    def __init__(self, redis: Redis) -> None:
        from worker.checks import RedisWatch

        self.watch = RedisWatch(redis)
        self._lock = threading.Lock()
        self._at = -SAFETY_CACHE_SECONDS
        self._last: RedisSafety | None = None

    def get(self) -> RedisSafety:
        with self._lock:
            now = time.monotonic()
            if self._last is None or now - self._at >= SAFETY_CACHE_SECONDS:
                self._last = self.watch.check()
                self._at = now
            return self._last


def _operator(redis: Redis) -> bool:
    """True when the request carries a live /ops console session (one Redis round trip)."""
    from web.ops.auth import COOKIE, Sessions

    session_id = request.cookies.get(COOKIE)
    if not session_id:
        return False
    settings = current_app.extensions["exolegs"].settings
    try:
        return Sessions(redis, settings.ops_session_minutes * 60).get(session_id) is not None
    except Exception:  # noqa: BLE001 - Redis trouble: no details, the counts still answer
        return False


def _safety(redis: Redis) -> RedisSafety:
    cache = current_app.extensions.get("exolegs-redis-safety")
    if cache is None:
        cache = current_app.extensions.setdefault("exolegs-redis-safety", SafetyCache(redis))
    found: RedisSafety = cache.get()
    return found


@bp.get("/healthz")
def healthz() -> ResponseReturnValue:
    """The process is up; says nothing about its dependencies."""
    return jsonify(ok=True)


@bp.get("/readyz")
def readyz() -> ResponseReturnValue:
    """Redis reachable (503 if not) and safe; counts of open circuits and spooled callbacks.

    With ``?strict=1`` a degraded state (an open circuit, a non-empty spool)
    also answers 503, for monitors that only look at the status code. For an
    operator (an /ops session) or with ``READYZ_DETAILS=true`` the body also
    lists each problem in words.
    """
    from worker.calls.readiness import readyz_fields
    from worker.jobs.circuit import open_circuits

    edge = current_app.extensions["exolegs"]
    details = edge.settings.readyz_details or _operator(edge.runtime.redis)
    body: dict[str, Any] = {"status": "ok", "redis": "ok"}
    problems: list[str] = []
    spooled = edge.spool.count()
    try:
        edge.runtime.redis.ping()
        circuits = open_circuits(edge.runtime.redis)
        safety = _safety(edge.runtime.redis)
        body.update(readyz_fields(edge.runtime.redis, edge.runtime.settings))
    except Exception as err:  # noqa: BLE001 - any Redis failure means not ready
        body.update(status="unavailable", redis="unreachable", spooled=spooled)
        if details:
            body["problems"] = [f"Redis unreachable: {type(err).__name__}"]
        return jsonify(body), 503
    body["open_circuits"] = len(circuits)
    body["spooled"] = spooled
    body["redis_safety"] = {**safety.summary(), "problems": len(safety.problems)}
    problems.extend(f"Redis is not safe for exolegs: {p}" for p in safety.problems)
    for name, state in circuits.items():
        problems.append(f"{name}: {state.get('reason', 'circuit open')}")
    if spooled:
        problems.append(f"{spooled} callback(s) spooled on disk, waiting for Redis")
    if problems:
        body["status"] = "degraded"
    if details:
        body["problems"] = problems
    strict = request.args.get("strict") in ("1", "true", "yes")
    return jsonify(body), (503 if strict and problems else 200)
