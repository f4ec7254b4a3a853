"""Run the edge under gunicorn with Heroku's recommended settings."""

from __future__ import annotations

import gc
from collections.abc import Iterable
from typing import Any
from urllib.parse import unquote

from gunicorn.app.base import BaseApplication
from gunicorn.glogging import Logger

from web.gthread import buffering_worker
from worker.logs import CALLBACK_PATH, ScrubFilter
from worker.redact import MASK
from worker.settings import Settings


class MaskingLogger(Logger):  # type: ignore[misc]
    """Gunicorn's logger with secrets kept out of its access and error logs.

    Gunicorn's loggers do not propagate to the root logger, so the app's
    scrubbing never sees them: every handler gunicorn installs gets a
    :class:`~worker.logs.ScrubFilter` (known secrets, any callback token), and
    each access-log atom has its ``/exotel/callback/<token>`` masked before the
    line is formatted. Use :func:`masking_logger` to bind the secrets.
    """

    secrets: tuple[str, ...] = ()

    def setup(self, cfg: Any) -> None:
        super().setup(cfg)
        scrubber = ScrubFilter(self.secrets)
        for logger in (self.error_log, self.access_log):
            for handler in logger.handlers:
                if not any(isinstance(f, ScrubFilter) for f in handler.filters):
                    handler.addFilter(scrubber)

    def atoms(self, resp: Any, req: Any, environ: Any, request_time: Any) -> dict[str, Any]:
        atoms: dict[str, Any] = super().atoms(resp, req, environ, request_time)
        for key, value in atoms.items():
            if isinstance(value, str):
                atoms[key] = mask_callback_path(value)
        return atoms


def mask_callback_path(text: str) -> str:
    """``text`` with any callback token masked, also when the path is percent-encoded.

    The router decodes the path before matching it, so ``/%65xotel%2Fcallback/%74…``
    reaches the callback with a real token; such an atom is logged decoded and masked.
    """
    if "%" in text:
        decoded = text
        for _ in range(3):  # undo double encoding too; the router undoes one
            once = unquote(decoded)
            if once == decoded:
                break
            decoded = once
        if "/exotel/callback/" in decoded:
            return CALLBACK_PATH.sub(rf"\1{MASK}", decoded)
    if "/exotel/callback/" in text:
        return CALLBACK_PATH.sub(rf"\1{MASK}", text)
    return text


def masking_logger(secrets: Iterable[str]) -> type[MaskingLogger]:
    """A :class:`MaskingLogger` subclass that also scrubs ``secrets``."""
    return type("MaskingLogger", (MaskingLogger,), {"secrets": tuple(secrets)})


def gunicorn_options(settings: Settings, **overrides: Any) -> dict[str, Any]:
    """The same options for our app and for the bench's bare-Flask baseline."""
    options: dict[str, Any] = {
        "bind": f"0.0.0.0:{settings.port}",
        "workers": settings.web_concurrency,
        # gthread, but a thread gets a connection only once its request is complete:
        # slow clients cost a socket each, never a thread (web/gthread.py).
        "worker_class": buffering_worker(
            settings.max_body_bytes, int(overrides.get("workers", settings.web_concurrency))
        ),
        "threads": 4,
        "timeout": 20,
        "graceful_timeout": 20,
        "keepalive": 100,
        "logger_class": masking_logger(settings.secrets()),
        "accesslog": "-" if settings.log_level == "DEBUG" else None,
        "errorlog": "-",
        "loglevel": "warning" if settings.log_level != "DEBUG" else "debug",
    }
    options.update(overrides)
    return options


class Server(BaseApplication):  # type: ignore[misc]
    def __init__(self, factory: Any, options: dict[str, Any]) -> None:
        self.factory = factory
        self.options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            if value is not None:
                self.cfg.set(key, value)

    def load(self) -> Any:
        return self.factory()


def serve(settings: Settings, **overrides: Any) -> None:
    from worker.logs import configure_logging, init_sentry

    def factory() -> Any:
        from web.app import create_app

        configure_logging(settings)
        init_sentry(settings, web=True)
        app = create_app(settings)
        # What is loaded by now (modules, the app, its clients) lives as long as the
        # process: frozen out of the cyclic collector, whose full passes otherwise walk
        # it all (~67k objects, 30 ms with every thread of the worker stopped).
        # https://docs.python.org/3/library/gc.html#gc.freeze
        gc.freeze()
        return app

    Server(factory, gunicorn_options(settings, **overrides)).run()
