"""The reconciliation sweeper: every finished call reaches the sinks, callback or not.

Exotel retries a failed callback only twice (about +5 and +15 minutes) and
then drops it, sends one only when the API request or the flow asked for it,
and advises integrators to "implement a reconciliation process that
periodically polls" (https://developer.exotel.com/docs/references/webhooks).
So the sweeper lists the account's calls through v1 Bulk Call Details
(``GET /v1/Accounts/<sid>/Calls.json``, https://developer.exotel.com/api/call-details)
and books every finished call exolegs never accepted through the same intake
as a callback: the dedupe is the same, so a call is never booked twice
however often it is listed, and a callback arriving after the sweep is a
duplicate.

Tiers (settings): ``recent`` every 5 minutes over the last 60, ``hourly``
over the last 5 hours (calls last up to 4 hours, ``TimeLimit`` 14,400 s),
``nightly`` over the previous IST day. The recent tier plus the callback's
own grace make the bound: a call whose callback is lost reaches the sinks
within RECONCILE_RECENT_EVERY + RECONCILE_GRACE + a fetch and a delivery of
its end (about 7 minutes with the defaults). The hourly and nightly tiers
also ask again for the legs of calls delivered ``legs: unavailable``.

One run per tier and account at a time, across every worker process and
dyno: a redis-py :class:`~redis.lock.Lock` (``exolegs:reconcile:<account>:
lock:<tier>``) held by the run, renewed after every page and expiring on its
own if the worker dies. Every worker runs the scheduler thread, so there is
no extra process to deploy (Celery beat would be one more dyno, and two
beats during a rolling deploy would need this same guard anyway). A tier's
last finished run is kept in Redis (``last:<tier>``), in Redis time, so
workers agree on when it is due again; a failed run is tried again after
the tier's interval or CIRCUIT_PROBE_SECONDS, whichever is shorter.

Rate: each listing request takes a token from the sweeper's own slice
(RECONCILE_RATE_SHARE of the account's EXOTEL_RATE_LIMIT) and from the
account's limit itself, and waits while live legs fetches have a backlog of
reserved slots: the sweeper never starves them.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from redis.exceptions import LockError, RedisError

from worker import keys, metrics
from worker.calls.callbacks import CallbackError, event_from_fields
from worker.calls.intake import CallState
from worker.calls.provenance import Source
from worker.errors import ExolegsError
from worker.jobs import fetch_id
from worker.settings import CALL_SID_RE, Rate

if TYPE_CHECKING:
    from redis import Redis
    from redis.lock import Lock

    from worker.calls.exotel import CallsPage
    from worker.runtime import Runtime
    from worker.settings import Account, Settings

log = logging.getLogger("exolegs.reconcile")
INDIA = ZoneInfo("Asia/Kolkata")
TIME_FORMAT = "%Y-%m-%d %H:%M:%S"
#: Exotel's documented statuses of a call that is over (anything else is still going on).
FINISHED = frozenset({"completed", "failed", "busy", "no-answer", "canceled", "cancelled"})
LOCK_SECONDS = 120
TICK_SECONDS = 5.0
PAGE_SIZE = 100


class Tier(StrEnum):
    RECENT = "recent"
    HOURLY = "hourly"
    NIGHTLY = "nightly"


class Skip(StrEnum):
    """Why a listed call was not booked."""

    IN_PROGRESS = "not finished"
    JUST_ENDED = "ended under RECONCILE_GRACE ago (its callback may be on the way)"
    BAD_SID = "malformed call sid"
    NOT_TERMINAL = "no terminal status"


@dataclass
class Tally:
    """What one sweep or backfill saw: the summary an operator reads."""

    listed: int = 0
    known: int = 0
    booked: int = 0
    refetch: int = 0
    pages: int = 0
    skipped: Counter[str] = field(default_factory=Counter)

    def add(self, other: Tally) -> None:
        self.listed += other.listed
        self.known += other.known
        self.booked += other.booked
        self.refetch += other.refetch
        self.pages += other.pages
        self.skipped.update(other.skipped)

    def to_json(self) -> dict[str, Any]:
        return {
            "listed": self.listed,
            "known": self.known,
            "booked": self.booked,
            "refetch": self.refetch,
            "pages": self.pages,
            "skipped": dict(self.skipped),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Tally:
        return cls(
            listed=int(data.get("listed", 0)),
            known=int(data.get("known", 0)),
            booked=int(data.get("booked", 0)),
            refetch=int(data.get("refetch", 0)),
            pages=int(data.get("pages", 0)),
            skipped=Counter({str(k): int(v) for k, v in (data.get("skipped") or {}).items()}),
        )

    def describe(self, *, dry_run: bool = False) -> str:
        verb = "would book" if dry_run else "booked"
        skipped = ", ".join(f"{n} {why}" for why, n in sorted(self.skipped.items())) or "none"
        refetch = f", {'would ask' if dry_run else 'asked'} again for the legs of {self.refetch}"
        return (
            f"listed {self.listed}, already known {self.known}, {verb} {self.booked}"
            f"{refetch if self.refetch else ''}; skipped: {skipped}"
        )


# ------------------------------------------------------------------ windows
def ist(moment: float) -> datetime:
    return datetime.fromtimestamp(moment, INDIA)


def stamp(moment: datetime) -> str:
    """Exotel's DateCreated filter time: IST, no offset."""
    return moment.astimezone(INDIA).strftime(TIME_FORMAT)


def window(tier: Tier, now: float, settings: Settings) -> tuple[datetime, datetime]:
    """The (since, until) a tier lists at ``now`` (unix seconds), in IST."""
    end = ist(now)
    if tier is Tier.RECENT:
        return end - timedelta(seconds=settings.reconcile_recent_lookback), end
    if tier is Tier.HOURLY:
        return end - timedelta(seconds=settings.reconcile_hourly_lookback), end
    day = end.date() - timedelta(days=1)
    start = datetime(day.year, day.month, day.day, tzinfo=INDIA)
    return start, start + timedelta(days=1) - timedelta(seconds=1)


def every(tier: Tier, settings: Settings) -> float:
    if tier is Tier.RECENT:
        return settings.reconcile_recent_every
    if tier is Tier.HOURLY:
        return settings.reconcile_hourly_every
    return 86400.0


def due(tier: Tier, now: float, last: float | None, settings: Settings) -> bool:
    """Is the tier due at ``now`` given its last finished run?"""
    if tier is not Tier.NIGHTLY:
        return last is None or now - last >= every(tier, settings)
    today = ist(now)
    at = today.replace(hour=0, minute=0, second=0, microsecond=0) + timedelta(
        minutes=settings.reconcile_nightly_at
    )
    if today < at:
        return False
    return last is None or ist(last) < at


def chunks(since: datetime, until: datetime) -> Iterator[tuple[datetime, datetime]]:
    """The range in pieces Exotel accepts: at most 28 days (always within "1 month")."""
    step = timedelta(days=28)
    start = since
    while start <= until:
        end = min(until, start + step - timedelta(seconds=1))
        yield start, end
        start = end + timedelta(seconds=1)


# ------------------------------------------------------------------ one sweep
def _ended(call: dict[str, Any]) -> datetime | None:
    for key in ("EndTime", "DateUpdated"):
        value = call.get(key)
        if isinstance(value, str):
            try:
                moment = datetime.strptime(value.strip(), TIME_FORMAT).replace(tzinfo=INDIA)
            except ValueError:
                continue
            if moment.year >= 2000:
                return moment
    return None


def classify(
    calls: list[dict[str, Any]], now: float, grace: float
) -> tuple[list[dict[str, Any]], Counter[str]]:
    """The listed calls worth booking, and why the others are not."""
    keep, skipped = [], Counter[str]()
    for call in calls:
        sid = call.get("Sid")
        if not isinstance(sid, str) or not CALL_SID_RE.fullmatch(sid):
            skipped[Skip.BAD_SID] += 1
            continue
        status = str(call.get("Status") or "").strip().lower()
        if status not in FINISHED:
            skipped[Skip.IN_PROGRESS] += 1
            continue
        ended = _ended(call)
        if grace and ended is not None and ended.timestamp() > now - grace:
            skipped[Skip.JUST_ENDED] += 1
            continue
        keep.append(call)
    return keep, skipped


@dataclass
class Budget:
    """The sweeper's share of one account's Exotel rate, below live legs fetches."""

    rt: Runtime
    account: Account
    share: float

    @property
    def rate(self) -> Rate:
        limit = self.account.rate_limit
        return Rate(max(limit.count * self.share, 1e-6), limit.period)

    def wait_turn(self, stop: threading.Event | None = None) -> None:
        """Block (this is the sweeper's own thread) until a listing request may go."""
        limiter = self.rt.limiter
        own = f"{self.account.limit_name}:reconcile"
        while True:
            wait = limiter.backlog(self.account.limit_name)
            if wait <= 0:
                wait = limiter.acquire(own, self.rate, burst=1)
            if wait <= 0:
                wait = limiter.acquire(self.account.limit_name, self.account.rate_limit)
            if wait <= 0:
                return
            if stop is not None and stop.wait(min(wait, 5.0)):
                raise InterruptedError("stopping")
            if stop is None:
                time.sleep(min(wait, 5.0))


def sweep_pages(
    rt: Runtime,
    account: Account,
    since: datetime,
    until: datetime,
    *,
    source: Source,
    dry_run: bool = False,
    page_uri: str | None = None,
    refetch_unavailable: bool = False,
    grace: float | None = None,
    share: float | None = None,
    fetch_delay: Callable[[], float] | None = None,
    stop: threading.Event | None = None,
) -> Iterator[tuple[Tally, str | None]]:
    """List ``since``..``until`` (within one month) and book what was never accepted.

    Yields each page's tally and the next page's URI (None at the end), so a
    caller can save its place (backfill) or renew its lock (the sweeper).
    """
    client = rt.exotel_for(account.name)
    budget = Budget(rt, account, share or rt.settings.reconcile_rate_share)
    first = True
    while first or page_uri:
        first = False
        budget.wait_turn(stop)
        page: CallsPage = client.list_calls(
            stamp(since), stamp(until), page_uri=page_uri, page_size=PAGE_SIZE
        )
        tally = book_page(
            rt,
            account,
            page.calls,
            source=source,
            dry_run=dry_run,
            refetch_unavailable=refetch_unavailable,
            grace=rt.settings.reconcile_grace_seconds if grace is None else grace,
            fetch_delay=fetch_delay,
        )
        page_uri = page.next_uri
        yield tally, page_uri


def book_page(
    rt: Runtime,
    account: Account,
    calls: list[dict[str, Any]],
    *,
    source: Source,
    dry_run: bool,
    refetch_unavailable: bool,
    grace: float,
    fetch_delay: Callable[[], float] | None = None,
) -> Tally:
    """Book one page's finished, never-accepted calls through the intake."""
    now = float(rt.redis.time()[0])
    keep, skipped = classify(calls, now, grace)
    tally = Tally(listed=len(calls), pages=1, skipped=skipped)
    seen = rt.intake.known([c["Sid"] for c in keep], account.name)
    for call in keep:
        sid = call["Sid"]
        state = seen.get(sid)
        if state is not None:
            tally.known += 1
            if refetch_unavailable and state is CallState.LEGS_UNAVAILABLE:
                tally.refetch += 1
                if not dry_run:
                    rt.book.schedule(fetch_id(sid, account.name))
            continue
        try:
            event = event_from_fields(call)
        except CallbackError:
            tally.skipped[Skip.BAD_SID] += 1
            continue
        if not event.terminal:
            tally.skipped[Skip.NOT_TERMINAL] += 1
            continue
        if dry_run:
            tally.booked += 1
            continue
        delay = fetch_delay() if fetch_delay is not None else 0.0
        accepted = rt.intake.accept(event, account.name, source=source, fetch_delay=delay)
        if accepted.fetch_booked:
            tally.booked += 1
        else:
            tally.known += 1  # a callback won the race
    return tally


# ------------------------------------------------------------------ the scheduler
def _sentry_checkin(
    settings: Settings, slug: str, status: str, schedule_minutes: float, check_in_id: str | None
) -> str | None:
    """A Sentry cron monitor check-in for one tier (only with SENTRY_DSN); never raises."""
    if not settings.sentry_dsn:
        return None
    try:
        from sentry_sdk.crons import capture_checkin

        found: str | None = capture_checkin(
            monitor_slug=slug,
            check_in_id=check_in_id,
            status=status,
            monitor_config={
                "schedule": {
                    "type": "interval",
                    "value": max(1, round(schedule_minutes)),
                    "unit": "minute",
                },
                "checkin_margin": max(1, round(schedule_minutes / 2)),
                "max_runtime": max(5, round(schedule_minutes * 2)),
                "timezone": "Asia/Kolkata",
            },
        )
        return found
    except Exception:  # noqa: BLE001 - monitoring must never break the sweep
        return None


def run_tier(
    rt: Runtime, account: Account, tier: Tier, *, stop: threading.Event | None = None
) -> Tally | None:
    """Run one tier for one account now, unless another worker is running it (None)."""
    redis: Redis = rt.redis
    lock: Lock = redis.lock(
        keys.reconcile(account.name, f"lock:{tier}"),
        timeout=LOCK_SECONDS,
        blocking=False,
        thread_local=False,
    )
    if not lock.acquire():
        return None
    settings = rt.settings
    slug = f"exolegs-reconcile-{account.name}-{tier}"
    minutes = every(tier, settings) / 60
    checkin = _sentry_checkin(settings, slug, "in_progress", minutes, None)
    started = float(redis.time()[0])
    since, until = window(tier, started, settings)
    total = Tally()
    try:
        for tally, _next in sweep_pages(
            rt,
            account,
            since,
            until,
            source=Source.RECONCILE,
            refetch_unavailable=tier is not Tier.RECENT,
            stop=stop,
        ):
            total.add(tally)
            lock.extend(LOCK_SECONDS, replace_ttl=True)
        pipe = redis.pipeline(transaction=True)
        pipe.set(keys.reconcile(account.name, f"last:{tier}"), f"{started:.3f}")
        metrics.reconcile_ran(
            pipe,
            tier=str(tier),
            account=account.name,
            listed=total.listed,
            missing=total.booked,
            at=started,
        )
        pipe.execute()
    except InterruptedError:
        return total  # the worker is shutting down: another one runs the tier
    except (ExolegsError, RedisError, LockError) as err:
        _sentry_checkin(settings, slug, "error", minutes, checkin)
        # Not again at every tick: a wrong token or an Exotel outage would be hammered.
        pause = min(every(tier, settings), float(settings.circuit_probe_seconds))
        with contextlib.suppress(RedisError):
            redis.set(keys.reconcile(account.name, f"pause:{tier}"), "1", ex=max(1, int(pause)))
        reason = err.message if isinstance(err, ExolegsError) else f"{type(err).__name__}: {err}"
        log.warning(
            "reconcile %s (account %s, %s to %s) stopped: %s; it runs again at the next tick",
            tier,
            account.name,
            stamp(since),
            stamp(until),
            reason,
        )
        return total
    finally:
        try:
            lock.release()
        except LockError:
            pass
    _sentry_checkin(settings, slug, "ok", minutes, checkin)
    level = logging.INFO if total.booked or total.refetch else logging.DEBUG
    log.log(level, "reconcile %s (account %s): %s", tier, account.name, total.describe())
    return total


def last_run(redis: Redis, account: str, tier: Tier) -> float | None:
    raw = redis.get(keys.reconcile(account, f"last:{tier}"))
    return float(raw) if raw else None


def tick(rt: Runtime, *, stop: threading.Event | None = None) -> list[tuple[str, Tier, Tally]]:
    """Run every tier that is due, for every configured account; returns what ran."""
    ran: list[tuple[str, Tier, Tally]] = []
    now = float(rt.redis.time()[0])
    for account in rt.settings.all_accounts:
        if not account.configured:
            continue
        for tier in Tier:
            if stop is not None and stop.is_set():
                return ran
            if not due(tier, now, last_run(rt.redis, account.name, tier), rt.settings):
                continue
            if rt.redis.exists(keys.reconcile(account.name, f"pause:{tier}")):
                continue  # its last run failed a moment ago
            tally = run_tier(rt, account, tier, stop=stop)
            if tally is not None:
                ran.append((account.name, tier, tally))
    return ran


class Sweeper:
    """The scheduler thread every worker process runs (see the module docstring)."""

    def __init__(self, runtime: Callable[[], Runtime], interval: float = TICK_SECONDS) -> None:
        self._runtime = runtime
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> Sweeper:
        self._thread = threading.Thread(target=self._run, name="exolegs-reconcile", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                tick(self._runtime(), stop=self._stop)
            except Exception:
                log.exception("reconcile tick failed; trying again in %.0fs", self.interval)


def listing_requests_per_day(
    calls_per_day: float, settings: Settings, busy_hours: float = 24
) -> int:
    """Bulk Call Details requests the three tiers make in a day (one page: 100 calls).

    Calls are taken as spread evenly over ``busy_hours`` of the day; a run
    over a window makes max(1, ceil(calls in it / 100)) requests.
    """
    import math

    per_second = calls_per_day / (busy_hours * 3600)

    def pages(window_seconds: float) -> int:
        return max(1, math.ceil(per_second * window_seconds / PAGE_SIZE))

    recent = 86400 / settings.reconcile_recent_every * pages(settings.reconcile_recent_lookback)
    hourly = 86400 / settings.reconcile_hourly_every * pages(settings.reconcile_hourly_lookback)
    nightly = max(1, math.ceil(calls_per_day / PAGE_SIZE))
    return round(recent + hourly + nightly)
