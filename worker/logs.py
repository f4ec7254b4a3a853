"""Logging set-up: key=value or JSON lines on stdout, with every secret scrubbed."""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Iterable

from worker.redact import scrub
from worker.settings import Settings


class ScrubFilter(logging.Filter):
    """Rewrites each record's final message so no secret can reach a handler."""

    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__()
        self.secrets = [s for s in secrets if s]

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        record.msg = scrub(message, self.secrets)
        record.args = None
        if record.exc_text:
            record.exc_text = scrub(record.exc_text, self.secrets)
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
        for key in ("call_sid", "job", "sink", "attempt"):
            if hasattr(record, key):
                out[key] = getattr(record, key)
        if record.exc_text:
            out["exc"] = record.exc_text
        return json.dumps(out, default=str)


def configure_logging(settings: Settings, *, stream: object = None) -> None:
    handler = logging.StreamHandler(stream or sys.stdout)  # type: ignore[arg-type]
    if settings.log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s", "%H:%M:%S")
        )
    scrubber = ScrubFilter(settings.secrets())
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


def init_sentry(settings: Settings, *, web: bool) -> bool:
    """Start Sentry when SENTRY_DSN is set; every event is scrubbed of secrets first."""
    if not settings.sentry_dsn:
        return False
    import sentry_sdk
    from sentry_sdk.integrations.celery import CeleryIntegration
    from sentry_sdk.integrations.flask import FlaskIntegration

    secrets = settings.secrets()

    def before_send(event: dict[str, object], hint: dict[str, object]) -> dict[str, object]:
        return scrub_event(event, secrets)

    integrations: list[object] = [CeleryIntegration()]
    if web:
        integrations.append(FlaskIntegration())
    sentry_sdk.init(
        dsn=settings.sentry_dsn,
        integrations=integrations,  # type: ignore[arg-type]
        before_send=before_send,  # type: ignore[arg-type]
        send_default_pii=False,
        traces_sample_rate=0.0,
    )
    return True


def scrub_event(event: dict[str, object], secrets: Iterable[str]) -> dict[str, object]:
    """Every string anywhere in a Sentry event, with secrets masked."""
    secrets = list(secrets)
    text = json.dumps(event, default=str)
    cleaned = scrub(text, [json.dumps(s)[1:-1] for s in secrets])
    result: dict[str, object] = json.loads(cleaned)
    return result
