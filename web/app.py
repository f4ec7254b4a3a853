"""The Flask app factory for the callback edge."""

from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from flask import Flask, Response
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge
from werkzeug.wsgi import get_input_stream

from web.callback import PATH_PREFIX, handle, json_reply
from web.gthread import INLINE_ATTRIBUTE, INLINE_SOCKET_SECONDS
from web.guard import Guard
from worker import metrics
from worker.errors import SettingsError
from worker.logs import bind, unbind
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
    counts: metrics.Batched
    #: The app's JSON provider: ``json.response(...)`` is ``jsonify(...)`` without a context.
    json: Any


def create_app(settings: Settings | None = None, *, runtime: Runtime | None = None) -> Flask:
    settings = settings or Settings.from_env()
    if not settings.any_callback_token:
        raise SettingsError(
            "CALLBACK_TOKEN", "must be set: it is the secret in the callback URL given to Exotel"
        )
    runtime = runtime or Runtime(settings)
    spool = Spool(settings.spool_dir)

    def accept_spooled(fields: dict[str, object], account: str) -> None:
        from worker.calls.callbacks import event_from_fields

        runtime.intake.accept(event_from_fields(fields), account)

    # No app-wide static files, no automatic OPTIONS answers, no slash-merging
    # redirects: the routes are the callback, the health checks and, when
    # configured, /metrics and the /ops console (docs/openapi.yaml).
    app = Flask("exolegs", static_folder=None)
    # One byte over the limit: werkzeug stops a streamed (chunked) body there without
    # an error, so the callback can tell "exactly the limit" from "more than it" (413).
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes + 1
    app.config["PROVIDE_AUTOMATIC_OPTIONS"] = False
    app.url_map.merge_slashes = False
    limiter = runtime.limiter if settings.callback_rate_limit else None
    guard = Guard(settings, limiter=limiter)
    edge = Edge(
        settings,
        runtime,
        guard,
        spool,
        Drainer(spool, accept_spooled),
        metrics.Batched(runtime.redis),
        app.json,
    )
    app.extensions["exolegs"] = edge

    from web.callback import bp as callback_bp
    from web.health import bp as health_bp

    app.register_blueprint(callback_bp)
    app.register_blueprint(health_bp)
    if settings.metrics_token:
        from web.metrics import bp as metrics_bp

        app.register_blueprint(metrics_bp)
    if settings.ops_enabled:
        from web.ops import bp as ops_bp

        app.register_blueprint(ops_bp)
    _no_implicit_head(app, "callback.callback")

    app.wsgi_app = RequestIds(FastCallback(app.wsgi_app, edge))  # type: ignore[method-assign]
    setattr(app, INLINE_ATTRIBUTE, InlineCallbacks(edge))

    @app.errorhandler(HTTPException)
    def http_error(err: HTTPException) -> Response:
        return json_error(edge, err)

    @app.errorhandler(Exception)
    def unexpected(err: Exception) -> Response:
        return unexpected_error(edge, err)

    edge.drainer.start()
    return app


#: Short one-line reasons for werkzeug's stock errors (their descriptions are prose).
_REASONS = {
    400: "bad request",
    404: "not found",
    405: "method not allowed",
    408: "request timeout",
    411: "length required",
    413: "body too large",
    414: "URI too long",
    415: "unsupported media type",
    431: "request header fields too large",
}


def json_error(edge: Edge, err: HTTPException) -> Response:
    """Any HTTP error as ``{"error": "<one line>"}``, keeping its headers (Allow, ...)."""
    code = err.code or 500
    if isinstance(err, RequestEntityTooLarge):
        message = f"body over {edge.settings.max_body_bytes} bytes"
    elif err.description and err.description != type(err).description:
        message = " ".join(str(err.description).split())[:200]
    else:
        message = _REASONS.get(code) or err.name.lower()
    headers = [(n, v) for n, v in err.get_headers() if n.lower() != "content-type"]
    return json_reply(edge, code, headers, error=message)


def unexpected_error(edge: Edge, err: Exception) -> Response:
    """Any other exception: a broken body framing is 400, anything else 500 (and logged)."""
    if _is_framing_error(err):
        # The server found the body's framing broken while we read it (a bad
        # chunk size, a missing terminator): the client's fault, not ours.
        return json_reply(edge, 400, error="malformed request body framing")
    log.exception("unexpected error while handling a request")
    return json_reply(edge, 500, error="internal error")


def _is_framing_error(err: Exception) -> bool:
    """A request-parsing error the WSGI server raised from inside ``wsgi.input``."""
    try:
        from gunicorn.http.errors import ParseException
    except ImportError:  # pragma: no cover - gunicorn is a dependency
        return False
    return isinstance(err, ParseException)


def _no_implicit_head(app: Flask, endpoint: str) -> None:
    """Werkzeug adds HEAD to every GET rule; the callback books work, so it takes GET/POST only.

    Then HEAD is a 405 like any other method, and ``Allow`` says ``GET, POST``.
    """
    for rule in app.url_map.iter_rules(endpoint):
        if rule.methods is not None:
            rule.methods.discard("HEAD")


_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")
#: New request ids taken from one ``os.urandom`` call, per thread.
_IDS_PER_DRAW = 256


class _RandomBytes(threading.local):
    """Each thread's unused ``os.urandom`` bytes, 16 per request id."""

    pool = b""
    at = 0


_random = _RandomBytes()


def _forget_random_bytes() -> None:
    """A forked child must not hand out the ids its parent's threads still hold."""
    global _random
    _random = _RandomBytes()


os.register_at_fork(after_in_child=_forget_random_bytes)


def new_request_id() -> str:
    """16 random bytes from ``os.urandom`` in hex, as ``os.urandom(16).hex()`` gives.

    The bytes come from one ``os.urandom`` call per 256 ids (per thread), each used
    once: that call releases the GIL, and in a busy worker getting the GIL back
    after it cost a thread switch on every request.
    """
    bytes_ = _random
    at = bytes_.at
    if at >= len(bytes_.pool):
        bytes_.pool, at = os.urandom(16 * _IDS_PER_DRAW), 0
    bytes_.at = at + 16
    return bytes_.pool[at : at + 16].hex()


class RequestIds:
    """Each request's id (the router's ``X-Request-ID``, else a new one) in its log lines
    and in its answer's ``X-Request-ID``.

    A WSGI wrapper rather than three Flask hooks (before, after, teardown) and
    ``flask.g``: the same effect at a fraction of the cost on every callback.
    The id is unbound when the app returns, as Flask's teardown did.
    """

    def __init__(self, inner: Callable[[dict[str, Any], Any], Iterable[bytes]]) -> None:
        self.inner = inner

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        sent = environ.get("HTTP_X_REQUEST_ID")
        request_id = sent if sent and _REQUEST_ID.fullmatch(sent) else new_request_id()
        token = bind(request_id=request_id)

        def tagged(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            headers.append(("X-Request-ID", request_id))
            return start_response(status, headers, exc_info)

        try:
            return self.inner(environ, tagged)
        finally:
            unbind(token)


WSGIApp = Callable[[dict[str, Any], Any], Iterable[bytes]]


class FastCallback:
    """``POST /exotel/callback/<token>`` with a ``Content-Length`` body, straight from
    the WSGI environ, in front of Flask.

    Flask's request and app contexts, URL map, request object and response object
    cost a callback about as much CPU as everything the bare-Flask baseline does.
    This path runs the same :func:`web.callback.handle` as the Flask view, with the
    body read by the same werkzeug stream (capped one byte over the limit) and the
    same error replies as the app's error handlers. It takes only a request whose
    answer does not depend on anything else Flask does: POST, the path
    ``/exotel/callback/<token>`` with an ASCII token and no ``SCRIPT_NAME``, no
    query string, a ``Content-Length`` of plain digits up to the body limit and no
    ``Transfer-Encoding``. Everything else goes to Flask unchanged, before anything
    (authentication included) has been done.
    """

    def __init__(self, inner: WSGIApp, edge: Edge) -> None:
        self.inner = inner
        self.edge = edge
        self.max_body_bytes = edge.settings.max_body_bytes

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        token = path[len(PATH_PREFIX) :]
        length = environ.get("CONTENT_LENGTH")
        if (
            environ.get("REQUEST_METHOD") != "POST"
            or not path.startswith(PATH_PREFIX)
            or not token
            or "/" in token
            or not token.isascii()
            or environ.get("SCRIPT_NAME")
            or environ.get("QUERY_STRING")
            or "HTTP_TRANSFER_ENCODING" in environ
            or not isinstance(length, str)
            or not (length.isascii() and length.isdigit())
            or int(length) > self.max_body_bytes
        ):
            return self.inner(environ, start_response)
        edge = self.edge
        try:
            reply = handle(edge, environ, token, self._read_body(environ), _no_query)
        except HTTPException as err:
            reply = json_error(edge, err)
        except Exception as err:  # noqa: BLE001 - what the app's error handler does
            reply = unexpected_error(edge, err)
        if isinstance(reply, bytes):
            start_response(
                "200 OK",
                [("Content-Type", "application/json"), ("Content-Length", str(len(reply)))],
            )
            return [reply]
        return reply(environ, start_response)

    def _read_body(self, environ: dict[str, Any]) -> Callable[[], bytes]:
        """``request.get_data(cache=False)`` with the app's MAX_CONTENT_LENGTH."""
        limit = self.max_body_bytes + 1
        return lambda: get_input_stream(environ, max_content_length=limit).read()


class InlineCallbacks:
    """Callbacks may be answered on the web worker's event loop (web/gthread.py).

    A callback's one wait is the intake script's round trip, and on the event
    loop's thread that waits at most :data:`~web.gthread.INLINE_SOCKET_SECONDS`,
    connecting included, without retries (``Intake.bound_waits``): a slower
    Redis raises there, and the callback is spooled as when Redis is down. Not
    with ``CALLBACK_RATE_LIMIT``, whose check is a Redis call of its own with
    the client's usual timeouts and retries.
    """

    prefixes = (b"POST " + PATH_PREFIX.encode(),)

    def __init__(self, edge: Edge) -> None:
        self.edge = edge

    def bind_thread(self) -> bool:
        if self.edge.guard.limiter is not None:
            return False
        return self.edge.runtime.intake.bound_waits(INLINE_SOCKET_SECONDS)


def _no_query() -> list[tuple[str, str]]:
    return []
