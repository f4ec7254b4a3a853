"""Run the edge under gunicorn with Heroku's recommended settings."""

from __future__ import annotations

import re
from typing import Any

from gunicorn.app.base import BaseApplication
from gunicorn.glogging import Logger

from worker.settings import Settings

_TOKEN_IN_PATH = re.compile(r"(/exotel/callback/)[^/?\s\"]+")


class MaskingLogger(Logger):  # type: ignore[misc]
    """Gunicorn's logger, with the callback token masked in every access line."""

    def atoms(self, resp: Any, req: Any, environ: Any, request_time: Any) -> dict[str, Any]:
        atoms: dict[str, Any] = super().atoms(resp, req, environ, request_time)
        for key in ("r", "U", "q", "{raw_uri}e"):
            if isinstance(atoms.get(key), str):
                atoms[key] = _TOKEN_IN_PATH.sub(r"\1***", atoms[key])
        return atoms


def gunicorn_options(settings: Settings, **overrides: Any) -> dict[str, Any]:
    """The same options for our app and for the bench's bare-Flask baseline."""
    options: dict[str, Any] = {
        "bind": f"0.0.0.0:{settings.port}",
        "workers": settings.web_concurrency,
        "worker_class": "gthread",
        "threads": 4,
        "timeout": 20,
        "graceful_timeout": 20,
        "keepalive": 100,
        "logger_class": MaskingLogger,
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
        return create_app(settings)

    Server(factory, gunicorn_options(settings, **overrides)).run()
