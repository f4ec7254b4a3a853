"""Logging set-up: key=value or JSON lines on stdout, with every secret scrubbed.

What is scrubbed, everywhere exolegs writes (log lines, gunicorn's access and
error logs, Sentry events, ``exolegs check``): every value from
:meth:`Settings.secrets` (the Exotel API token and its Basic header, every callback
token, the Basic-auth password and its header, SENTRY_DSN and its key, URL
passwords and secret-looking query values of REDIS_URL and SINKS, each also
percent-encoded), and any ``/exotel/callback/<token>`` path, whatever the
token, becomes ``/exotel/callback/***``.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from collections.abc import Callable, Iterable
from typing import Any

from worker.redact import MASK
from worker.settings import Settings

CALLBACK_PATH = re.compile(r"(/exotel/callback/)[^/?#&\s\"'<>]+")
_SECRET_KEY = re.compile(r"token|secret|password|passwd|key|auth|dsn|sig", re.IGNORECASE)
_SEPARATORS = re.compile(r"[,;\s]+")
_MIN_SECRET = 4
_MAX_EVENT_DEPTH = 64


class Scrubber:
    """Replaces secrets and callback tokens in text; built once, called per line."""

    def __init__(self, secrets: Iterable[str]) -> None:
        unique = {s for s in secrets if s and len(s) >= _MIN_SECRET}
        self.secrets = tuple(sorted(unique, key=len, reverse=True))

    def __call__(self, text: str) -> str:
        for secret in self.secrets:
            if secret in text:
                text = text.replace(secret, MASK)
        if "/exotel/callback/" in text:
            text = CALLBACK_PATH.sub(rf"\1{MASK}", text)
        return text


# ------------------------------------------------------------------ logging
class ScrubFilter(logging.Filter):
    """Rewrites each record's final message so no secret can reach a handler."""

    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__()
        self.scrub = Scrubber(secrets)
        self.secrets = list(self.scrub.secrets)

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a bad format string must not break the caller
            message = f"{record.msg!r} (unformattable arguments)"
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        record.msg = self.scrub(message)
        record.args = None
        if record.exc_text:
            record.exc_text = self.scrub(record.exc_text)
        if record.stack_info:
            record.stack_info = self.scrub(record.stack_info)
        return True


class ScrubbingFormatter(logging.Formatter):
    """Scrubs the finished line too: extras and formatter output get the same treatment."""

    def __init__(self, inner: logging.Formatter, scrub: Callable[[str], str]) -> None:
        super().__init__()
        self.inner = inner
        self.scrub = scrub

    def format(self, record: logging.LogRecord) -> str:
        return self.scrub(self.inner.format(record))


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key in ("call_sid", "job", "sink", "attempt"):
            if hasattr(record, key):
                out[key] = getattr(record, key)
        if record.exc_text:
            out["exc"] = record.exc_text
        return json.dumps(out, default=str)


def configure_logging(settings: Settings, *, stream: object = None) -> None:
    handler = logging.StreamHandler(stream or sys.stdout)  # type: ignore[arg-type]
    inner: logging.Formatter
    if settings.log_format == "json":
        inner = JsonFormatter()
    else:
        inner = logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s", "%H:%M:%S")
    scrubber = ScrubFilter(settings.secrets())
    handler.setFormatter(ScrubbingFormatter(inner, scrubber.scrub))
    handler.addFilter(scrubber)
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, "_exolegs", False):
            root.removeHandler(old)
    handler._exolegs = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(settings.log_level)
    for noisy in ("urllib3", "werkzeug"):
        logging.getLogger(noisy).setLevel(max(logging.INFO, root.level))


# ------------------------------------------------------------------- Sentry
def sentry_options(settings: Settings, *, web: bool) -> dict[str, Any]:
    """The keyword arguments for ``sentry_sdk.init``: scrubbed, no bodies, no PII."""
    from sentry_sdk.consts import DEFAULT_OPTIONS
    from sentry_sdk.integrations.celery import CeleryIntegration
    from sentry_sdk.integrations.flask import FlaskIntegration

    scrub = Scrubber(settings.secrets())

    def before_send(event: dict[str, Any], hint: dict[str, Any]) -> dict[str, Any] | None:
        try:
            request = event.get("request")
            if isinstance(request, dict):  # bodies carry customers' numbers: never sent
                request.pop("data", None)
                request.pop("cookies", None)
            return scrub_event(event, scrub)
        except Exception:  # noqa: BLE001 - an event we cannot scrub is never sent
            return None

    integrations: list[Any] = [CeleryIntegration()]
    if web:
        integrations.append(FlaskIntegration())
    options: dict[str, Any] = {
        "dsn": settings.sentry_dsn,
        "integrations": integrations,
        "before_send": before_send,
        "before_send_transaction": before_send,
        "max_request_body_size": "never",
        "traces_sample_rate": 0.0,
        # no sentry-trace/baggage headers on outgoing requests: baggage carries the
        # DSN's public key to Exotel, CRMs and webhook receivers
        "trace_propagation_targets": [],
    }
    if "data_collection" in DEFAULT_OPTIONS:  # sentry-sdk >= 2.5x: supersedes send_default_pii
        options["data_collection"] = {"user_info": False, "http_bodies": []}
    else:
        options["send_default_pii"] = False
    return options


def init_sentry(settings: Settings, *, web: bool) -> bool:
    """Start Sentry when SENTRY_DSN is set; every event is scrubbed of secrets first."""
    if not settings.sentry_dsn:
        return False
    import sentry_sdk

    sentry_sdk.init(**sentry_options(settings, web=web))
    return True


def scrub_event(event: dict[str, Any], secrets: Iterable[str] | Scrubber) -> dict[str, Any]:
    """A copy of a Sentry event with secrets masked in every string, keys included.

    Walks the structure (it never re-parses text, so a secret that looks like
    a number cannot corrupt the event); values that are not JSON types are
    turned into scrubbed strings; nesting beyond 64 levels is cut.
    """
    scrub = secrets if isinstance(secrets, Scrubber) else Scrubber(secrets)
    result = _scrub_value(event, scrub, 0)
    return result if isinstance(result, dict) else {}


def _scrub_value(value: Any, scrub: Scrubber, depth: int) -> Any:
    if isinstance(value, str):
        return scrub(value)
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int | float):  # a numeric secret (a PIN-like password) too
        return MASK if scrub(str(value)) != str(value) else value
    if depth >= _MAX_EVENT_DEPTH:
        return "[too deep]"
    if isinstance(value, dict):
        return {scrub(str(k)): _scrub_value(v, scrub, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_scrub_value(v, scrub, depth + 1) for v in value]
    if isinstance(value, bytes | bytearray):
        return scrub(bytes(value).decode("utf-8", "replace"))
    return scrub(str(value))
