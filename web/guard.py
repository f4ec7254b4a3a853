"""Who may post a callback, checked before the body is read.

Exotel does not sign its callbacks, so the secret in the URL is the only proof
of origin and the endpoint is treated as open to the whole internet. The
checks run in this order, cheapest and least revealing first (see
``docs/security.md``):

1. **Client network** (``CALLBACK_ALLOWED_IPS``): a client outside every
   listed network gets 403 at once, without touching Redis. A client inside
   is trusted not to flood and skips the rate limit.
2. **Rate limit** (``CALLBACK_RATE_LIMIT``): per client address, in Redis so
   it holds across every web process; over the limit is 429 with
   ``Retry-After``. It runs before the token check so that guessing tokens is
   throttled too. If Redis cannot answer, the limit fails open for a few
   seconds: the callback must still reach the spool.
3. **Path token** (``CALLBACK_TOKEN``, comma-separated for rotation): compared
   in constant time against every configured token (HMACs of equal length, no
   early exit), 403 when none matches.
4. **HTTP Basic** (``CALLBACK_BASIC_AUTH``): after the token, so that without
   the token nobody learns whether a password is right; 401 with
   ``WWW-Authenticate``.

The client address is ``REMOTE_ADDR`` unless ``TRUSTED_PROXIES`` = N > 0 *and*
the TCP peer is one of ``TRUSTED_PROXY_IPS`` (on Heroku, where only the
router can reach a dyno, any peer), in which case it is the entry N hops from
the right of ``X-Forwarded-For`` (each proxy appends the address it saw, so
everything further left is whatever the client wrote). A request straight
from anyone else has its ``X-Forwarded-For`` ignored: otherwise a forged
header would pass the allow-list and dodge the rate limit.

Everything that can be computed once is computed in ``__init__``; a request
with no allow-list and no rate limit costs one HMAC and one comparison per
configured token.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
import logging
import math
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from redis.exceptions import RedisError

from worker.checks import fingerprint
from worker.settings import Settings

if TYPE_CHECKING:
    from worker.jobs.ratelimit import RateLimiter

log = logging.getLogger("exolegs.web.guard")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

#: How long the rate limit stays off after Redis failed to answer it.
LIMIT_FAIL_OPEN_SECONDS = 5.0
#: IPv6 clients are limited per /64: one subscriber usually holds a whole /64.
IPV6_LIMIT_PREFIX = 64
#: At most one "an old token is still in use" line per token per this many seconds.
OLD_TOKEN_NOTE_SECONDS = 60.0
#: Longest Authorization header worth decoding (a user:password pair is short).
MAX_AUTHORIZATION = 1024

REALM = 'Basic realm="exolegs callbacks", charset="UTF-8"'


@dataclass(frozen=True)
class Refusal:
    """Why a request is refused: the status, a one-line reason and extra headers."""

    status: int
    message: str
    headers: tuple[tuple[str, str], ...] = field(default=())


FORBIDDEN = Refusal(403, "forbidden")
NOT_ALLOWED = Refusal(403, "client address not allowed")
UNAUTHORIZED = Refusal(401, "authentication required", (("WWW-Authenticate", REALM),))


def parse_address(text: str) -> IPAddress | None:
    """An address from ``REMOTE_ADDR`` or one ``X-Forwarded-For`` entry, else None.

    Tolerates a port (``1.2.3.4:5678``, ``[2001:db8::1]:443``) and unwraps
    IPv4-mapped IPv6 addresses so an IPv4 allow-list still matches them.
    """
    text = text.strip()
    if not text or len(text) > 64:
        return None
    if text.startswith("["):
        text = text[1 : text.find("]")] if "]" in text else ""
    elif text.count(":") == 1:
        text = text.partition(":")[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def client_address(environ: Mapping[str, Any], settings: Settings) -> IPAddress | None:
    """The address of whoever sent the request, ``TRUSTED_PROXIES`` hops back.

    It is the peer of the TCP connection unless that peer is a trusted proxy
    (:meth:`Settings.trusts_proxy`); then it is the Nth entry from the right of
    ``X-Forwarded-For`` (several headers count as one list, in order). When the
    header has fewer than N entries the request did not come through all the
    proxies and the peer address is used. An entry that is not an address
    gives None (unknown).
    """
    remote = environ.get("REMOTE_ADDR")
    peer = parse_address(remote) if isinstance(remote, str) else None
    hops = settings.trusted_proxies
    if hops > 0 and settings.trusts_proxy(peer):
        forwarded = environ.get("HTTP_X_FORWARDED_FOR")
        if isinstance(forwarded, str) and forwarded:
            entries = forwarded.split(",")
            if len(entries) >= hops:
                return parse_address(entries[-hops])
    return peer


def limit_key(address: IPAddress | None) -> str:
    """The rate-limit bucket of a client: its IPv4 address or its IPv6 /64."""
    if address is None:
        return "callback-client:unknown"
    if isinstance(address, ipaddress.IPv6Address):
        net = ipaddress.IPv6Network((address, IPV6_LIMIT_PREFIX), strict=False)
        return f"callback-client:{net.network_address}/{IPV6_LIMIT_PREFIX}"
    return f"callback-client:{address}"


class Guard:
    """The authentication and abuse checks of the callback endpoint, built once."""

    def __init__(self, settings: Settings, *, limiter: RateLimiter | None = None) -> None:
        # Tokens are compared as HMACs under a per-process key: equal length,
        # so compare_digest reveals neither the tokens' values nor their lengths.
        self._key = os.urandom(32)
        # Every account's tokens; the token in the URL says whose callback it is.
        tokens = settings.token_accounts
        self._tokens = tuple(self._digest(t.encode()) for t, _, _ in tokens)
        self._fingerprints = tuple(fingerprint(t) for t, _, _ in tokens)
        self._accounts = tuple(name for _, name, _ in tokens)
        self._positions = tuple(n for _, _, n in tokens)
        self._counts = {name: self._accounts.count(name) for name in self._accounts}
        self._old_token_noted: dict[int, float] = {}
        self._basic: bytes | None = None
        if settings.callback_basic_auth is not None:
            user, password = settings.callback_basic_auth
            self._basic = self._digest(f"{user}:{password}".encode())
        self.networks = settings.callback_allowed_ips
        self.settings = settings
        self.rate = settings.callback_rate_limit
        # "100/minute" means up to 100 at once, then refilled at 100 a minute.
        self.burst = max(1, int(self.rate.count)) if self.rate else 1
        self.limiter = limiter if self.rate else None
        if self.rate and limiter is None:
            raise ValueError("CALLBACK_RATE_LIMIT is set but no rate limiter was given")
        self._limit_off_until = 0.0

    def _digest(self, value: bytes) -> bytes:
        return hmac.new(self._key, value, hashlib.sha256).digest()

    # ------------------------------------------------------------- the checks
    def token_index(self, token: str) -> int:
        """Which configured token ``token`` is (0 = the first), or -1; constant time."""
        given = self._digest(token.encode("utf-8", "surrogateescape"))
        found = -1
        for index, expected in enumerate(self._tokens):  # no early exit: all are compared
            if hmac.compare_digest(given, expected):
                found = index
        return found

    def token_ok(self, token: str) -> bool:
        """True when ``token`` is one of the configured tokens (constant time)."""
        return self.token_index(token) >= 0

    def _note_old_token(self, index: int) -> None:
        """During a rotation, say (once a minute) that Exotel still uses an older URL."""
        now = time.monotonic()
        if now - self._old_token_noted.get(index, -OLD_TOKEN_NOTE_SECONDS) < OLD_TOKEN_NOTE_SECONDS:
            return
        self._old_token_noted[index] = now
        account = self._accounts[index]
        log.info(
            "callback authenticated with %s entry %d of %d (%s): Exotel still "
            "calls a URL with an older token; remove it once this stops (docs/security.md)",
            "CALLBACK_TOKEN" if account == "default" else f"account {account}'s callback_tokens",
            self._positions[index] + 1,
            self._counts[account],
            self._fingerprints[index],
        )

    def basic_ok(self, authorization: str | None) -> bool:
        """True when Basic auth is off, or the header carries the configured user:password."""
        if self._basic is None:
            return True
        if not authorization or len(authorization) > MAX_AUTHORIZATION:
            return False
        scheme, _, encoded = authorization.strip().partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            credentials = base64.b64decode(encoded.strip(), validate=True)
        except (binascii.Error, ValueError):
            return False
        return hmac.compare_digest(self._digest(credentials), self._basic)

    def allowed(self, address: IPAddress | None) -> bool:
        """True when the address is inside one of CALLBACK_ALLOWED_IPS."""
        return address is not None and any(address in net for net in self.networks)

    def throttle(self, address: IPAddress | None) -> float:
        """Seconds this client must wait (0 = go); fails open while Redis is unreachable."""
        if self.limiter is None or self.rate is None:
            return 0.0
        now = time.monotonic()
        if now < self._limit_off_until:
            return 0.0
        try:
            return self.limiter.acquire(limit_key(address), self.rate, self.burst)
        except RedisError as err:
            self._limit_off_until = now + LIMIT_FAIL_OPEN_SECONDS
            log.warning(
                "callback rate limit off for %.0fs: Redis unreachable (%s)",
                LIMIT_FAIL_OPEN_SECONDS,
                type(err).__name__,
            )
            return 0.0

    def check(self, environ: Mapping[str, Any], token: str) -> Refusal | None:
        """None when the request may proceed, else the :class:`Refusal` to answer with."""
        outcome = self.authenticate(environ, token)
        return outcome if isinstance(outcome, Refusal) else None

    def authenticate(self, environ: Mapping[str, Any], token: str) -> Refusal | str:
        """The name of the account whose token is in the URL, or the :class:`Refusal`."""
        exempt = False
        if self.networks:
            address = client_address(environ, self.settings)
            if not self.allowed(address):
                log.debug("callback refused: client %s not in CALLBACK_ALLOWED_IPS", address)
                return NOT_ALLOWED
            exempt = True
        if self.limiter is not None and not exempt:
            wait = self.throttle(client_address(environ, self.settings))
            if wait > 0:
                retry_after = str(max(1, math.ceil(wait)))
                return Refusal(429, "too many requests", (("Retry-After", retry_after),))
        index = self.token_index(token)
        if index < 0:
            return FORBIDDEN
        if self._positions[index] > 0:
            self._note_old_token(index)
        if self._basic is not None:
            authorization = environ.get("HTTP_AUTHORIZATION")
            if not self.basic_ok(authorization if isinstance(authorization, str) else None):
                return UNAUTHORIZED
        return self._accounts[index]
