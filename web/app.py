"""The Flask app factory for the callback edge."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from flask import Flask, jsonify
from flask.typing import ResponseReturnValue
from werkzeug.exceptions import HTTPException

from web.guard import Guard
from worker.errors import SettingsError
from worker.runtime import Runtime
from worker.settings import Settings
from worker.spool import Drainer, Spool

log = logging.getLogger("exolegs.web")


@dataclass
class Edge:
    """Everything the request handlers share, built once per process."""

    settings: Settings
    runtime: Runtime
    guard: Guard
    spool: Spool
    drainer: Drainer


def create_app(settings: Settings | None = None, *, runtime: Runtime | None = None) -> Flask:
    settings = settings or Settings.from_env()
    if not settings.callback_tokens:
        raise SettingsError(
            "CALLBACK_TOKEN", "must be set: it is the secret in the callback URL given to Exotel"
        )
    runtime = runtime or Runtime(settings)
    spool = Spool(settings.spool_dir)

    def accept_spooled(fields: dict[str, object]) -> None:
        from worker.callbacks import event_from_fields

        runtime.intake.accept(event_from_fields(fields))

    app = Flask("exolegs")
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    edge = Edge(settings, runtime, Guard(settings), spool, Drainer(spool, accept_spooled))
    app.extensions["exolegs"] = edge

    from web.callback import bp as callback_bp
    from web.health import bp as health_bp

    app.register_blueprint(callback_bp)
    app.register_blueprint(health_bp)

    @app.errorhandler(HTTPException)
    def http_error(err: HTTPException) -> ResponseReturnValue:
        return jsonify(error=err.description or err.name), err.code or 500

    @app.errorhandler(Exception)
    def unexpected(err: Exception) -> ResponseReturnValue:
        log.exception("unexpected error while handling a request")
        return jsonify(error="internal error"), 500

    edge.drainer.start()
    return app
