"""Console access: its own credential, server-side sessions that expire, CSRF on every action.

A session is a random id in an ``HttpOnly``, ``SameSite=Strict`` cookie; what
it stands for (the user, its CSRF token, when it ends) lives in Redis under
``exolegs:ops:session:<sha256 of the id>``, so every web process and dyno
shares it, logging out really ends it, and the id is never stored. A session
ends ``OPS_SESSION_MINUTES`` after the last request, and 12 hours after login
whatever happens.

Every POST must carry the session's CSRF token (form field ``csrf_token`` or
header ``X-CSRF-Token``), and a browser's ``Origin``, when sent, must be this
host. The login form uses a double-submit cookie for the same purpose.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from flask import Request

if TYPE_CHECKING:
    from redis import Redis

COOKIE = "exolegs_ops"
LOGIN_COOKIE = "exolegs_ops_login"
ABSOLUTE_SECONDS = 12 * 3600


def session_key(session_id: str) -> str:
    return "exolegs:ops:session:" + hashlib.sha256(session_id.encode()).hexdigest()


@dataclass(frozen=True)
class Session:
    id: str
    user: str
    csrf: str
    started: float


class Sessions:
    def __init__(self, redis: Redis, idle_seconds: float) -> None:
        self.redis = redis
        self.idle = max(60, int(idle_seconds))

    def start(self, user: str) -> Session:
        session = Session(secrets.token_urlsafe(32), user, secrets.token_urlsafe(32), time.time())
        body = {"user": user, "csrf": session.csrf, "started": session.started}
        self.redis.set(session_key(session.id), json.dumps(body), ex=self.idle)
        return session

    def get(self, session_id: str | None, *, touch: bool = True) -> Session | None:
        """The live session for a cookie value; None once expired.

        ``touch`` restarts its idle timer: every request an operator makes
        does, the overview's automatic refresh does not.
        """
        if not session_id or len(session_id) > 128:
            return None
        key = session_key(session_id)
        pipe = self.redis.pipeline(transaction=False)
        pipe.get(key)
        if touch:
            pipe.expire(key, self.idle, xx=True)
        raw = pipe.execute()[0]
        if not raw:
            return None
        body = json.loads(raw)
        if time.time() - float(body["started"]) > ABSOLUTE_SECONDS:
            self.redis.delete(key)
            return None
        return Session(session_id, str(body["user"]), str(body["csrf"]), float(body["started"]))

    def end(self, session_id: str | None) -> None:
        if session_id:
            self.redis.delete(session_key(session_id))


def same(a: str | None, b: str | None) -> bool:
    return bool(a) and bool(b) and hmac.compare_digest(str(a).encode(), str(b).encode())


def csrf_ok(request: Request, expected: str) -> bool:
    """The request carries ``expected`` and, if the browser said where it came from, it is us."""
    sent = request.headers.get("X-CSRF-Token") or request.form.get("csrf_token")
    return same(sent, expected) and origin_ok(request)


def origin_ok(request: Request) -> bool:
    origin = request.headers.get("Origin")
    if not origin or origin == "null":
        return origin is None
    return urlsplit(origin).netloc == request.host


def client_address(request: Request) -> str:
    return request.remote_addr or "unknown"
