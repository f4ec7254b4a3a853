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
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar, Token
from typing import Any

from worker.redact import MASK, mask_phones, runtime_secrets
from worker.settings import Settings

CALLBACK_PATH = re.compile(r"(/exotel/callback/)[^/?#&\s\"'<>]+")
_SECRET_KEY = re.compile(r"token|secret|password|passwd|key|auth|dsn|sig", re.IGNORECASE)
_SEPARATORS = re.compile(r"[,;\s]+")
_MIN_SECRET = 4
_MAX_EVENT_DEPTH = 64


class Scrubber:
    """Replaces secrets and callback tokens in text; built once, called per line.

    Besides the secrets it is built with, it masks every secret minted at run
    time (:func:`worker.redact.remember_secret`: OAuth access tokens), from
    the moment it is registered.
    """

    def __init__(self, secrets: Iterable[str]) -> None:
        self._fixed = {s for s in secrets if s and len(s) >= _MIN_SECRET}
        self._version = -1
        self.secrets: tuple[str, ...] = ()
        self._refresh()

    def _refresh(self) -> None:
        version, minted = runtime_secrets()
        if version != self._version:
            self.secrets = tuple(sorted(self._fixed | minted, key=len, reverse=True))
            self._version = version

    def __call__(self, text: str) -> str:
        self._refresh()
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


# ------------------------------------------------------------------ context
#: Top-level keys of a JSON log line, when known: which call, which job, whose.
CONTEXT_KEYS = ("call_sid", "job", "account", "attempt", "sink", "request_id")
_context: ContextVar[dict[str, Any]] = ContextVar("exolegs_log_context", default={})  # noqa: B039


@contextmanager
def log_context(**fields: Any) -> Iterator[None]:
    """Every line logged inside the block carries these fields (None values are left out)."""
    token = bind(**fields)
    try:
        yield
    finally:
        _context.reset(token)


def bind(**fields: Any) -> Token[dict[str, Any]]:
    """Add fields to the current context; :func:`unbind` with the token undoes it."""
    merged = {**_context.get(), **{k: v for k, v in fields.items() if v is not None}}
    return _context.set(merged)


def unbind(token: Token[dict[str, Any]]) -> None:
    _context.reset(token)


class ContextFilter(logging.Filter):
    """Copies the bound context onto each record (an explicit ``extra=`` wins)."""

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in _context.get().items():
            if not hasattr(record, key):
                setattr(record, key, value)
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key in CONTEXT_KEYS:
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
    handler.addFilter(ContextFilter())
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
#: Breadcrumb categories that carry data (commands with their arguments, SQL with
#: its parameters): never sent. Only their absence is checked; the integrations
#: that make them are off too (``auto_enabling_integrations=False``).
_DATA_BREADCRUMBS = ("redis", "query", "db", "sql", "celery", "subprocess")
#: Event keys whose strings are identifiers or versions, never free text.
_STRUCTURAL = frozenset(
    {
        "event_id", "trace_id", "span_id", "parent_span_id", "timestamp", "start_timestamp",
        "sent_at", "release", "environment", "platform", "server_name", "filename", "abs_path",
        "module", "function", "package", "lineno", "colno", "in_app", "type", "level", "logger",
        "category",
    }
)  # fmt: skip
#: Whole subtrees without customer data (SDK name, installed packages).
_SKIP_SUBTREES = frozenset({"sdk", "modules", "debug_meta"})


def sentry_options(settings: Settings, *, web: bool) -> dict[str, Any]:
    """The keyword arguments for ``sentry_sdk.init``: scrubbed, no bodies, no PII.

    What is off, and why (docs/security.md): stack-frame local variables (they
    hold tokens and records), request bodies, cookies, headers and query
    strings (callbacks carry customers' numbers), the Redis, SQL and other
    auto-enabled integrations (their breadcrumbs carry command arguments),
    tracing and trace propagation. ``data_collection`` is never passed: it
    switches sentry-sdk into a mode that collects frame variables and Redis
    arguments. Then every event and breadcrumb is scrubbed of known secrets
    (also those minted at run time) and phone numbers.
    """
    from sentry_sdk.integrations.celery import CeleryIntegration
    from sentry_sdk.integrations.flask import FlaskIntegration

    scrub = Scrubber(settings.secrets())

    def before_send(event: dict[str, Any], hint: dict[str, Any]) -> dict[str, Any] | None:
        try:
            return clean_event(event, scrub)
        except Exception:  # noqa: BLE001 - an event we cannot scrub is never sent
            return None

    def before_breadcrumb(crumb: dict[str, Any], hint: dict[str, Any]) -> dict[str, Any] | None:
        try:
            return clean_breadcrumb(crumb, scrub)
        except Exception:  # noqa: BLE001 - a breadcrumb we cannot scrub is dropped
            return None

    integrations: list[Any] = [CeleryIntegration()]
    if web:
        integrations.append(FlaskIntegration())
    return {
        "dsn": settings.sentry_dsn,
        "integrations": integrations,
        "auto_enabling_integrations": False,
        # send_default_pii is left unset: it defaults to off, and setting it is deprecated
        "include_local_variables": False,
        "max_request_body_size": "never",
        "before_send": before_send,
        "before_send_transaction": before_send,
        "before_breadcrumb": before_breadcrumb,
        "traces_sample_rate": 0.0,
        # no sentry-trace/baggage headers on outgoing requests: baggage carries the
        # DSN's public key to Exotel, CRMs and webhook receivers
        "trace_propagation_targets": [],
    }


def clean_breadcrumb(crumb: dict[str, Any], scrub: Scrubber) -> dict[str, Any] | None:
    """A breadcrumb without data: its category, level, time and scrubbed message only."""
    category = str(crumb.get("category") or "")
    if category.startswith(_DATA_BREADCRUMBS):
        return None
    kept: dict[str, Any] = {
        k: crumb[k] for k in ("type", "category", "level", "timestamp") if k in crumb
    }
    data = crumb.get("data")
    if isinstance(data, dict):  # an HTTP request: its method and status, not its URL
        small = {k: data[k] for k in ("method", "status_code") if k in data}
        if small:
            kept["data"] = small
    if isinstance(crumb.get("message"), str):
        kept["message"] = mask_phones(scrub(crumb["message"]))
    return kept


def clean_event(event: dict[str, Any], scrub: Scrubber) -> dict[str, Any]:
    """The event as sent: no request data, no frame variables, secrets and numbers masked."""
    request = event.get("request")
    if isinstance(request, dict):  # keep what was asked, not what was sent
        event["request"] = {k: request[k] for k in ("method", "url") if k in request}
        if "url" in event["request"]:
            event["request"]["url"] = str(event["request"]["url"]).split("?", 1)[0]
    for exception in (event.get("exception") or {}).get("values") or []:
        for frame in (exception.get("stacktrace") or {}).get("frames") or []:
            frame.pop("vars", None)
    for thread in (event.get("threads") or {}).get("values") or []:
        for frame in (thread.get("stacktrace") or {}).get("frames") or []:
            frame.pop("vars", None)
    crumbs = event.get("breadcrumbs")
    if isinstance(crumbs, dict) and isinstance(crumbs.get("values"), list):
        crumbs["values"] = [
            c
            for c in (clean_breadcrumb(c, scrub) for c in crumbs["values"] if isinstance(c, dict))
            if c is not None
        ]
    return scrub_event(event, scrub, phones=True)


def init_sentry(settings: Settings, *, web: bool) -> bool:
    """Start Sentry when SENTRY_DSN is set; every event is scrubbed of secrets first."""
    if not settings.sentry_dsn:
        return False
    import sentry_sdk

    sentry_sdk.init(**sentry_options(settings, web=web))
    return True


def scrub_event(
    event: dict[str, Any], secrets: Iterable[str] | Scrubber, *, phones: bool = False
) -> dict[str, Any]:
    """A copy of a Sentry event with secrets masked in every string, keys included.

    Walks the structure (it never re-parses text, so a secret that looks like
    a number cannot corrupt the event); values that are not JSON types are
    turned into scrubbed strings; nesting beyond 64 levels is cut. With
    ``phones``, phone-number-like digits are masked in every string too,
    except identifiers and times (ids, timestamps, file names, versions).
    """
    scrub = secrets if isinstance(secrets, Scrubber) else Scrubber(secrets)
    result = _scrub_value(event, scrub, 0, phones)
    return result if isinstance(result, dict) else {}


def _scrub_value(value: Any, scrub: Scrubber, depth: int, phones: bool) -> Any:
    if isinstance(value, str):
        return mask_phones(scrub(value)) if phones else scrub(value)
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int | float):  # a numeric secret (a PIN-like password) too
        text = str(value)
        masked = scrub(text) != text or (phones and mask_phones(text) != text)
        return MASK if masked else value
    if depth >= _MAX_EVENT_DEPTH:
        return "[too deep]"
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            name = scrub(str(key))
            if key in _SKIP_SUBTREES and depth == 0:
                out[name] = item
            elif key in _STRUCTURAL and isinstance(item, str | int | float):
                out[name] = _scrub_value(item, scrub, depth + 1, False)
            else:
                out[name] = _scrub_value(item, scrub, depth + 1, phones)
        return out
    if isinstance(value, list | tuple | set | frozenset):
        return [_scrub_value(v, scrub, depth + 1, phones) for v in value]
    if isinstance(value, bytes | bytearray):
        text = scrub(bytes(value).decode("utf-8", "replace"))
        return mask_phones(text) if phones else text
    return mask_phones(scrub(str(value))) if phones else scrub(str(value))
