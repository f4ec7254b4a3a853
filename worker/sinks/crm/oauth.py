"""OAuth access tokens shared by every worker, and private keys named in sink URLs.

:func:`get_token` keeps one access token per set of credentials in Redis
(``exolegs:oauth:…``, this module's key family); one worker at a time mints
it, under a Redis lock, and a refused mint is remembered briefly so the
others fail fast instead of asking again.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from worker import keys
from worker.errors import (
    ConfigFaultError,
    ExolegsError,
    RateLimitedError,
    SettingsError,
    TransientError,
)
from worker.redact import remember_secret

if TYPE_CHECKING:
    from redis import Redis


@dataclass(frozen=True)
class Token:
    """A cached access token and what came with it (api_domain, instance_url...)."""

    value: str
    extra: dict[str, Any] = field(default_factory=dict)
    expires_at: float = 0.0

    def __post_init__(self) -> None:
        remember_secret(self.value)  # scrubbed from logs and Sentry from now on


#: Mints a new token: returns (access token, lifetime in seconds, extra fields).
Mint = Callable[[], tuple[str, float, dict[str, Any]]]

TOKEN_MARGIN_SECONDS = 120.0
LOCK_SECONDS = 30.0
WAIT_SECONDS = 30.0
CONFIG_BLOCK_SECONDS = 60.0
_POLL_SECONDS = 0.05

_local_tokens: dict[str, Token] = {}
_local_blocked: dict[str, tuple[float, str, str]] = {}
_local_locks: dict[str, threading.Lock] = {}
_local_guard = threading.Lock()


def token_key(crm: str, *parts: str) -> str:
    """The Redis key for one set of credentials (a new secret gets a new key)."""
    digest = hashlib.sha256("\x00".join(parts).encode()).hexdigest()[:16]
    return keys.token_cache(f"{crm}:{digest}")


def cache_seconds(lifetime: float, margin: float = TOKEN_MARGIN_SECONDS) -> float:
    """How long to keep a token that lives ``lifetime`` seconds."""
    if lifetime > 2 * margin:
        return lifetime - margin
    return max(1.0, lifetime / 2)


def get_token(
    redis: Redis | None,
    cache_key: str,
    mint: Mint,
    *,
    margin: float = TOKEN_MARGIN_SECONDS,
    lock_seconds: float = LOCK_SECONDS,
    wait_seconds: float = WAIT_SECONDS,
) -> Token:
    """The cached token for ``cache_key``, minting one (once, for all workers) if needed.

    With Redis, one worker at a time holds ``<cache_key>:lock`` and mints;
    the others wait for the token to appear. A mint refused as rate-limited
    (or as a configuration fault) is remembered briefly, so the other workers
    fail fast instead of asking the token endpoint again. Without Redis
    (``redis is None``) the same happens inside this process.
    """
    if redis is None:
        return _local_token(cache_key, mint, margin)
    from redis.exceptions import RedisError

    try:
        return _redis_token(redis, cache_key, mint, margin, lock_seconds, wait_seconds)
    except RedisError as err:
        raise TransientError(
            f"token cache in Redis unavailable ({type(err).__name__}); retrying"
        ) from err


def drop_token(redis: Redis | None, cache_key: str, stale: str) -> None:
    """Forget ``stale`` (the CRM said it expired) unless a newer token replaced it."""
    if redis is None:
        with _local_guard:
            current = _local_tokens.get(cache_key)
            if current is not None and current.value == stale:
                del _local_tokens[cache_key]
        return
    from redis.exceptions import RedisError, WatchError

    try:
        with redis.pipeline() as pipe:
            pipe.watch(cache_key)  # type: ignore[no-untyped-call]
            cached = _decode_token(pipe.get(cache_key))
            if cached is not None and cached.value == stale:
                pipe.multi()
                pipe.delete(cache_key)
                pipe.execute()
            else:
                pipe.unwatch()
    except WatchError:
        pass  # someone replaced it meanwhile: that one is fresh
    except RedisError as err:
        raise TransientError(f"token cache in Redis unavailable ({type(err).__name__})") from err


def _encode_token(token: Token) -> str:
    return json.dumps({"token": token.value, "extra": token.extra, "expires_at": token.expires_at})


def _decode_token(raw: Any) -> Token | None:
    if raw is None:
        return None
    try:
        data = json.loads(raw)
        return Token(str(data["token"]), dict(data.get("extra") or {}), float(data["expires_at"]))
    except (ValueError, KeyError, TypeError):
        return None


def _blocked_error(kind: str, message: str, remaining: float) -> ExolegsError:
    if kind == "rate_limited":
        return RateLimitedError(message, retry_after=max(1.0, remaining))
    return ConfigFaultError(message)


def _remember_failure(err: ExolegsError) -> tuple[str, float] | None:
    """(kind, seconds) to block further mints for, or None to let others try."""
    if isinstance(err, RateLimitedError):
        return "rate_limited", err.retry_after or 60.0
    if isinstance(err, ConfigFaultError):
        return "config", CONFIG_BLOCK_SECONDS
    return None


def _redis_token(
    redis: Redis,
    cache_key: str,
    mint: Mint,
    margin: float,
    lock_seconds: float,
    wait_seconds: float,
) -> Token:
    lock_key, blocked_key = f"{cache_key}:lock", f"{cache_key}:blocked"
    deadline = time.monotonic() + wait_seconds
    while True:
        cached = _decode_token(redis.get(cache_key))
        if cached is not None:
            return cached
        blocked = redis.get(blocked_key)
        if blocked is not None:
            data = json.loads(blocked)
            remaining = max(0.0, float(redis.pttl(blocked_key)) / 1000)
            raise _blocked_error(str(data["kind"]), str(data["message"]), remaining)
        owner = secrets.token_hex(8)
        if redis.set(lock_key, owner, nx=True, px=int(lock_seconds * 1000)):
            try:
                cached = _decode_token(redis.get(cache_key))
                if cached is not None:
                    return cached
                try:
                    value, lifetime, extra = mint()
                except ExolegsError as err:
                    failure = _remember_failure(err)
                    if failure is not None:
                        kind, seconds = failure
                        payload = json.dumps({"kind": kind, "message": err.message})
                        redis.set(blocked_key, payload, px=max(1, int(seconds * 1000)))
                    raise
                ttl = cache_seconds(lifetime, margin)
                token = Token(value, extra, time.time() + ttl)
                redis.set(cache_key, _encode_token(token), px=max(1, int(ttl * 1000)))
                return token
            finally:
                _release(redis, lock_key, owner)
        if time.monotonic() >= deadline:
            raise TransientError(
                f"another worker has been minting an access token for over {wait_seconds:g} s "
                f"({cache_key}); retrying later"
            )
        time.sleep(_POLL_SECONDS)


def _release(redis: Redis, lock_key: str, owner: str) -> None:
    """Delete the lock only if it is still ours (it may have expired and moved on)."""
    from redis.exceptions import WatchError

    try:
        with redis.pipeline() as pipe:
            pipe.watch(lock_key)  # type: ignore[no-untyped-call]
            current = pipe.get(lock_key)
            if (
                current is not None
                and (current.decode() if isinstance(current, bytes) else current) == owner
            ):
                pipe.multi()
                pipe.delete(lock_key)
                pipe.execute()
            else:
                pipe.unwatch()
    except WatchError:
        pass


def _local_token(cache_key: str, mint: Mint, margin: float) -> Token:
    with _local_guard:
        lock = _local_locks.setdefault(cache_key, threading.Lock())
    with lock:
        now = time.time()
        with _local_guard:
            cached = _local_tokens.get(cache_key)
            blocked = _local_blocked.get(cache_key)
        if cached is not None and cached.expires_at > now:
            return cached
        if blocked is not None and blocked[0] > now:
            raise _blocked_error(blocked[1], blocked[2], blocked[0] - now)
        try:
            value, lifetime, extra = mint()
        except ExolegsError as err:
            failure = _remember_failure(err)
            if failure is not None:
                with _local_guard:
                    _local_blocked[cache_key] = (now + failure[1], failure[0], err.message)
            raise
        token = Token(value, extra, time.time() + cache_seconds(lifetime, margin))
        with _local_guard:
            _local_tokens[cache_key] = token
            _local_blocked.pop(cache_key, None)
        return token


def forget_local_tokens() -> None:
    """Clear the in-process token cache (tests)."""
    with _local_guard:
        _local_tokens.clear()
        _local_blocked.clear()


def read_private_key_file(path: str, crm: str) -> bytes:
    """Read a PEM key named in a sink URL, with a clear error when it cannot be."""
    try:
        data = Path(os.path.expanduser(path)).read_bytes()
    except OSError as err:
        raise SettingsError(
            "SINKS", f"{crm} private key file {path} cannot be read: {err.strerror}"
        ) from err
    if b"PRIVATE KEY" not in data:
        raise SettingsError("SINKS", f"{crm} private key file {path} is not a PEM private key")
    return data
