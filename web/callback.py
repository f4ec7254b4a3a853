"""The callback endpoint: parse, authenticate, dedupe, enqueue; nothing more.

It answers in milliseconds: one Lua call to Redis books the legs fetch. When
Redis is unreachable the callback goes to the disk spool and is still
acknowledged; only if the spool cannot be written either does Exotel get a
503 (and retry).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from flask import Blueprint, Response, current_app, request
from flask.typing import ResponseReturnValue
from redis.exceptions import RedisError
from werkzeug.wsgi import get_content_length

from web.guard import Refusal
from web.payload import PayloadError, decode_body
from worker import metrics
from worker.calls.callbacks import CallbackError, event_from_fields
from worker.calls.intake import CallbackTooLarge
from worker.settings import Account

if TYPE_CHECKING:
    from web.app import Edge

bp = Blueprint("callback", __name__)
#: The callback's path, up to its token (also matched by web.app.FastCallback).
PATH_PREFIX = "/exotel/callback/"
log = logging.getLogger("exolegs.web")


def accepted_reply(
    call_sid: str, duplicate: bool, *, spooled: bool = False, dropped: bool = False
) -> bytes:
    """The 200 body (``application/json``), built directly: this is the hot path."""
    body = {"accepted": True, "call_sid": call_sid, "duplicate": duplicate}
    if spooled:
        body["spooled"] = True
    if dropped:
        body["dropped"] = True
    return _encode(body).encode()


_encode = json.JSONEncoder(separators=(",", ":")).encode


def json_reply(
    edge: Edge, status: int, headers: Iterable[tuple[str, str]] = (), **body: Any
) -> Response:
    """What ``jsonify(**body), status, headers`` makes, without an app context."""
    response: Response = edge.json.response(**body)
    response.status_code = status
    for name, value in headers:
        response.headers[name] = value
    return response


def error(edge: Edge, status: int, message: str) -> Response:
    _count_rejected(edge)
    return json_reply(edge, status, error=message)


def refused(edge: Edge, refusal: Refusal) -> Response:
    _count_rejected(edge)
    return json_reply(edge, refusal.status, refusal.headers, error=refusal.message)


def cross_check(account: Account, call_sid: str, fields: dict[str, object]) -> None:
    """Say so when the payload names another account; the URL's token still decides.

    Callbacks often carry no AccountSid (the v1 StatusCallback, inbound
    Passthru), so the payload can never route a call, only raise a doubt.
    """
    claimed = fields.get("AccountSid")
    if isinstance(claimed, str) and claimed and account.sid and claimed != account.sid:
        log.warning(
            "call %s arrived on account %s's callback URL (sid %s) but says AccountSid=%.64s; "
            "routed by the URL: check which URL that Exotel account calls",
            call_sid,
            account.name,
            account.sid,
            claimed,
        )


def _count_rejected(edge: Edge) -> None:
    """Refusals change no state and cost no round trip: counted in-process, flushed each second."""
    edge.counts.add(metrics.Counter.CALLBACKS, outcome=metrics.CallbackOutcome.REJECTED)


@bp.route(PATH_PREFIX + "<token>", methods=["GET", "POST"])
def callback(token: str) -> ResponseReturnValue:
    edge = current_app.extensions["exolegs"]
    reply = handle(
        edge,
        request.environ,
        token,
        lambda: request.get_data(cache=False),
        lambda: list(request.args.items(multi=True)),
    )
    if isinstance(reply, bytes):
        return Response(reply, content_type="application/json")
    return reply


def handle(
    edge: Edge,
    environ: dict[str, Any],
    token: str,
    read_body: Callable[[], bytes],
    query: Callable[[], list[tuple[str, str]]],
) -> bytes | Response:
    """A callback, from its request to its answer: a 200's JSON body, or any other reply.

    ``read_body`` reads the body (capped one byte over the limit), ``query`` gives
    the query string's pairs. Flask's view and :class:`FastCallback` both call it.
    """
    # Allow-list, rate limit, token, Basic: all before a byte of the body is read.
    # The token also says whose callback this is (never the payload).
    account = edge.guard.authenticate(environ, token)
    if isinstance(account, Refusal):
        return refused(edge, account)
    try:
        body = read_body()
        if len(body) > edge.settings.max_body_bytes:  # a streamed body cut one byte over
            return error(edge, 413, f"body over {edge.settings.max_body_bytes} bytes")
        content_length = get_content_length(environ)
        if content_length is not None and len(body) < content_length:
            return error(edge, 400, "body shorter than its Content-Length")  # the client hung up
        fields = decode_body(environ.get("CONTENT_TYPE"), body, query())
        event = event_from_fields(fields)
    except PayloadError as err:
        return error(edge, err.status, str(err))
    except CallbackError as err:
        return error(edge, 400, str(err))
    cross_check(edge.runtime.account(account), event.call_sid, fields)
    try:
        accepted = edge.runtime.intake.accept(event, account)
    except CallbackTooLarge as err:  # checked before Redis or the spool is touched
        return error(edge, 413, str(err))
    except RedisError as err:
        try:
            edge.spool.write(fields, account)
        except OSError as disk:
            log.error(
                "call %s: Redis unreachable (%s) and spool %s not writable (%s); "
                "answered 503 so Exotel retries",
                event.call_sid,
                err,
                edge.spool.dir,
                disk,
            )
            # not counted: Redis is the thing that is down
            return json_reply(
                edge, 503, error="temporarily unable to accept callbacks; retry later"
            )
        log.warning("call %s: Redis unreachable (%s); callback spooled", event.call_sid, err)
        return accepted_reply(event.call_sid, False, spooled=True)
    return accepted_reply(event.call_sid, accepted.duplicate, dropped=accepted.dropped)

