"""A local fake of Exotel's v3 Call Legs API, for demos, tests and benchmarks.

``GET /v3/accounts/<sid>/calls/<call_sid>/legs`` answers like Exotel does
(https://developer.exotel.com/api/call-legs-beta): the success envelope with ``leg_details``, or
the v3 error envelope with ``error_data`` for the documented errors. Both
regions use the same path (the region is only the host), so one simulator
stands in for either.

It serves one account (``account_sid``, ``api_key``, ``api_token``) and any
number of ``accounts`` more, each with its own credentials and rate limit: a
key and token authorise their own account only, as Exotel's do.

Per request, in order:

1. ``/_sim/mode`` ``slow`` sleeps ``delay`` seconds, and ``latency_ms`` sleeps;
2. ``/_sim/mode`` ``unauthorized``, or Basic credentials that are not the path
   account's -> 401/1010 (an unknown account sid with good credentials of
   another account -> 404/1017);
3. ``/_sim/mode`` ``rate-limited`` -> 429/10724 with ``Retry-After``;
4. an answer queued with ``/_sim/script`` for this call, if any;
5. the account's ``rate_limit`` (sliding window) -> 429/10724 with ``Retry-After``
   and ``X-RateLimit-Limit/Remaining/Reset``;
6. a call sid starting with ``missing`` -> 404/10744;
7. ``fail_rate`` -> 500 with ``fail_code``;
8. otherwise 200 with legs generated deterministically from the call sid.

Control endpoints (not Exotel's; for tests and benchmarks), all JSON:

* ``POST /_sim/script`` ``{"call_sid": s, "responses": [{"status": 500, "code": 10715}, ...]}``
  queues answers for one call, returned in order before normal behaviour
  resumes. An item may also carry ``retry_after`` (seconds, sent as
  ``Retry-After``), ``message``, ``delay`` (seconds to sleep first),
  ``envelope: "v1"`` (a ``RestException`` body) or ``body`` (a raw text/html
  body, e.g. a proxy's 502 page). A ``status`` of 200 answers with the legs.
* ``POST /_sim/mode`` ``{"mode": "normal"|"unauthorized"|"rate-limited"|"slow",
  "delay": seconds, "account": sid}``: without ``account``, for every account
  that has no mode of its own; with it, for that account only.
* ``GET /_sim/requests`` -> ``{"total": n, "by_call": {sid: [unix times...]}, "by_status": {...},
  "by_account": {account sid: {status: n}}}``; Calls.json listings are in ``by_call`` under
  ``Calls.json:<account sid>``.
* ``POST /_sim/reset`` clears scripts, the mode, the request log and the rate window.
"""

from __future__ import annotations

import hashlib
import hmac
import random
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from flask import Flask, Response, jsonify, request
from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server

from worker.calls import simcalls
from worker.settings import CALL_SID_RE, Rate

IST = timezone(timedelta(hours=5, minutes=30), "IST")
MODES = ("normal", "unauthorized", "rate-limited", "slow")
STATE_KEY = "exolegs_simulator"

#: Exotel's documented legs errors: code -> (HTTP status, message, description).
ERRORS: dict[int, tuple[int, str, str]] = {
    1010: (401, "Authorization failed", "Authorization failed"),
    1017: (404, "Tenant not found", "The account sid in the path does not exist"),
    10744: (404, "Call not found", "No call exists with the given call sid"),
    10724: (429, "Too many requests", "Rate limit exceeded; retry after some time"),
    10715: (500, "Error retrieving leg details", "Error retrieving leg details"),
    10743: (500, "Legs not found", "Legs not found for the given call sid"),
}
#: The code a scripted answer gets when it gives a status but no code.
DEFAULT_CODES = {401: 1010, 404: 10744, 429: 10724, 500: 10715}
_REASONS = {502: "Bad Gateway", 503: "Service Unavailable", 504: "Gateway Timeout"}

_AGENTS = (
    "Priya Sharma", "Rahul Verma", "Ananya Iyer", "Vikram Singh", "Sneha Reddy",
    "Arjun Nair", "Kavya Menon", "Rohan Gupta", "Meera Joshi", "Aditya Kulkarni",
    "Pooja Patel", "Karthik Rao", "Divya Pillai", "Sandeep Das", "Neha Chatterjee",
)  # fmt: skip
_GROUPS = (
    ("grp_sales_blr", "Sales - Bengaluru"),
    ("grp_support_l1", "Support L1"),
    ("grp_collections", "Collections"),
    ("grp_onboarding", "Onboarding"),
    ("grp_renewals", "Renewals"),
)
_MISSED = ("no-answer", "no-answer", "busy", "failed")


@dataclass(frozen=True)
class SimAccount:
    """One more Exotel account the simulator serves, with its own credentials and limit."""

    sid: str
    api_key: str
    api_token: str = field(repr=False)
    rate_limit: Rate | None = None


@dataclass
class SimulatorConfig:
    account_sid: str = "exotel_sim"
    api_key: str = "sim_key"
    api_token: str = field(default="sim_token", repr=False)
    latency_ms: float = 0
    fail_rate: float = 0.0
    fail_code: int = 10715
    rate_limit: Rate | None = None
    retry_after: int = 2
    seed: int | None = None
    accounts: tuple[SimAccount, ...] = ()
    #: Legs exist only this many seconds after a placed call ended (or after the
    #: first legs request for any other call); until then 500/10743.
    legs_ready_after: float = 0.0
    #: The callback Exotel sent for a call sid (its fields: ``From``, ``To``,
    #: ``Direction``, ``Status``...), or None. When it has them, the legs use its
    #: numbers, direction and outcome, so a demo record matches the demo curl.
    #: ``exolegs dev`` wires it to the callbacks the edge stored.
    callbacks: Callable[[str], Mapping[str, Any] | None] | None = field(
        default=None, repr=False, compare=False
    )

    @property
    def all_accounts(self) -> dict[str, SimAccount]:
        """Every account served, by sid: the main one first."""
        main = SimAccount(self.account_sid, self.api_key, self.api_token, self.rate_limit)
        return {a.sid: a for a in (main, *self.accounts)}


# ---------------------------------------------------------------- legs data
def _hex(rng: random.Random, nbytes: int = 16) -> str:
    return f"{rng.getrandbits(nbytes * 8):0{nbytes * 2}x}"


def _phone(rng: random.Random, *, national: bool | None = None) -> str:
    """A realistic Indian mobile number, E.164 (``+9198…``) or national (``098…``)."""
    first = rng.choice("9876")
    rest = "".join(rng.choice("0123456789") for _ in range(9))
    if national is None:
        national = rng.random() < 0.3
    return f"0{first}{rest}" if national else f"+91{first}{rest}"


def _stamp(moment: datetime) -> str:
    return moment.isoformat(timespec="seconds")


def _field(callback: Mapping[str, Any], *names: str) -> str | None:
    for name in names:
        value = callback.get(name)
        if isinstance(value, str) and value.strip():
            return value.strip()
    return None


def legs_for(
    call_sid: str, account_sid: str, callback: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Plausible ``leg_details`` for a call, the same every time for the same call sid.

    One customer leg and 1-3 agent legs. Agent legs carry ``group_id`` and
    ``group_name`` (the customer leg does not); agents are dialled one after
    another until one answers, and sometimes none does. Outbound
    (click-to-call) calls put the agents in ``from``; inbound ones put them in
    ``to``.

    With the call's ``callback``, its numbers and outcome win: an outbound call
    (``Direction`` outbound-*) dials its ``From`` as the one agent and then its
    ``To`` as the customer, as Exotel's click-to-call does; an inbound call's
    customer is its ``From`` and the agent who answers its ``DialWhomNumber``.
    A ``Status`` of busy, no-answer, failed or canceled means nobody answered.
    """
    callback = callback or {}
    rng = random.Random(hashlib.sha256(call_sid.encode()).digest())
    outbound = rng.random() < 0.5
    direction = (_field(callback, "Direction", "direction") or "").lower()
    if direction.startswith(("outbound", "inbound", "incoming")):
        outbound = direction.startswith("outbound")
    caller, called = _field(callback, "From", "from"), _field(callback, "To", "to")
    dialled = _field(callback, "DialWhomNumber")
    outcome = (_field(callback, "Status", "status", "DialCallStatus") or "").lower()
    epoch = datetime(2025, 1, 1, 9, 0, tzinfo=IST)
    start = epoch + timedelta(days=rng.randrange(365), seconds=rng.randrange(10 * 3600))
    n_agents = rng.choice((1, 1, 2, 2, 3)) if not outbound else rng.choice((1, 1, 1, 2))
    if outbound and caller:
        n_agents = 1  # click-to-call dials one agent: the callback's From
    all_missed = rng.random() < 0.25
    if outcome:
        all_missed = outcome in ("busy", "no-answer", "failed", "canceled")
    answering = -1 if all_missed else rng.randrange(n_agents)
    if inbound_agent := (dialled if not outbound and not all_missed else None):
        answering = n_agents - 1  # the number the callback says was dialled answered
    group_id, group_name = rng.choice(_GROUPS)
    names = rng.sample(_AGENTS, n_agents)
    customer_uri = _phone(rng)
    if outbound and called:
        customer_uri = called
    elif not outbound and caller:
        customer_uri = caller
    leg_prefix = _hex(rng, 4)

    def leg(
        name: str | None, uri: str, created: datetime, seconds: int, status: str
    ) -> dict[str, Any]:
        return {
            "sid": f"{leg_prefix}{_hex(rng, 12)}",
            "name": name,
            "contact_uri": uri,
            "date_created": _stamp(created),
            "date_updated": _stamp(created + timedelta(seconds=seconds)),
            "status": status,
        }

    agents: list[dict[str, Any]] = []
    clock = start if outbound else start + timedelta(seconds=rng.randint(3, 25))  # IVR first
    talk = rng.randint(20, 900)
    answered_at: datetime | None = None
    for i, name in enumerate(names):
        if rng.random() < 0.2:
            uri = f"sip:{name.split()[0].lower()}@acme.sip.exotel.com"
        else:
            uri = _phone(rng, national=False)
        if outbound and caller:
            uri = caller
        elif inbound_agent and i == answering:
            uri = inbound_agent
        if i == answering:
            status, seconds = "completed", talk + rng.randint(2, 8)
            answered_at = clock
        else:
            status = rng.choice(_MISSED)
            seconds = {"no-answer": rng.randint(20, 45), "busy": rng.randint(1, 4)}.get(
                status, rng.randint(0, 2)
            )
        agent = leg(name, uri, clock, seconds, status)
        agent["group_id"] = group_id
        agent["group_name"] = group_name
        agents.append(agent)
        clock += timedelta(seconds=seconds + rng.randint(1, 3))
        if i == answering:
            break

    if outbound:
        # Click-to-call: the customer is dialled once an agent answers.
        if answered_at is not None:
            created = answered_at + timedelta(seconds=rng.randint(1, 3))
            status = "completed" if rng.random() < 0.85 else rng.choice(("no-answer", "busy"))
            seconds = talk if status == "completed" else rng.randint(5, 40)
        else:
            created, status, seconds = clock, "canceled", 0
        customer = leg(None, customer_uri, created, seconds, status)
        from_legs, to_legs = agents, [customer]
    else:
        seconds = int((clock - start).total_seconds())  # IVR, ringing and the talk
        customer = leg(None, customer_uri, start, seconds, "completed")
        from_legs, to_legs = [customer], agents
    return {"call_sid": call_sid, "account_sid": account_sid, "from": from_legs, "to": to_legs}


# -------------------------------------------------------------------- state
@dataclass
class Scripted:
    status: int
    code: int | None = None
    retry_after: float | None = None
    message: str | None = None
    delay: float = 0.0
    envelope: str = "v3"
    body: str | None = None

    @classmethod
    def from_json(cls, item: object) -> Scripted:
        if not isinstance(item, dict):
            raise ValueError("each response must be an object")
        status = item.get("status", 200)
        if not isinstance(status, int) or isinstance(status, bool) or not 100 <= status <= 599:
            raise ValueError(f"bad status {status!r}")
        code = item.get("code")
        if code is not None and (not isinstance(code, int) or isinstance(code, bool)):
            raise ValueError(f"bad code {code!r}")
        if code is None and item.get("body") is None:
            code = DEFAULT_CODES.get(status)
        retry_after = item.get("retry_after")
        if retry_after is not None and not isinstance(retry_after, int | float):
            raise ValueError(f"bad retry_after {retry_after!r}")
        delay = item.get("delay", 0) or 0
        if not isinstance(delay, int | float) or delay < 0:
            raise ValueError(f"bad delay {delay!r}")
        envelope = item.get("envelope", "v3")
        if envelope not in ("v3", "v1"):
            raise ValueError("envelope must be v3 or v1")
        message, body = item.get("message"), item.get("body")
        return cls(
            status=status,
            code=code,
            retry_after=retry_after,
            message=str(message) if message is not None else None,
            delay=float(delay),
            envelope=envelope,
            body=str(body) if body is not None else None,
        )


class SimulatorState:
    """Everything the simulator remembers, behind one lock."""

    def __init__(self, config: SimulatorConfig) -> None:
        self.config = config
        self._lock = threading.Lock()
        self._rng = random.Random(config.seed)
        self._scripts: dict[str, deque[Scripted]] = {}
        self._mode = "normal"
        self._delay = 0.0
        self._modes: dict[str, tuple[str, float]] = {}  # account sid -> its own mode
        self._total = 0
        self._by_call: dict[str, list[float]] = {}
        self._by_status: dict[int, int] = {}
        self._by_account: dict[str, dict[int, int]] = {}
        self._windows: dict[str, deque[float]] = {}
        self.calls = simcalls.CallLog()
        self._first_asked: dict[str, float] = {}

    # control
    def script(self, call_sid: str, responses: list[Scripted]) -> int:
        with self._lock:
            queue = self._scripts.setdefault(call_sid, deque())
            queue.extend(responses)
            return len(queue)

    def set_mode(self, mode: str, delay: float = 0.0, account: str | None = None) -> None:
        """Every account's mode, or with ``account`` (a sid) that account's alone."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}")
        if account is not None and account not in self.config.all_accounts:
            raise ValueError(f"no account {account!r} is served")
        with self._lock:
            if account is None:
                self._mode, self._delay = mode, delay
            else:
                self._modes[account] = (mode, delay)

    def reset(self) -> None:
        with self._lock:
            self._scripts.clear()
            self._mode, self._delay = "normal", 0.0
            self._modes.clear()
            self._total = 0
            self._by_call.clear()
            self._by_status.clear()
            self._by_account.clear()
            self._windows.clear()
            self._first_asked.clear()
        self.calls.clear()

    def requests(self) -> dict[str, Any]:
        with self._lock:
            return {
                "total": self._total,
                "by_call": {sid: list(times) for sid, times in self._by_call.items()},
                "by_status": {str(k): v for k, v in sorted(self._by_status.items())},
                "by_account": {
                    sid: {str(k): v for k, v in sorted(counts.items())}
                    for sid, counts in self._by_account.items()
                },
                "mode": self._mode,
                "modes": {sid: mode for sid, (mode, _) in self._modes.items()},
            }

    # per request
    def legs_ready(self, account_sid: str, call_sid: str) -> bool:
        """Are the legs there yet (``legs_ready_after`` seconds after the call ended)?"""
        wait = self.config.legs_ready_after
        if wait <= 0:
            return True
        ended = self.calls.ended_at(account_sid, call_sid)
        now = time.time()
        with self._lock:
            since = ended.timestamp() if ended else self._first_asked.setdefault(call_sid, now)
        return now >= since + wait

    def record(self, call_sid: str, account: str | None = None) -> tuple[str, float]:
        """Log one legs request; return the mode and slow-mode delay in force for its account."""
        with self._lock:
            self._total += 1
            self._by_call.setdefault(call_sid, []).append(time.time())
            if account is not None and account in self._modes:
                return self._modes[account]
            return self._mode, self._delay

    def count_status(self, status: int, account: str | None = None) -> None:
        with self._lock:
            self._by_status[status] = self._by_status.get(status, 0) + 1
            if account is not None and account in self.config.all_accounts:
                counts = self._by_account.setdefault(account, {})
                counts[status] = counts.get(status, 0) + 1

    def next_scripted(self, call_sid: str) -> Scripted | None:
        with self._lock:
            queue = self._scripts.get(call_sid)
            if not queue:
                return None
            item = queue.popleft()
            if not queue:
                del self._scripts[call_sid]
            return item

    def take_rate_slot(self, account: str | None = None) -> tuple[bool, dict[str, str]]:
        """Sliding-window limit per account: never more than ``count`` answers in any ``period``."""
        served = self.config.all_accounts.get(account or self.config.account_sid)
        rate = served.rate_limit if served is not None else self.config.rate_limit
        if rate is None:
            return True, {}
        limit = max(1, int(rate.count))
        now = time.monotonic()
        with self._lock:
            window = self._windows.setdefault(account or self.config.account_sid, deque())
            while window and window[0] <= now - rate.period:
                window.popleft()
            allowed = len(window) < limit
            if allowed:
                window.append(now)
            remaining = limit - len(window)
            reset = (window[0] + rate.period - now) if window else 0.0
        headers = {
            "X-RateLimit-Limit": str(limit),
            "X-RateLimit-Remaining": str(max(0, remaining)),
            "X-RateLimit-Reset": str(max(0, int(reset + 0.999))),
        }
        return allowed, headers

    def roll_failure(self) -> bool:
        rate = self.config.fail_rate
        if rate <= 0:
            return False
        with self._lock:
            return self._rng.random() < rate


# ---------------------------------------------------------------- responses
def _envelope(status: int, payload: dict[str, Any]) -> dict[str, Any]:
    return {
        "request_id": uuid.uuid4().hex,
        "method": "GET",
        "http_code": status,
        "metadata": None,
        "response": payload,
    }


def _error_response(
    status: int,
    code: int | None,
    message: str | None = None,
    *,
    envelope: str = "v3",
    headers: dict[str, str] | None = None,
) -> Response:
    known = ERRORS.get(code) if code is not None else None
    text = message or (known[1] if known else _REASONS.get(status, "Error"))
    description = known[2] if known else text
    if envelope == "v1":
        body: dict[str, Any] = {"RestException": {"Status": status, "Message": text, "Code": code}}
    else:
        body = _envelope(
            status,
            {
                "code": status,
                "error_data": {"code": code, "message": text, "description": description},
                "status": "failure",
                "data": None,
            },
        )
    answer = jsonify(body)
    answer.status_code = status
    answer.headers.update(headers or {})
    return answer


def _raw_response(status: int, body: str | None, headers: dict[str, str] | None) -> Response:
    if body is None:
        reason = _REASONS.get(status, "Error")
        body = (
            f"<html><head><title>{status} {reason}</title></head>"
            f"<body><center><h1>{status} {reason}</h1></center><hr><center>nginx</center>"
            "</body></html>"
        )
    answer = Response(body, status=status, mimetype="text/html")
    answer.headers.update(headers or {})
    return answer


def _callback(config: SimulatorConfig, call_sid: str) -> Mapping[str, Any] | None:
    if config.callbacks is None:
        return None
    try:
        return config.callbacks(call_sid)
    except Exception:  # noqa: BLE001 - a demo nicety: without the callback the legs are random
        return None


def _legs_response(call_sid: str, account_sid: str, config: SimulatorConfig) -> Response:
    return jsonify(
        _envelope(
            200,
            {
                "code": 200,
                "error_data": None,
                "status": "success",
                "leg_details": legs_for(call_sid, account_sid, _callback(config, call_sid)),
            },
        )
    )


def _authorised(config: SimulatorConfig) -> SimAccount | None:
    """The account whose key and token the request carries, if any."""
    auth = request.authorization
    if auth is None or auth.type != "basic":
        return None
    user, password = (auth.username or "").encode(), (auth.password or "").encode()
    found = None
    for account in config.all_accounts.values():
        good_user = hmac.compare_digest(user, account.api_key.encode())
        good_password = hmac.compare_digest(password, account.api_token.encode())
        if good_user and good_password:
            found = account
    return found


# --------------------------------------------------------------------- app
def create_app(config: SimulatorConfig) -> Flask:
    """The simulator as a WSGI (Flask) app; its state is ``app.extensions[STATE_KEY]``."""
    app = Flask("exolegs.simulator")
    app.json.sort_keys = False  # type: ignore[attr-defined]
    state = SimulatorState(config)
    app.extensions[STATE_KEY] = state

    @app.get("/v3/accounts/<account_sid>/calls/<call_sid>/legs")
    def legs(account_sid: str, call_sid: str) -> Response:
        mode, delay = state.record(call_sid, account_sid)
        answer = _answer(account_sid, call_sid, mode, delay)
        state.count_status(answer.status_code, account_sid)
        return answer

    def _answer(account_sid: str, call_sid: str, mode: str, delay: float) -> Response:
        if mode == "slow" and delay > 0:
            time.sleep(delay)
        if config.latency_ms > 0:
            time.sleep(config.latency_ms / 1000.0)
        caller = _authorised(config)
        if mode == "unauthorized" or caller is None:
            return _error_response(401, 1010)
        if account_sid not in config.all_accounts:
            return _error_response(404, 1017)
        if not hmac.compare_digest(account_sid.encode(), caller.sid.encode()):
            return _error_response(401, 1010)  # another account's key and token
        if mode == "rate-limited":
            return _error_response(429, 10724, headers={"Retry-After": str(config.retry_after)})
        scripted = state.next_scripted(call_sid)
        if scripted is not None:
            return _scripted_response(scripted, call_sid, account_sid)
        allowed, limit_headers = state.take_rate_slot(account_sid)
        if not allowed:
            headers = {"Retry-After": str(config.retry_after), **limit_headers}
            return _error_response(429, 10724, headers=headers)
        if call_sid.startswith("missing") or not CALL_SID_RE.fullmatch(call_sid):
            return _error_response(404, 10744, headers=limit_headers)
        if not state.legs_ready(account_sid, call_sid):
            return _error_response(500, 10743, headers=limit_headers)
        if state.roll_failure():
            status = ERRORS.get(config.fail_code, (500, "", ""))[0]
            return _error_response(status, config.fail_code, headers=limit_headers)
        answer = _legs_response(call_sid, account_sid, config)
        answer.headers.update(limit_headers)
        return answer

    def _scripted_response(item: Scripted, call_sid: str, account_sid: str) -> Response:
        if item.delay > 0:
            time.sleep(item.delay)
        headers = {"Retry-After": f"{item.retry_after:g}"} if item.retry_after is not None else {}
        if item.body is not None:
            return _raw_response(item.status, item.body, headers)
        if 200 <= item.status < 300:
            answer = _legs_response(call_sid, account_sid, config)
            answer.status_code = item.status
            return answer
        if item.code is None:
            return _raw_response(item.status, None, headers)
        return _error_response(
            item.status, item.code, item.message, envelope=item.envelope, headers=headers
        )

    @app.post("/_sim/script")
    def script() -> tuple[Response, int]:
        data = request.get_json(silent=True)
        if not isinstance(data, dict):
            return jsonify({"error": "expected a JSON object"}), 400
        call_sid, items = data.get("call_sid"), data.get("responses")
        if not isinstance(call_sid, str) or not call_sid:
            return jsonify({"error": "call_sid must be a non-empty string"}), 400
        if not isinstance(items, list) or not items:
            return jsonify({"error": "responses must be a non-empty list"}), 400
        try:
            queued = [Scripted.from_json(item) for item in items]
        except ValueError as err:
            return jsonify({"error": str(err)}), 400
        return jsonify({"call_sid": call_sid, "queued": state.script(call_sid, queued)}), 200

    @app.post("/_sim/mode")
    def mode() -> tuple[Response, int]:
        data = request.get_json(silent=True)
        if not isinstance(data, dict):
            return jsonify({"error": "expected a JSON object"}), 400
        delay = data.get("delay", 0) or 0
        if not isinstance(delay, int | float) or isinstance(delay, bool) or delay < 0:
            return jsonify({"error": "delay must be a number of seconds >= 0"}), 400
        account = data.get("account")
        if account is not None and not isinstance(account, str):
            return jsonify({"error": "account must be an account sid"}), 400
        try:
            state.set_mode(str(data.get("mode", "normal")), float(delay), account)
        except ValueError as err:
            return jsonify({"error": str(err)}), 400
        body = {"mode": data.get("mode", "normal"), "delay": float(delay)}
        if account is not None:
            body["account"] = account
        return jsonify(body), 200

    @app.get("/v1/Accounts/<account_sid>/Calls.json")
    def calls_json(account_sid: str) -> Response | tuple[Response, int]:
        """v1 Bulk Call Details over the placed calls (see worker.calls.simcalls)."""
        mode, _ = state.record(f"Calls.json:{account_sid}", account_sid)
        caller = _authorised(config)
        if mode == "unauthorized" or caller is None:
            return _error_response(401, 1010, envelope="v1")
        if account_sid not in config.all_accounts or caller.sid != account_sid:
            return _error_response(404, 1017, envelope="v1")
        allowed, limit_headers = state.take_rate_slot(account_sid)
        if not allowed:
            headers = {"Retry-After": str(config.retry_after), **limit_headers}
            return _error_response(429, 10724, envelope="v1", headers=headers)
        try:
            body = state.calls.page(account_sid, request.args.to_dict(), datetime.now(IST))
        except simcalls.ListingError as err:
            return _error_response(400, None, str(err), envelope="v1")
        answer = jsonify(body)
        answer.headers.update(limit_headers)
        return answer

    @app.post("/_sim/calls")
    def place_calls() -> tuple[Response, int]:
        """Place calls that just ended; POST their callbacks to ``callback_url``, less a ``drop``.

        ``{"sids": [...], "account_sid": optional, "callback_url": optional,
        "drop": 0.0-1.0, "seed": optional, "duration": seconds}``
        """
        data = request.get_json(silent=True)
        if not isinstance(data, dict):
            return jsonify({"error": "expected a JSON object"}), 400
        sids, drop = data.get("sids"), data.get("drop", 0.0)
        if not isinstance(sids, list) or not all(
            isinstance(s, str) and CALL_SID_RE.fullmatch(s) for s in sids
        ):
            return jsonify({"error": "sids must be a list of call sids"}), 400
        if not isinstance(drop, int | float) or not 0 <= drop <= 1:
            return jsonify({"error": "drop must be a share between 0 and 1"}), 400
        account_sid = str(data.get("account_sid") or config.account_sid)
        duration = data.get("duration", 60)
        if not isinstance(duration, int) or duration < 0:
            return jsonify({"error": "duration must be whole seconds"}), 400
        placed = simcalls.place(
            state.calls, account_sid, sids, now=datetime.now(IST), duration=duration
        )
        url = data.get("callback_url")
        sent, dropped = (
            simcalls.send_callbacks(str(url), placed, float(drop), data.get("seed"))
            if url
            else ([], [c["Sid"] for c in placed])
        )
        return jsonify({"placed": len(placed), "sent": sent, "dropped": dropped}), 200

    @app.get("/_sim/requests")
    def requests_log() -> Response:
        return jsonify(state.requests())

    @app.post("/_sim/reset")
    def reset() -> Response:
        state.reset()
        return jsonify({"reset": True})

    return app


# ------------------------------------------------------------------ serving
class _QuietHandler(WSGIRequestHandler):
    """No access log line per request (errors are still logged)."""

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        return None


class SimulatorServer:
    """A simulator running in a background thread."""

    def __init__(self, server: BaseWSGIServer, thread: threading.Thread, app: Flask) -> None:
        self.server = server
        self.thread = thread
        self.app = app
        self.host = server.host
        self.port: int = server.server_port
        self.base_url = f"http://{_url_host(self.host)}:{self.port}"

    @property
    def state(self) -> SimulatorState:
        state: SimulatorState = self.app.extensions[STATE_KEY]
        return state

    def shutdown(self) -> None:
        """Stop serving, close the listening socket and join the thread."""
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)

    def __enter__(self) -> SimulatorServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _make_server(config: SimulatorConfig, host: str, port: int) -> tuple[BaseWSGIServer, Flask]:
    app = create_app(config)
    server = make_server(host, port, app, threaded=True, request_handler=_QuietHandler)
    return server, app


def serve(
    config: SimulatorConfig,
    host: str = "127.0.0.1",
    port: int = 8099,
    *,
    ready: Callable[[str], None] | None = None,
) -> None:
    """Serve the simulator under gunicorn until interrupted (no access log).

    One worker process (the simulator's state lives there) with threads and
    keep-alive, as Exotel's own API behaves; werkzeug's server, which
    ``start_in_thread`` uses for tests, closes every connection. ``ready``
    is called with the base URL once the socket is listening.
    """
    from gunicorn.app.base import BaseApplication

    app = create_app(config)
    options: dict[str, Any] = {
        "bind": f"{host}:{port}",
        "workers": 1,
        "worker_class": "gthread",
        "threads": 16,
        "keepalive": 75,
        "loglevel": "warning",
        "when_ready": (lambda _server: ready(f"http://{_url_host(host)}:{port}"))
        if ready is not None
        else None,
    }

    class _Gunicorn(BaseApplication):  # type: ignore[misc]
        def load_config(self) -> None:
            for key, value in options.items():
                if value is not None:
                    self.cfg.set(key, value)

        def load(self) -> Flask:
            return app

    _Gunicorn().run()


def start_in_thread(
    config: SimulatorConfig, host: str = "127.0.0.1", port: int = 0
) -> tuple[SimulatorServer, str]:
    """Start the simulator on a background thread; returns it and its base URL."""
    server, app = _make_server(config, host, port)
    thread = threading.Thread(
        target=server.serve_forever,
        kwargs={"poll_interval": 0.05},  # so shutdown() returns promptly
        name=f"exotel-simulator:{server.server_port}",
        daemon=True,
    )
    thread.start()
    running = SimulatorServer(server, thread, app)
    return running, running.base_url
