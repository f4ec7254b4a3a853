"""The console's routes: each page under ``/ops`` and its JSON twin under ``/ops/api``."""

from __future__ import annotations

import json
import logging
import time
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from flask import (
    Blueprint,
    Response,
    current_app,
    g,
    jsonify,
    make_response,
    redirect,
    render_template,
    request,
    url_for,
)
from flask.typing import ResponseReturnValue
from redis.exceptions import RedisError

from web.ops import audit, data
from web.ops.auth import (
    COOKIE,
    LOGIN_COOKIE,
    Session,
    Sessions,
    client_address,
    csrf_ok,
    origin_ok,
    same,
)
from worker.calls import timeline
from worker.opsusers import verify
from worker.settings import ACCOUNT_NAME_RE, CALL_SID_RE, DEFAULT_ACCOUNT, Rate

log = logging.getLogger("exolegs.ops")

bp = Blueprint(
    "ops",
    __name__,
    url_prefix="/ops",
    template_folder="templates",
    static_folder="static",
    static_url_path="/static",
)

#: Logins allowed per client address, across every web process: 10 at once, then 1 every 6 s.
LOGIN_RATE = Rate(10, 60)
_OPEN = {"ops.login", "ops.login_form", "ops.static", "ops.api_login"}

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'; "
    "object-src 'none'"
)


def _edge() -> Any:
    return current_app.extensions["exolegs"]


def _sessions() -> Sessions:
    edge = _edge()
    return Sessions(edge.runtime.redis, edge.settings.ops_session_minutes * 60)


def _is_api() -> bool:
    return request.path.startswith("/ops/api/")


def _refuse(status: int, message: str) -> ResponseReturnValue:
    if _is_api():
        return jsonify(error=message), status
    return render_template("ops/refused.html", status=status, message=message), status


@bp.before_request
def guard() -> ResponseReturnValue | None:
    """A live session for everything but the login and static files; CSRF on every POST."""
    if request.endpoint in _OPEN:
        return None
    polling = request.endpoint == "ops.overview_partial"  # an open tab is not an operator
    session = _sessions().get(request.cookies.get(COOKIE), touch=not polling)
    if session is None:
        if _is_api():
            return jsonify(error="log in first: POST /ops/api/session"), 401
        if request.headers.get("HX-Request"):
            # htmx would swap the login page into the overview: have it load the page instead
            return Response("", 200, {"HX-Redirect": url_for("ops.login_form", next="/ops/")})
        return redirect(url_for("ops.login_form", next=request.full_path.rstrip("?")), 303)
    g.ops_session = session
    if request.method not in ("GET", "HEAD") and not csrf_ok(request, session.csrf):
        log.warning("ops: %s %s refused: no valid CSRF token", request.method, request.path)
        return _refuse(403, "refused: this action needs the page's CSRF token")
    return None


@bp.errorhandler(RedisError)
def redis_down(err: RedisError) -> ResponseReturnValue:
    """Sessions and everything shown live in Redis: say so, instead of a bare 500."""
    log.warning("ops: Redis unreachable (%s)", type(err).__name__)
    message = (
        f"Redis is unreachable ({type(err).__name__}): the console keeps its sessions and "
        "reads everything from Redis. Callbacks still reach the disk spool; /readyz says more."
    )
    return _refuse(503, message)


@bp.after_request
def headers(response: Response) -> Response:
    response.headers["Content-Security-Policy"] = CSP
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["X-Content-Type-Options"] = "nosniff"
    # same-origin, not no-referrer: with no-referrer browsers send "Origin: null" on
    # our own form posts, and the Origin check would refuse them.
    response.headers["Referrer-Policy"] = "same-origin"
    if request.endpoint != "ops.static":
        response.headers["Cache-Control"] = "no-store"
    return response


@bp.app_template_filter("when")
def when(ts: float | None) -> str:
    if not ts:
        return "never"
    return datetime.fromtimestamp(float(ts), UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


@bp.app_template_filter("ago")
def ago(ts: float | None) -> str:
    if not ts:
        return "never"
    return duration(time.time() - float(ts)) + " ago"


@bp.app_template_filter("duration")
def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = float(seconds)
    if s < 1:
        return f"{s * 1000:.0f} ms"
    if s < 120:
        return f"{s:.1f} s"
    if s < 7200:
        return f"{s / 60:.0f} min"
    return f"{s / 3600:.1f} h"


@bp.app_template_filter("pretty")
def pretty(value: Any) -> str:
    """Indented JSON with its characters as they are (the masking dots, names in any script)."""
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True, default=str)


@bp.app_template_filter("sparkline")
def sparkline(values: list[float], width: int = 240, height: int = 32) -> str:
    """SVG polyline points for a series (no inline script or style: CSP allows it)."""
    if not values:
        return ""
    top = max(values) or 1.0
    step = width / max(1, len(values) - 1)
    return " ".join(
        f"{i * step:.1f},{height - 2 - (v / top) * (height - 4):.1f}" for i, v in enumerate(values)
    )


def _cookie_options() -> dict[str, Any]:
    return {"httponly": True, "samesite": "Strict", "secure": request.is_secure, "path": "/ops"}


def _user() -> str:
    session: Session = g.ops_session
    return session.user


# ------------------------------------------------------------------- login
@bp.get("/login")
def login_form() -> ResponseReturnValue:
    import secrets

    nonce = secrets.token_urlsafe(24)
    page = render_template("ops/login.html", nonce=nonce, next=_safe_next(), error=None)
    response = make_response(page)
    response.set_cookie(LOGIN_COOKIE, nonce, max_age=900, **_cookie_options())
    return response


@bp.post("/login")
def login() -> ResponseReturnValue:
    nonce = request.cookies.get(LOGIN_COOKIE)
    if not same(request.form.get("csrf_token"), nonce) or not origin_ok(request):
        return _refuse(403, "refused: the login form expired or came from elsewhere; reload it")
    user = _check_credentials(request.form.get("user", ""), request.form.get("password", ""))
    if isinstance(user, tuple):
        status, message = user
        page = render_template("ops/login.html", nonce=nonce, next=_safe_next(), error=message)
        return page, status
    session = _sessions().start(user)
    log.info("ops: %s logged in from %s", user, client_address(request))
    response = redirect(_safe_next() or url_for("ops.overview"), 303)
    response.set_cookie(COOKIE, session.id, **_cookie_options())
    response.delete_cookie(LOGIN_COOKIE, path="/ops")
    return response


@bp.post("/api/session")
def api_login() -> ResponseReturnValue:
    if not request.is_json:
        return jsonify(error='send JSON: {"user": …, "password": …}'), 415
    body = _json_body() or {}
    user = _check_credentials(str(body.get("user", "")), str(body.get("password", "")))
    if isinstance(user, tuple):
        return jsonify(error=user[1]), user[0]
    session = _sessions().start(user)
    response = jsonify(
        user=user,
        csrf_token=session.csrf,
        idle_timeout_seconds=_sessions().idle,
    )
    response.set_cookie(COOKIE, session.id, **_cookie_options())
    return response


def _check_credentials(user: str, password: str) -> str | tuple[int, str]:
    edge = _edge()
    wait = edge.runtime.limiter.acquire(
        f"ops-login:{client_address(request)}", LOGIN_RATE, burst=10
    )
    if wait > 0:
        return 429, f"too many login attempts; try again in {wait:.0f} s"
    settings = edge.settings
    name = verify(
        user[:64],
        password[:256],
        ops_password=settings.ops_password,
        users_file=settings.ops_users_file,
    )
    if name is None:
        log.warning("ops: failed login for %r from %s", user[:64], client_address(request))
        return 401, "wrong user name or password"
    return name


def _safe_next() -> str | None:
    target = request.args.get("next") or request.form.get("next") or ""
    if target.startswith("/ops") and not target.startswith("//") and "\\" not in target:
        return target
    return None


@bp.post("/logout")
def logout() -> ResponseReturnValue:
    _sessions().end(request.cookies.get(COOKIE))
    response = redirect(url_for("ops.login_form"), 303)
    response.delete_cookie(COOKIE, path="/ops")
    return response


@bp.delete("/api/session")
def api_logout() -> ResponseReturnValue:
    _sessions().end(request.cookies.get(COOKIE))
    response = jsonify(ok=True)
    response.delete_cookie(COOKIE, path="/ops")
    return response


# ---------------------------------------------------------------- overview
def _overview() -> dict[str, Any]:
    edge = _edge()
    return data.overview(edge.runtime, edge.spool)


@bp.get("/")
def overview() -> ResponseReturnValue:
    return render_template("ops/overview.html", o=_overview(), page="overview")


@bp.get("/partials/overview")
def overview_partial() -> ResponseReturnValue:
    return render_template("ops/_overview.html", o=_overview())


@bp.get("/api/overview")
def api_overview() -> ResponseReturnValue:
    return jsonify(_overview())


# ------------------------------------------------------------ dead letters
def _filter(source: Any) -> data.DeadFilter | ResponseReturnValue:
    try:
        return data.DeadFilter.from_args(source)
    except ValueError as err:
        return _refuse(400, str(err))


@bp.get("/dead")
def dead() -> ResponseReturnValue:
    flt = _filter(request.args)
    if not isinstance(flt, data.DeadFilter):
        return flt
    view = data.dead_letters(_edge().runtime, flt)
    return render_template("ops/dead.html", d=view, page="dead", query=_query(flt))


@bp.get("/api/dead")
def api_dead() -> ResponseReturnValue:
    flt = _filter(request.args)
    if not isinstance(flt, data.DeadFilter):
        return flt
    return jsonify(data.dead_letters(_edge().runtime, flt))


def _query(flt: data.DeadFilter) -> str:
    return urlencode({k: v for k, v in flt.as_dict().items() if v not in ("", None)})


def _replay_one(job_id: str) -> bool:
    rt = _edge().runtime
    letter = rt.dead.get(job_id)
    if letter is None:
        return False
    rt.dead.replay(letter)
    _note_replay(letter.call_sid, letter.sink, letter.account)
    audit.record(
        rt.redis,
        user=_user(),
        action="replay",
        target=job_id,
        address=client_address(request),
    )
    return True


def _note_replay(call_sid: str, sink: str | None, account: str) -> None:
    rt = _edge().runtime
    pipe = rt.redis.pipeline(transaction=False)
    item = timeline.entry(timeline.Kind.REPLAY, "booked", sink=sink, message=f"by {_user()}")
    timeline.append(pipe, call_sid, item, rt.settings.retention_seconds, account)
    pipe.execute()


@bp.post("/dead/replay")
def dead_replay_one() -> ResponseReturnValue:
    job_id = request.form.get("job_id", "")
    if not _replay_one(job_id):
        return _refuse(404, f"no dead letter {job_id[:120]!r} (already replayed or purged?)")
    return redirect(url_for("ops.dead") + "?" + request.form.get("back", ""), 303)


def _bulk(action: str, source: Any, confirm: str | None) -> dict[str, Any]:
    """Dry run (no ``confirm``): how many match. With ``confirm`` = that count: do it."""
    flt = data.DeadFilter.from_args(source)
    rt = _edge().runtime
    letters = data.matching_letters(rt, flt)
    result: dict[str, Any] = {"action": action, "filter": flt.as_dict(), "count": len(letters)}
    if confirm is None:
        result["dry_run"] = True
        return result
    if confirm != str(len(letters)):
        result.update(dry_run=True, changed=True)
        return result
    if action == "replay":
        for letter in letters:
            rt.dead.replay(letter)
            _note_replay(letter.call_sid, letter.sink, letter.account)
        done = len(letters)
    else:
        done = rt.dead.discard([letter.job_id for letter in letters])
    if not done:
        result.update(dry_run=False, done=0)
        return result
    audit.record(
        rt.redis,
        user=_user(),
        action=action,
        target=f"{done} dead letter(s)",
        detail=_query(flt) or "(no filter: all)",
        address=client_address(request),
    )
    result.update(dry_run=False, done=done)
    return result


@bp.post("/dead/replay-filter")
def dead_replay_filter() -> ResponseReturnValue:
    return _bulk_page("replay")


@bp.post("/dead/purge")
def dead_purge() -> ResponseReturnValue:
    return _bulk_page("purge")


def _bulk_page(action: str) -> ResponseReturnValue:
    try:
        result = _bulk(action, request.form, request.form.get("confirm"))
    except ValueError as err:
        return _refuse(400, str(err))
    flt = data.DeadFilter.from_args(request.form)
    if result["dry_run"]:
        return render_template("ops/confirm.html", r=result, page="dead", query=_query(flt))
    return redirect(url_for("ops.dead") + f"?{_query(flt)}&done={action}:{result['done']}", 303)


def _json_body() -> dict[str, Any] | None:
    body = request.get_json(silent=True)
    if body is None:
        return {}
    return body if isinstance(body, dict) else None


@bp.post("/api/dead/replay")
def api_dead_replay() -> ResponseReturnValue:
    body = _json_body()
    if body is None:
        return jsonify(error="send a JSON object"), 400
    if "job_id" in body:
        if not _replay_one(str(body["job_id"])):
            return jsonify(error="no such dead letter"), 404
        return jsonify(action="replay", dry_run=False, count=1, done=1)
    return _api_bulk("replay", body)


@bp.post("/api/dead/purge")
def api_dead_purge() -> ResponseReturnValue:
    body = _json_body()
    if body is None:
        return jsonify(error="send a JSON object"), 400
    return _api_bulk("purge", body)


def _api_bulk(action: str, body: dict[str, Any]) -> ResponseReturnValue:
    if not isinstance(body.get("filter") or {}, dict):
        return jsonify(error="filter: expected an object"), 400
    confirm = body.get("confirm")
    try:
        result = _bulk(action, body.get("filter") or {}, None if confirm is None else str(confirm))
    except ValueError as err:
        return jsonify(error=str(err)), 400
    return jsonify(result), (409 if result.get("changed") else 200)


# -------------------------------------------------------------------- calls
@bp.get("/calls")
def calls() -> ResponseReturnValue:
    query = request.args.get("q", "")[:64]
    found = data.lookup(_edge().runtime, query) if query else []
    if len(found) == 1 and query.strip() == found[0]["call_sid"]:
        return redirect(_call_url(found[0]["call_sid"], found[0]["account"]), 303)
    return render_template("ops/calls.html", query=query, calls=found, page="calls")


@bp.get("/api/calls")
def api_calls() -> ResponseReturnValue:
    query = request.args.get("q", "")[:64]
    return jsonify(query=query, calls=data.lookup(_edge().runtime, query) if query else [])


def _call_url(call_sid: str, account: str) -> str:
    if account == DEFAULT_ACCOUNT:
        return url_for("ops.call", call_sid=call_sid)
    return url_for("ops.call", call_sid=call_sid, account=account)


def _call_view(call_sid: str, reveal: set[int] | None = None) -> dict[str, Any] | None:
    account = request.args.get("account") or DEFAULT_ACCOUNT
    if not CALL_SID_RE.fullmatch(call_sid) or not ACCOUNT_NAME_RE.fullmatch(account):
        return None
    view = data.call_view(_edge().runtime, call_sid, account, reveal)
    return view if view["found"] else None


def _public(view: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in view.items() if not k.startswith("_")}


@bp.get("/calls/<call_sid>")
def call(call_sid: str) -> ResponseReturnValue:
    view = _call_view(call_sid)
    if view is None:
        return _refuse(404, f"no call {call_sid[:64]!r} in the last retention window")
    return render_template("ops/call.html", c=view, page="calls")


@bp.get("/api/calls/<call_sid>")
def api_call(call_sid: str) -> ResponseReturnValue:
    view = _call_view(call_sid)
    if view is None:
        return jsonify(error="no such call"), 404
    return jsonify(_public(view))


def _reveal(call_sid: str, raw_index: Any) -> tuple[dict[str, Any], int] | None:
    try:
        index = int(raw_index)
    except (TypeError, ValueError):
        return None
    view = _call_view(call_sid, {index})
    if view is None or not 0 <= index < len(view["_numbers"]):
        return None
    number = view["_numbers"][index]
    audit.record(
        _edge().runtime.redis,
        user=_user(),
        action="reveal",
        target=call_sid,
        detail=f"number {data.mask_number(number)}",
        address=client_address(request),
    )
    return view, index


@bp.post("/calls/<call_sid>/reveal")
def reveal(call_sid: str) -> ResponseReturnValue:
    found = _reveal(call_sid, request.form.get("index"))
    if found is None:
        return _refuse(404, "no such number on this call")
    view, index = found
    if request.headers.get("HX-Request"):
        return render_template("ops/_number.html", n=view["numbers"][index], c=view)
    return render_template("ops/call.html", c=view, page="calls")


@bp.post("/api/calls/<call_sid>/reveal")
def api_reveal(call_sid: str) -> ResponseReturnValue:
    body = _json_body() or {}
    found = _reveal(call_sid, body.get("index"))
    if found is None:
        return jsonify(error="no such number on this call"), 404
    view, index = found
    return jsonify(view["numbers"][index])


# -------------------------------------------------------------------- audit
@bp.get("/audit")
def audit_page() -> ResponseReturnValue:
    entries = audit.recent(_edge().runtime.redis)
    return render_template("ops/audit.html", entries=entries, page="audit")


@bp.get("/api/audit")
def api_audit() -> ResponseReturnValue:
    return jsonify(entries=audit.recent(_edge().runtime.redis))
