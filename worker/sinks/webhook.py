"""POST each call record to an HTTP endpoint, signed per Standard Webhooks v1.

``webhook+https://host/path?secret=whsec_...`` (``webhook+http://`` for local
testing). The request is::

    POST https://host/path
    Content-Type: application/json
    User-Agent: exolegs/<version>
    webhook-id: msg_<hash of sink name, call sid and schema>
    webhook-timestamp: <unix seconds of this attempt>
    webhook-signature: v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">

    {"type": "call.enriched", "timestamp": "<fetched_at>", "data": <record>}

``webhook-id`` is the same on every attempt for a call, so receivers use it to
drop repeats. Several secrets (repeated ``secret=`` or one value separated by
``%20``/``%2C``) give one ``v1,`` signature each, for zero-downtime rotation.
The secrets and exolegs' own parameters (``name``, ``rate_limit``) are never
sent to the endpoint; any other query parameter is.

Only 2xx is success. Redirects are not followed (a redirect is a failure that
needs the URL fixing); 410, and any other 4xx but 408 and 429, cannot succeed
on retry; 408, 429, 5xx, timeouts and connection errors can, after the
endpoint's ``Retry-After`` when it sends one.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from functools import cache
from importlib.metadata import PackageNotFoundError, version
from urllib.parse import unquote, unquote_plus, urlsplit, urlunsplit

import requests

from worker.calls.exotel import server_now
from worker.errors import (
    ExolegsError,
    PermanentError,
    RateLimitedError,
    SettingsError,
    TransientError,
)
from worker.redact import mask_url, scrub
from worker.sinks.base import CallRecord, Sink, SinkContext

SECRET_PREFIX = "whsec_"  # noqa: S105 - the format prefix, not a secret
EVENT_TYPE = "call.enriched"
TIMEOUT_SECONDS = 15.0
TOLERANCE_SECONDS = 5 * 60
#: Query parameters that configure exolegs and never reach the endpoint.
OWN_PARAMS = frozenset({"secret", "name", "rate_limit"})
_SEPARATORS = re.compile(r"[\s,]+")


@cache
def user_agent() -> str:
    """``exolegs/<installed version>``."""
    try:
        return f"exolegs/{version('exolegs')}"
    except PackageNotFoundError:  # running from a source tree that is not installed
        return "exolegs/0"


# ---------------------------------------------------------------- signing


def decode_secret(secret: str) -> bytes:
    """The HMAC key of a ``whsec_<base64>`` secret; ValueError when malformed.

    The message never contains the secret itself.
    """
    if not secret.startswith(SECRET_PREFIX):
        raise ValueError(f"a webhook secret must start with {SECRET_PREFIX}")
    try:
        key = base64.b64decode(secret[len(SECRET_PREFIX) :], validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(
            f"the part of a webhook secret after {SECRET_PREFIX} must be valid base64"
        ) from None
    if not key:
        raise ValueError(f"a webhook secret has no key after {SECRET_PREFIX}")
    return key


def sign(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """``v1,<base64 HMAC-SHA256("{id}.{timestamp}.{body}")>`` for one key."""
    content = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(key, content, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def verify(
    secret: str | Iterable[str],
    headers: Mapping[str, str],
    body: bytes | str,
    *,
    tolerance_seconds: float = TOLERANCE_SECONDS,
    now: float | None = None,
) -> bool:
    """True when ``body`` was signed with (one of) ``secret`` for a receiver.

    ``headers`` may use any case. The timestamp must be within
    ``tolerance_seconds`` of ``now``; signatures are compared in constant time.
    A malformed secret, header or signature is simply not verified.
    """
    lowered = {k.lower(): v for k, v in headers.items()}
    msg_id = lowered.get("webhook-id")
    stamp = lowered.get("webhook-timestamp")
    signatures = lowered.get("webhook-signature")
    if not msg_id or not stamp or not signatures:
        return False
    try:
        timestamp = int(stamp)
    except ValueError:
        return False
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance_seconds:
        return False
    raw = body.encode() if isinstance(body, str) else body
    secrets = [secret] if isinstance(secret, str) else list(secret)
    offered = [s for s in signatures.split(" ") if s.startswith("v1,")]
    for one in secrets:
        try:
            key = decode_secret(one)
        except ValueError:
            continue
        expected = sign(key, msg_id, timestamp, raw).encode()
        if any(hmac.compare_digest(expected, s.encode()) for s in offered):
            return True
    return False


# ---------------------------------------------------------------- URL parsing


def _split_query(query: str) -> tuple[list[str], list[str]]:
    """(secret values, raw ``k=v`` pieces to keep for the endpoint).

    Secret values are percent-decoded but a literal ``+`` is kept, because
    base64 uses it and secrets are pasted verbatim.
    """
    secrets: list[str] = []
    kept: list[str] = []
    for piece in query.split("&"):
        if not piece:
            continue
        raw_key, _, raw_value = piece.partition("=")
        key = unquote_plus(raw_key)
        if key == "secret":
            secrets.extend(s for s in _SEPARATORS.split(unquote(raw_value)) if s)
        elif key not in OWN_PARAMS:
            kept.append(piece)
    return secrets, kept


class WebhookSink(Sink):
    scheme = "webhook"
    url_help = (
        "webhook+https://host/path?secret=whsec_BASE64[&secret=whsec_NEW] - "
        "POST signed per Standard Webhooks"
    )
    #: Seconds to wait for the endpoint (Standard Webhooks recommends 15-30).
    timeout: float = TIMEOUT_SECONDS

    def __init__(self, url: str, context: SinkContext) -> None:
        super().__init__(url, context)
        parts = urlsplit(url)
        transport = parts.scheme.lower().partition("+")[2]
        if transport not in ("http", "https"):
            raise SettingsError(
                "SINKS",
                f"webhook sink {self.name}: {self.display_url} must start with "
                "webhook+https:// (or webhook+http:// for local testing)",
            )
        if not parts.hostname:
            raise SettingsError(
                "SINKS", f"webhook sink {self.name}: {self.display_url} names no host"
            )
        self._secrets, kept = _split_query(parts.query)
        if not self._secrets:
            raise SettingsError(
                "SINKS",
                f"webhook sink {self.name}: {self.display_url} needs ?secret=whsec_<base64> "
                "(the signing secret the receiver verifies with)",
            )
        keys: list[bytes] = []
        for n, secret in enumerate(self._secrets, start=1):
            try:
                keys.append(decode_secret(secret))
            except ValueError as err:
                which = f"secret #{n}" if len(self._secrets) > 1 else "the secret"
                raise SettingsError(
                    "SINKS",
                    f"webhook sink {self.name}: {which} in {self.display_url} is malformed: "
                    f"{err} (Standard Webhooks format whsec_<base64>)",
                ) from None
        self._keys = tuple(keys)
        #: Where records are POSTed: no secret, no exolegs parameters.
        self.target = urlunsplit((transport, parts.netloc, parts.path or "/", "&".join(kept), ""))
        self._session: requests.Session | None = None

    # ------------------------------------------------------------ helpers
    @property
    def secrets(self) -> tuple[str, ...]:
        """The configured secrets, so callers can scrub them from text."""
        return tuple(self._secrets)

    @property
    def target_display(self) -> str:
        return mask_url(self.target)

    def message_id(self, record: CallRecord) -> str:
        """The ``webhook-id`` of a record: the same on every attempt for this sink."""
        seed = f"{self.name}:{record.get('call_sid')}:{record.get('schema')}"
        return "msg_" + hashlib.sha256(seed.encode()).hexdigest()[:32]

    def body(self, record: CallRecord) -> bytes:
        stamp = record.get("fetched_at")
        if not isinstance(stamp, str) or not stamp:
            stamp = datetime.now(UTC).isoformat().replace("+00:00", "Z")
        payload = {"type": EVENT_TYPE, "timestamp": stamp, "data": record}
        return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()

    def headers(self, msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
        return {
            "Content-Type": "application/json",
            "User-Agent": user_agent(),
            "webhook-id": msg_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": " ".join(sign(k, msg_id, timestamp, body) for k in self._keys),
        }

    def _clean(self, text: str, limit: int = 200) -> str:
        one_line = " ".join(text.split())
        return scrub(one_line, self._secrets)[:limit]

    # ------------------------------------------------------------ Sink API
    def deliver(self, record: CallRecord) -> None:
        call_sid = record.get("call_sid")
        try:
            body = self.body(record)
        except (TypeError, ValueError) as err:
            raise PermanentError(
                f"webhook sink {self.name}: record for call {call_sid} is not JSON-serialisable "
                f"({self._clean(str(err))}): fix the record builder, then replay"
            ) from err
        msg_id = self.message_id(record)
        headers = self.headers(msg_id, int(time.time()), body)
        where = f"webhook sink {self.name} ({self.target_display}) for call {call_sid}"
        if self._session is None:
            self._session = requests.Session()
        try:
            response = self._session.post(
                self.target,
                data=body,
                headers=headers,
                timeout=self.timeout,
                allow_redirects=False,
            )
        except requests.Timeout as err:
            raise TransientError(
                f"{where}: no answer within {self.timeout:g}s: will retry; "
                "a receiver should answer 2xx quickly and process later"
            ) from err
        except requests.ConnectionError as err:
            raise TransientError(
                f"{where}: cannot connect ({self._clean(str(err), 200)}): will retry"
            ) from err
        except requests.RequestException as err:
            raise PermanentError(
                f"{where}: request failed ({self._clean(str(err))}): check the sink URL"
            ) from err
        with response:
            raise_for_answer(response, where=where, clean=self._clean)

    def check(self) -> str:
        count = len(self._keys)
        plural = "secret" if count == 1 else "secrets"
        return (
            f"POST {self.target_display} signed with {count} {plural} "
            "(configuration only; nothing sent)"
        )

    def close(self) -> None:
        if self._session is not None:
            self._session.close()
            self._session = None


# ---------------------------------------------------------------- answers


def retry_after_seconds(value: str | None, *, now: float | None = None) -> float | None:
    """``Retry-After`` as seconds from now: delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    current = time.time() if now is None else now
    return max(0.0, when.timestamp() - current)


def raise_for_answer(
    response: requests.Response, *, where: str, clean: Callable[[str, int], str]
) -> None:
    """Return on 2xx; otherwise raise the error the status calls for."""
    status = response.status_code
    if 200 <= status < 300:
        return
    retry_after = retry_after_seconds(
        response.headers.get("Retry-After"), now=server_now(response.headers)
    )
    error: ExolegsError
    hint = clean(response.text or response.reason or "", 200) or "(empty body)"
    if 300 <= status < 400:
        location = mask_url(response.headers.get("Location") or "(no Location header)")
        error = PermanentError(
            f"{where}: webhook answered a redirect to {clean(location, 300)}: "
            f"update the sink URL (redirects are not followed; got {status})",
            upstream_status=status,
        )
    elif status == 429:
        error = RateLimitedError(
            f"{where}: answered 429 Too Many Requests ({hint}): retrying after "
            f"{'its Retry-After' if retry_after is not None else 'backoff'}",
            retry_after=retry_after,
            upstream_status=status,
        )
    elif status == 408 or status >= 500:
        error = TransientError(
            f"{where}: answered {status} ({hint}): will retry",
            retry_after=retry_after,
            upstream_status=status,
        )
    elif status == 410:
        error = PermanentError(
            f"{where}: answered 410 Gone ({hint}): the endpoint is disabled; "
            "remove or update the sink URL, then replay the dead letters",
            upstream_status=status,
        )
    elif status in (401, 403):
        error = PermanentError(
            f"{where}: answered {status} ({hint}): the receiver rejected the request; "
            "check it verifies with the same whsec_ secret, then replay the dead letters",
            upstream_status=status,
        )
    else:
        error = PermanentError(
            f"{where}: answered {status} ({hint}): the receiver refused the record; "
            "fix the receiver or the sink URL, then replay the dead letters",
            upstream_status=status,
        )
    raise error
