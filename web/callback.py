"""The callback endpoint: parse, authenticate, dedupe, enqueue; nothing more.

It answers in milliseconds: one Lua call to Redis books the legs fetch. When
Redis is unreachable the callback goes to the disk spool and is still
acknowledged; only if the spool cannot be written either does Exotel get a
503 (and retry).
"""

from __future__ import annotations

import json
import logging

from flask import Blueprint, Response, current_app, jsonify, request
from flask.typing import ResponseReturnValue
from redis.exceptions import RedisError

from web.guard import Refusal
from web.payload import PayloadError, decode_body
from worker import metrics
from worker.calls.callbacks import CallbackError, event_from_fields
from worker.calls.intake import CallbackTooLarge
from worker.settings import Account

bp = Blueprint("callback", __name__)
log = logging.getLogger("exolegs.web")


def accepted_reply(
    call_sid: str, duplicate: bool, *, spooled: bool = False, dropped: bool = False
) -> Response:
    """The 200 body, built directly: this is the hot path."""
    body = {"accepted": True, "call_sid": call_sid, "duplicate": duplicate}
    if spooled:
        body["spooled"] = True
    if dropped:
        body["dropped"] = True
    return Response(_encode(body), content_type="application/json")


_encode = json.JSONEncoder(separators=(",", ":")).encode


def error(status: int, message: str) -> ResponseReturnValue:
    _count_rejected()
    return jsonify(error=message), status


def refused(refusal: Refusal) -> ResponseReturnValue:
    _count_rejected()
    return jsonify(error=refusal.message), refusal.status, list(refusal.headers)


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


def _count_rejected() -> None:
    """Refusals change no state and cost no round trip: counted in-process, flushed each second."""
    current_app.extensions["exolegs"].counts.add(
        metrics.Counter.CALLBACKS, outcome=metrics.CallbackOutcome.REJECTED
    )


@bp.route("/exotel/callback/<token>", methods=["GET", "POST"])
def callback(token: str) -> ResponseReturnValue:
    edge = current_app.extensions["exolegs"]
    # Allow-list, rate limit, token, Basic: all before a byte of the body is read.
    # The token also says whose callback this is (never the payload).
    account = edge.guard.authenticate(request.environ, token)
    if isinstance(account, Refusal):
        return refused(account)
    try:
        body = request.get_data(cache=False)
        if len(body) > edge.settings.max_body_bytes:  # a streamed body cut one byte over
            return error(413, f"body over {edge.settings.max_body_bytes} bytes")
        if request.content_length is not None and len(body) < request.content_length:
            return error(400, "body shorter than its Content-Length")  # the client hung up
        fields = decode_body(request.content_type, body, list(request.args.items(multi=True)))
        event = event_from_fields(fields)
    except PayloadError as err:
        return error(err.status, str(err))
    except CallbackError as err:
        return error(400, str(err))
    cross_check(edge.runtime.account(account), event.call_sid, fields)
    try:
        accepted = edge.runtime.intake.accept(event, account)
    except CallbackTooLarge as err:  # checked before Redis or the spool is touched
        return error(413, str(err))
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
            return jsonify(error="temporarily unable to accept callbacks; retry later"), 503
        log.warning("call %s: Redis unreachable (%s); callback spooled", event.call_sid, err)
        return accepted_reply(event.call_sid, False, spooled=True)
    return accepted_reply(event.call_sid, accepted.duplicate, dropped=accepted.dropped)
