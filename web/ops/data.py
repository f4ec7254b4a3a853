"""What the console shows, as plain data: the HTML pages and their JSON twins share it.

Everything here reads Redis through the worker's own modules (the job book,
circuits, dead letters, the ledger, metrics, the call timeline); the console
never writes a worker key itself.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypedDict

from worker import jobs, keys, metrics
from worker.calls import stored, timeline
from worker.jobs import ledger
from worker.jobs.circuit import open_circuits
from worker.jobs.deadletters import DeadLetter
from worker.settings import CALL_SID_RE, DEFAULT_ACCOUNT

if TYPE_CHECKING:
    from worker.runtime import Runtime
    from worker.spool import Spool

LEGS = "legs"  # the "sink" of a dead legs fetch in filters and labels


# ------------------------------------------------------------------ masking
_PHONE_KEYS = frozenset(
    {
        "from", "to", "From", "To", "CallFrom", "CallTo", "phone_e164", "contact_uri",
        "DialWhomNumber", "PhoneNumber", "phone_number", "Number", "number", "caller_id",
        "CallerId", "DialCallTo", "ForwardedFrom", "customer_number", "agent_number",
    }
)  # fmt: skip
_PHONE_VALUE = re.compile(r"\+?[\d\s().-]{6,}")
_DIGIT = re.compile(r"\d")


def mask_number(value: str) -> str:
    """``+919876543210`` -> ``•••3210``: the last 4 digits only."""
    digits = _DIGIT.findall(value)
    if len(digits) <= 4:
        return value
    return "•••" + "".join(digits[-4:])


def _looks_like_number(key: str | None, value: str) -> bool:
    digits = len(_DIGIT.findall(value))
    if digits < 5:
        return False
    return (key in _PHONE_KEYS) or bool(_PHONE_VALUE.fullmatch(value.strip()))


_EMBEDDED = re.compile(r"(?<![\w.])\+?\d{9,15}(?![\w])")
_TEXT_KEYS = frozenset({None, "last_error", "m", "message", "error", "reason"})


def mask(value: Any, key: str | None = None, found: list[str] | None = None) -> Any:
    """A copy with every phone number masked; the originals are appended to ``found``.

    A value under a phone-ish key, or that is a phone number as a whole, is
    masked; in free text (error messages) every run of 9 to 15 digits is.
    """
    if isinstance(value, str):
        if _looks_like_number(key, value):
            if found is not None and value not in found:
                found.append(value)
            return mask_number(value)
        if key in _TEXT_KEYS:
            return _EMBEDDED.sub(lambda m: mask_number(m.group(0)), value)
        return value
    if isinstance(value, dict):
        return {k: mask(v, str(k), found) for k, v in value.items()}
    if isinstance(value, list):
        return [mask(v, key, found) for v in value]
    return value


# ------------------------------------------------------------------ overview
@dataclass(frozen=True)
class Account:
    name: str
    limit_name: str
    rate_per_minute: float
    sid: str | None


def accounts(rt: Runtime) -> list[Account]:
    """The configured Exotel accounts (one today: ``default``)."""
    s = rt.settings
    return [
        Account(
            "default",
            rt.exotel_limit_name,
            s.exotel_rate_limit.per_second * 60,
            s.exotel_account_sid,
        )
    ]


def redis_status(rt: Runtime) -> dict[str, Any]:
    """INFO's version, memory and persistence, and the safety checks /readyz makes."""
    from worker.checks import inspect_redis

    try:
        info = rt.redis.info()
        safety = inspect_redis(rt.redis)
    except Exception as err:  # noqa: BLE001 - the strip says what is wrong instead
        return {"ok": False, "error": type(err).__name__, "checks": []}
    policy = str(info.get("maxmemory_policy", "?"))
    checks = [{"problem": True, "text": str(f)} for f in safety.problems]
    checks += [{"problem": False, "text": str(f)} for f in safety.warnings]
    return {
        "persistence": safety.persistence.value,
        "epoch": safety.epoch_state.value,
        "checks": checks,
        "ok": True,
        "version": str(info.get("redis_version", "?")),
        "used_memory": int(info.get("used_memory", 0)),
        "maxmemory": int(info.get("maxmemory", 0)),
        "maxmemory_policy": policy,
        "evicts": policy != "noeviction",
        "aof": bool(info.get("aof_enabled", 0)),
        "rdb_last_save": int(info.get("rdb_last_save_time", 0)),
        "rdb_changes_since_save": int(info.get("rdb_changes_since_last_save", 0)),
    }


def _circuit_rows(rt: Runtime) -> list[dict[str, Any]]:
    rows = []
    for name, state in sorted(open_circuits(rt.redis).items()):
        circuit = rt.circuit(name)
        ttl = rt.redis.ttl(f"{circuit.key}:probe")
        rows.append(
            {
                "name": name,
                "reason": str(state.get("reason", "")),
                "opened_at": state.get("opened_at"),
                "next_probe_in": max(0, int(ttl)) if ttl and ttl > 0 else 0,
                "parked": int(rt.redis.scard(f"{circuit.key}:parked")),
            }
        )
    return rows


def backlog(rt: Runtime, window: metrics.Window) -> dict[str, Any]:
    stats = rt.book.backlog()
    circuits = _circuit_rows(rt)
    stats["parked"] = sum(c["parked"] for c in circuits)
    stats["sparkline"] = window.samples(metrics.BACKLOG_FIELDS[0])
    stats["overdue_sparkline"] = window.samples(metrics.BACKLOG_FIELDS[1])
    stats["deliveries_per_minute"] = window.per_minute(metrics.Counter.DELIVERIES)
    return stats


def sink_rows(rt: Runtime, window: metrics.Window) -> list[dict[str, Any]]:
    last_ok = metrics.sink_last_ok(rt.redis)
    circuits = open_circuits(rt.redis)
    rows = []
    D = metrics.DeliveryOutcome
    for name in rt.sinks:

        def n(scope: str, *outcomes: metrics.DeliveryOutcome, sink: str = name) -> int:
            return int(
                sum(
                    window.sum(scope, metrics.Counter.DELIVERIES, sink=sink, outcome=o)
                    for o in outcomes
                )
            )

        failures = rt.redis.get(f"{keys.circuit('sink:' + name)}:failures")
        rows.append(
            {
                "name": name,
                "last_success": last_ok.get(name),
                "ok_1h": n("1h", D.DELIVERED, D.ALREADY),
                "retry_1h": n("1h", D.RETRY, D.PARKED),
                "dead_1h": n("1h", D.DEAD),
                "ok_24h": n("24h", D.DELIVERED, D.ALREADY),
                "retry_24h": n("24h", D.RETRY, D.PARKED),
                "dead_24h": n("24h", D.DEAD),
                "failures_in_a_row": int(failures or 0),
                "circuit": "open" if f"sink:{name}" in circuits else "closed",
                "p95_seconds": metrics.p95(metrics.latencies(rt.redis, "sink", name)),
            }
        )
    return rows


def account_rows(rt: Runtime, window: metrics.Window) -> list[dict[str, Any]]:
    circuits = open_circuits(rt.redis)
    rows = []
    for acct in rt.accounts.values():
        per_minute = window.per_minute(metrics.Counter.LEGS_FETCHES, account=acct.name)
        last_full = per_minute[-2] if len(per_minute) > 1 else 0.0

        def codes(scope: str, *wanted: str, a: str = acct.name) -> int:
            return int(
                sum(
                    window.sum(scope, metrics.Counter.LEGS_FETCHES, account=a, code=c)
                    for c in wanted
                )
            )

        delays = metrics.latencies(rt.redis, "legs", acct.name)
        rows.append(
            {
                "name": acct.name,
                "account_sid": acct.sid,
                "sinks": sorted(rt.sinks_of(acct.name)),
                "requests_last_minute": int(last_full),
                "limit_per_minute": acct.rate_limit.per_second * 60,
                "requests_1h": int(sum(per_minute)),
                "rate_limited_1h": codes("1h", "429", "429/10724"),
                "not_ready_10743_1h": codes("1h", "500/10743"),
                "not_found_10744_1h": codes("1h", "404/10744"),
                "rate_limited_24h": codes("24h", "429", "429/10724"),
                "not_ready_10743_24h": codes("24h", "500/10743"),
                "not_found_10744_24h": codes("24h", "404/10744"),
                "legs_ready_p95_seconds": metrics.p95(delays),
                "circuit": "open" if acct.limit_name in circuits else "closed",
            }
        )
    return rows


def status(rt: Runtime, spool: Spool) -> dict[str, Any]:
    return {
        "redis": redis_status(rt),
        "spooled": spool.count(),
        "pumps_alive": metrics.pumps_alive(rt.redis),
        "circuits": _circuit_rows(rt),
        "reconciliation": [
            {"name": name, **run} for name, run in sorted(metrics.reconcile_runs(rt.redis).items())
        ],
        "dead_letters": rt.dead.count(),
    }


def legs_readiness(rt: Runtime) -> dict[str, Any]:
    """How long Exotel takes to have a call's legs, and the first-fetch delay that follows."""
    from worker.calls import readiness

    found = readiness.summary(rt.redis, rt.settings)
    return {
        "first_fetches_1h": found.first_fetches,
        "too_early_share_1h": round(found.not_ready_share, 3),
        "mean_ready_seconds_1h": found.mean_ready_seconds,
        "first_fetch_delay_seconds": found.delay_seconds,
        "raised": found.raised,
        "text": found.describe(),
    }


def overview(rt: Runtime, spool: Spool) -> dict[str, Any]:
    window = metrics.window(rt.redis)
    return {
        "now": time.time(),
        "status": status(rt, spool),
        "backlog": backlog(rt, window),
        "sinks": sink_rows(rt, window),
        "accounts": account_rows(rt, window),
        "legs_readiness": legs_readiness(rt),
    }


# -------------------------------------------------------------- dead letters
@dataclass(frozen=True)
class DeadFilter:
    account: str = ""
    sink: str = ""
    reason: str = ""
    code: str = ""
    older_than_hours: float | None = None
    newer_than_hours: float | None = None

    @classmethod
    def from_args(cls, args: Any) -> DeadFilter:
        def hours(name: str) -> float | None:
            value_ = args.get(name)
            raw = "" if value_ is None else str(value_).strip()
            if not raw:
                return None
            try:
                value = float(raw)
            except ValueError:
                raise ValueError(f"{name}: expected a number of hours, got {raw[:20]!r}") from None
            if value < 0 or value != value:
                raise ValueError(f"{name}: must be 0 or more hours")
            return value

        return cls(
            account=str(args.get("account") or "").strip()[:32],
            sink=str(args.get("sink") or "").strip()[:100],
            reason=str(args.get("reason") or "").strip()[:100],
            code=str(args.get("code") or "").strip()[:20],
            older_than_hours=hours("older_than_hours"),
            newer_than_hours=hours("newer_than_hours"),
        )

    def matches(self, letter: DeadLetter, now: float) -> bool:
        if self.account and letter.account != self.account:
            return False
        if self.sink and (letter.sink or LEGS) != self.sink:
            return False
        if self.reason and self.reason.lower() not in letter.reason.lower():
            return False
        if self.code and self.code not in _codes(letter):
            return False
        age = now - letter.failed_at
        if self.older_than_hours is not None and age < self.older_than_hours * 3600:
            return False
        return not (self.newer_than_hours is not None and age > self.newer_than_hours * 3600)

    def as_dict(self) -> dict[str, Any]:
        return {
            "account": self.account,
            "sink": self.sink,
            "reason": self.reason,
            "code": self.code,
            "older_than_hours": self.older_than_hours,
            "newer_than_hours": self.newer_than_hours,
        }

    @property
    def empty(self) -> bool:
        return not any(self.as_dict().values()) and self.older_than_hours is None


def _codes(letter: DeadLetter) -> set[str]:
    status = "" if letter.upstream_status is None else str(letter.upstream_status)
    code = "" if letter.upstream_code is None else str(letter.upstream_code)
    return {c for c in (status, code, f"{status}/{code}" if status and code else "") if c}


def dead_letters(rt: Runtime, flt: DeadFilter, limit: int = 500) -> dict[str, Any]:
    now = time.time()
    matched = [letter for letter in rt.dead if flt.matches(letter, now)]
    rows = []
    for letter in matched[:limit]:
        row = letter.to_json()
        row["sink"] = letter.sink or LEGS
        row["code"] = "/".join(sorted(_codes(letter), key=len)[-1:]) or ""
        row["callback"] = mask(letter.callback) if letter.callback else None
        row["last_error"] = str(mask(letter.last_error))
        rows.append(row)
    return {
        "filter": flt.as_dict(),
        "count": len(matched),
        "shown": len(rows),
        "letters": rows,
        "sinks": sorted({LEGS, *rt.sinks}),
        "accounts": sorted(rt.accounts),
    }


def matching_letters(rt: Runtime, flt: DeadFilter) -> list[DeadLetter]:
    now = time.time()
    return [letter for letter in rt.dead if flt.matches(letter, now)]


# ---------------------------------------------------------------- call lookup
class Match(TypedDict):
    account: str
    call_sid: str


def lookup(rt: Runtime, query: str) -> list[Match]:
    """Calls for a CallSid (in any account) or the last digits (4 or more) of a phone number."""
    q = query.strip()
    if not q:
        return []
    found: list[Match] = []
    if CALL_SID_RE.fullmatch(q):
        pipe = rt.redis.pipeline(transaction=False)
        for name in rt.accounts:
            pipe.exists(keys.call(q, name), keys.record(q, name), timeline.key(q, name))
        for name, hits in zip(rt.accounts, pipe.execute(), strict=True):
            if hits:
                found.append({"account": name, "call_sid": q})
    if not found and re.fullmatch(r"[+\d\s().-]{4,32}", q):
        wanted = timeline.digits_of(q)
        for account, sid in timeline.calls_ending(rt.redis, wanted):
            record = rt.redis.get(keys.record(sid, account))
            numbers = timeline.numbers_in(stored.loads(record)) if record else []
            if not numbers or any(timeline.digits_of(n).endswith(wanted) for n in numbers):
                found.append({"account": account, "call_sid": sid})
    return found


def call_view(
    rt: Runtime, call_sid: str, account: str = DEFAULT_ACCOUNT, reveal: set[int] | None = None
) -> dict[str, Any]:
    """One call: its callbacks, legs attempts, record, and each sink's ledger and jobs."""
    from worker.calls.intake import call_summary

    summary = call_summary(rt.redis, call_sid, account)
    raw_record = rt.redis.get(keys.record(call_sid, account))
    record = stored.loads(raw_record) if raw_record else None
    numbers: list[str] = []
    masked_record = mask(record, None, numbers) if record is not None else None
    masked_callbacks = mask(summary.get("callbacks", []), None, numbers)
    events = [dict(e) for e in timeline.read(rt.redis, call_sid, account)]
    for e in events:
        if "m" in e:
            e["m"] = str(mask(e["m"], None, numbers))
    states = ledger.states(rt.redis, call_sid, account)
    sink_names = rt.sinks_of(account) if account in rt.accounts else {}
    sinks = []
    for name in sorted({*sink_names, *states}):
        job_id = jobs.deliver_id(call_sid, name, account)
        sinks.append(
            {
                "name": name,
                "ledger": states.get(name),
                "job": rt.book.describe(job_id),
                "dead": _dead_row(rt, job_id),
            }
        )
    fetch_id = jobs.fetch_id(call_sid, account)
    reveal = reveal or set()
    return {
        "call_sid": call_sid,
        "account": account,
        "found": bool(summary or record or events),
        "received_at": summary.get("received_at"),
        "events_seen": summary.get("events", []),
        "callbacks": masked_callbacks,
        "timeline": events,
        "legs_job": rt.book.describe(fetch_id),
        "legs_dead": _dead_row(rt, fetch_id),
        "record": masked_record,
        "sinks": sinks,
        "numbers": [
            {"index": i, "masked": mask_number(n), "revealed": n if i in reveal else None}
            for i, n in enumerate(numbers)
        ],
        "_numbers": numbers,
    }


def _dead_row(rt: Runtime, job_id: str) -> dict[str, Any] | None:
    letter = rt.dead.get(job_id)
    if letter is None:
        return None
    return {
        "job_id": letter.job_id,
        "reason": letter.reason,
        "attempts": letter.attempts,
        "failed_at": letter.failed_at,
        "last_error": str(mask(letter.last_error)),
        "code": "/".join(sorted(_codes(letter), key=len)[-1:]),
    }
