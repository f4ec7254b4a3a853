"""Keep secrets out of everything exolegs prints."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable
from urllib.parse import parse_qsl, unquote, unquote_plus, urlsplit

MASK = "***"
MIN_SECRET = 4
_SECRETISH = re.compile(r"(token|secret|password|passwd|key|auth|dsn|sig)", re.IGNORECASE)
_SEPARATORS = re.compile(r"[,;\s]+")
#: A phone number in free text: 7 or more digits, optionally with a leading +
#: and single spaces, dots, dashes or brackets between them (+91 98765 43210,
#: 098765-43210, 919876543210). Digits inside a word (a call sid) are left alone.
PHONE = re.compile(r"(?<![\w+])\+?\(?\d(?:[\s().-]?\d){6,}(?!\w)")

_runtime_lock = threading.Lock()
_runtime: set[str] = set()
_runtime_version = 0


def remember_secret(value: object) -> None:
    """Add a secret minted at run time (an OAuth access token) to every scrubber.

    Call it the moment the value exists; logs, errors and Sentry events are
    scrubbed of it from then on, in this process.
    """
    global _runtime_version
    if not isinstance(value, str) or len(value) < MIN_SECRET or value in _runtime:
        return
    with _runtime_lock:
        if value not in _runtime:
            _runtime.add(value)
            _runtime_version += 1


def runtime_secrets() -> tuple[int, frozenset[str]]:
    """(version, the secrets :func:`remember_secret` was given); the version changes with them."""
    with _runtime_lock:
        return _runtime_version, frozenset(_runtime)


def mask_phones(text: str) -> str:
    """Every phone-number-like run of digits in ``text`` masked."""
    return PHONE.sub(MASK, text) if any(c.isdigit() for c in text) else text


def mask_url(url: str) -> str:
    """The URL with its password and every secret-looking query value masked.

    Works on the text itself, so a URL without a host (``jsonl:///abs/x``)
    comes back exactly as given apart from the masks.
    """
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return MASK
    masked = url
    if password:
        masked = masked.replace(f":{password}@", f":{MASK}@", 1)
    if parts.query:
        pieces = []
        for piece in parts.query.split("&"):
            key, sep, value = piece.partition("=")
            secret = sep and value and _SECRETISH.search(unquote_plus(key))
            pieces.append(f"{key}={MASK}" if secret else piece)
        masked = masked.replace(f"?{parts.query}", "?" + "&".join(pieces), 1)
    return masked


def url_secrets(url: str, *, username_too: bool = False) -> list[str]:
    """A URL's password (and user, for a Sentry DSN) and its secret-looking query values.

    Every spelling a reader may decode them to: raw, percent-decoded with and
    without ``+`` as a space, split on separators, and a ``whsec_`` key alone.
    """
    try:
        parts = urlsplit(url)
        password, username = parts.password, parts.username
    except ValueError:
        return []
    found: list[str] = []
    for value in (password, username if username_too else None):
        if value:
            found += [value, unquote(value)]
    for piece in parts.query.split("&"):
        raw_key, _, raw_value = piece.partition("=")
        if not raw_value or not _SECRETISH.search(unquote_plus(raw_key)):
            continue
        for value in {raw_value, unquote(raw_value), unquote_plus(raw_value)}:
            found.append(value)
            found.extend(_SEPARATORS.split(value))
    found += [v for k, v in parse_qsl(parts.query) if _SECRETISH.search(k) and v]
    found += [v.removeprefix("whsec_") for v in found if v.startswith("whsec_")]
    return [s for s in dict.fromkeys(found) if len(s) >= MIN_SECRET]


def scrub(text: str, secrets: Iterable[str]) -> str:
    """Replace every occurrence of each secret (longest first) with a mask."""
    for secret in sorted({s for s in secrets if s}, key=len, reverse=True):
        text = text.replace(secret, MASK)
    return text
