"""``exolegs check``: the effective configuration, secrets masked, and what is wrong.

Every line printed goes through the same scrubber as the logs, so a secret
that slips into a value or an error message is still masked. Problems make
the command exit 1; notes are advice and do not.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import sys
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any, TextIO

from redis.exceptions import RedisError, ResponseError

from worker import keys
from worker.errors import SettingsError
from worker.logs import Scrubber
from worker.redact import MASK, mask_url, url_secrets
from worker.settings import DEFAULT_ACCOUNT, Account, Settings

if TYPE_CHECKING:
    from redis import Redis

log = logging.getLogger("exolegs.checks")

_SECRET_NAME = re.compile(r"TOKEN|SECRET|PASSWORD|DSN|KEY|AUTH", re.IGNORECASE)


def fingerprint(secret: str) -> str:
    """A short, stable tag for telling tokens apart during a rotation (never the token)."""
    return "sha256:" + hashlib.sha256(secret.encode()).hexdigest()[:8]


def _tokens(settings: Settings) -> str:
    tokens = settings.callback_tokens
    if not tokens:
        return "(not set)"
    tags = ", ".join(f"{MASK} ({len(t)} chars, {fingerprint(t)})" for t in tokens)
    return f"{len(tokens)} token(s): {tags}"


def _dsn(dsn: str | None) -> str:
    if not dsn:
        return "(off)"
    try:
        host = mask_url(dsn).split("@")[-1].split("/")[0]
    except ValueError:
        host = "?"
    return f"{MASK} (host {host})" if host else MASK


def _proxies(s: Settings) -> str:
    if not s.trusted_proxies:
        return "0 (X-Forwarded-For ignored)"
    if s.trust_any_proxy:
        return f"{s.trusted_proxies}, from any peer (Heroku: only the router reaches a dyno)"
    return f"{s.trusted_proxies}, from {', '.join(map(str, s.trusted_proxy_ips))}"


def _reconcile(s: Settings) -> str:
    if not s.reconcile:
        return "off"
    hour, minute = divmod(s.reconcile_nightly_at, 60)
    return (
        f"every {s.reconcile_recent_every:g}s over {s.reconcile_recent_lookback:g}s, "
        f"every {s.reconcile_hourly_every:g}s over {s.reconcile_hourly_lookback:g}s, "
        f"nightly at {hour:02d}:{minute:02d} IST over the previous IST day"
    )


def live_state(settings: Settings) -> list[str]:
    """What Redis says now (the first-fetch delay legs readiness set); nothing when unreachable."""
    try:
        from worker.calls import readiness
        from worker.runtime import connect

        client = connect(settings.redis_url)
        return [f"legs readiness: {readiness.summary(client, settings).describe()}"]
    except Exception:  # noqa: BLE001 - an unreachable Redis is reported as a problem below
        return []


def describe(settings: Settings) -> list[tuple[str, str]]:
    s = settings
    rows = [
        ("EXOTEL_ACCOUNT_SID", s.exotel_account_sid or "(not set)"),
        ("EXOTEL_API_KEY", s.exotel_api_key or "(not set)"),
        ("EXOTEL_API_TOKEN", MASK if s.exotel_api_token else "(not set)"),
        ("EXOTEL_REGION", s.exotel_region),
        ("Exotel API", s.exotel_url),
        ("EXOTEL_RATE_LIMIT", str(s.exotel_rate_limit)),
        ("CALLBACK_TOKEN", _tokens(s)),
        (
            "CALLBACK_BASIC_AUTH",
            f"{s.callback_basic_auth[0]}:{MASK}" if s.callback_basic_auth else "(off)",
        ),
        ("CALLBACK_ALLOWED_IPS", ", ".join(map(str, s.callback_allowed_ips)) or "(any)"),
        ("TRUSTED_PROXIES", _proxies(s)),
        ("CALLBACK_RATE_LIMIT", str(s.callback_rate_limit) if s.callback_rate_limit else "(off)"),
        ("REDIS_URL", mask_url(s.redis_url)),
        ("Redis TLS", s.redis_tls),
        ("SINKS", " ".join(mask_url(u) for u in s.sinks)),
        ("FETCH_DELAY_SECONDS", f"{s.fetch_delay_seconds:g}"),
        ("FETCH_DELAY_MAX_SECONDS", f"{s.fetch_delay_max_seconds:g}"),
        ("RECONCILE", _reconcile(s)),
        ("RECONCILE_RATE_SHARE", f"{s.reconcile_rate_share:g}"),
        ("RETRY_BASE/MAX_SECONDS", f"{s.retry_base_seconds:g} / {s.retry_max_seconds:g}"),
        ("RETRY_MAX_ATTEMPTS", str(s.retry_max_attempts)),
        ("RETENTION_HOURS", f"{s.retention_hours:g}"),
        ("JOB_LEASE_SECONDS", f"{s.job_lease_seconds:g}"),
        ("UNKNOWN_SINK_GRACE_SECONDS", f"{s.unknown_sink_grace_seconds:g}"),
        ("SPOOL_DIR", str(s.spool_dir)),
        ("DEFAULT_COUNTRY", s.default_country),
        ("SENTRY_DSN", _dsn(s.sentry_dsn)),
        ("LOG_LEVEL / LOG_FORMAT", f"{s.log_level} / {s.log_format}"),
        ("PORT / WEB_CONCURRENCY", f"{s.port} / {s.web_concurrency}"),
    ]
    for account in s.all_accounts:
        if account.name != DEFAULT_ACCOUNT:
            rows.append((f"account {account.name}", _account(account)))
    return rows


def _account(account: Account) -> str:
    """One line about an EXOTEL_ACCOUNTS account, secrets masked."""
    tokens = ", ".join(fingerprint(t) for t in account.callback_tokens)
    sinks = " ".join(mask_url(u) for u in account.sinks)
    return (
        f"sid {account.sid}, key {account.api_key}, token {MASK}, {account.url}, "
        f"{account.rate_limit}, country {account.default_country}, "
        f"{len(account.callback_tokens)} callback token(s) ({tokens}), sinks {sinks}"
    )


def exotel_findings(settings: Settings) -> tuple[list[str], list[str]]:
    """(problems, results): one harmless authenticated Exotel request per account."""
    from worker.calls.exotel import ExotelClient
    from worker.errors import ExolegsError

    found: list[str] = []
    results: list[str] = []
    for account in settings.all_accounts:
        if not account.configured:
            continue  # said already: the default account without credentials
        where = "EXOTEL_ACCOUNT_SID" if account.name == DEFAULT_ACCOUNT else "EXOTEL_ACCOUNTS"
        with ExotelClient(settings.for_account(account)) as client:
            try:
                results.append(f"account {account.name}: {client.check()}")
            except ExolegsError as err:
                found.append(f"{where}: account {account.name} ({account.sid}): {err.message}")
    return found, results


def security_findings(
    settings: Settings, env: Mapping[str, str] | None = None
) -> tuple[list[str], list[str]]:
    """(problems, notes) about how the callback endpoint is protected; no I/O."""
    env = os.environ if env is None else env
    problems: list[str] = []
    notes: list[str] = []
    nets = settings.callback_allowed_ips
    everyone = [n for n in nets if n.prefixlen == 0]
    if everyone:
        problems.append(
            f"CALLBACK_ALLOWED_IPS: {everyone[0]} allows every address, and allow-listed "
            "clients are never rate limited; list Exotel's networks or unset it"
        )
    if nets and settings.trusted_proxies == 0 and env.get("DYNO"):
        problems.append(
            "TRUSTED_PROXIES: 0 on Heroku, so CALLBACK_ALLOWED_IPS sees the router's address "
            "and refuses every callback; set TRUSTED_PROXIES=1"
        )
    if nets and settings.callback_rate_limit:
        notes.append(
            "CALLBACK_RATE_LIMIT has no effect while CALLBACK_ALLOWED_IPS is set: other "
            "clients are refused before the limit and allow-listed ones are exempt"
        )
    if settings.redis_url.startswith("rediss://") and not settings.redis_tls_verify:
        if not settings.heroku:
            notes.append(
                "REDIS_TLS_VERIFY=false: Redis's TLS certificate is not checked, so anyone on "
                "the path can pose as Redis; set REDIS_TLS_CA_FILE instead if it is self-signed"
            )
    if settings.trusted_proxies and not (nets or settings.callback_rate_limit):
        notes.append("TRUSTED_PROXIES is only used by CALLBACK_ALLOWED_IPS / CALLBACK_RATE_LIMIT")
    tokens = settings.callback_tokens
    if len(set(tokens)) != len(tokens):
        notes.append("CALLBACK_TOKEN: the same token is listed twice")
    if len(tokens) > 1:
        notes.append(
            f"CALLBACK_TOKEN: {len(tokens)} tokens accepted (a rotation?); remove the old one "
            "once Exotel calls the new URL (docs/security.md)"
        )
    short = [t for t in tokens if len(t) < 32]
    if short:
        notes.append(
            "CALLBACK_TOKEN: tokens under 32 characters are guessable sooner; "
            "generate one with: python -c 'import secrets; print(secrets.token_urlsafe(32))'"
        )
    if settings.callback_basic_auth and len(settings.callback_basic_auth[1]) < 12:
        notes.append("CALLBACK_BASIC_AUTH: the password is under 12 characters")
    if not (nets or settings.callback_rate_limit):
        notes.append(
            "neither CALLBACK_ALLOWED_IPS nor CALLBACK_RATE_LIMIT is set: anyone may try tokens "
            "as fast as the server answers"
        )
    return problems, notes


# ------------------------------------------------------------ Redis safety
class Persistence(Enum):
    AOF = "aof"  # appendonly yes
    RDB = "rdb"  # snapshots only: a crash loses the writes since the last one
    OFF = "off"  # a restart loses everything
    UNKNOWN = "unknown"  # INFO/CONFIG not available (fakeredis, some managed plans)


class EpochState(Enum):
    OK = "ok"  # the epoch this process knew, or the first it saw
    CREATED = "created"  # there was none: a first start on this Redis, or it was wiped
    MISSING = "missing"  # there is none and this look did not create one
    WIPED = "wiped"  # the epoch changed or vanished under us (now, or noticed earlier)


@dataclass(frozen=True)
class Finding:
    """One thing wrong with Redis, worded for the operator: the setting, then what to do."""

    setting: str
    message: str

    def __str__(self) -> str:
        return f"{self.setting}: {self.message}"


@dataclass(frozen=True)
class RedisSafety:
    """What one look at Redis says about whether it can lose exolegs's data.

    ``problems`` make ``exolegs check`` exit 1 and ``/readyz`` degraded;
    ``warnings`` are reported only. ``evicting`` alone stops a worker from
    starting. Safe to show without credentials: no URLs, call sids or secrets.
    """

    eviction_policy: str | None  # None when INFO could not be read
    persistence: Persistence
    epoch: str | None
    epoch_state: EpochState
    wiped_at: float | None = None
    problems: tuple[Finding, ...] = ()
    warnings: tuple[Finding, ...] = ()

    @property
    def safe(self) -> bool:
        return not self.problems

    @property
    def evicting(self) -> bool:
        return self.eviction_policy is not None and self.eviction_policy != "noeviction"

    def summary(self) -> dict[str, Any]:
        """A small JSON view (for /readyz): settings and states, no texts."""
        return {
            "maxmemory_policy": self.eviction_policy or "unknown",
            "persistence": self.persistence.value,
            "wiped": self.epoch_state is EpochState.WIPED,
        }


def eviction_fix(policy: str) -> str:
    return (
        f"is {policy}, so under memory pressure Redis deletes keys (jobs, delivery ledgers, "
        "dead letters) and calls are lost or delivered twice; set it to noeviction: "
        "`redis-cli CONFIG SET maxmemory-policy noeviction` (and in redis.conf), on Heroku "
        "`heroku redis:maxmemory <addon> --policy noeviction`, on ElastiCache or Memorystore "
        "in the instance's parameter group"
    )


# KEYS[1] the epoch hash. ARGV: the epoch this process knows ('' for none), a
# new id, '1' to create one when missing. Returns {id, wiped_at, state}.
# An epoch that vanished or changed under a process that knew it means Redis
# was wiped: the new epoch records when, and which one it followed, so every
# process (and `exolegs check`) reports it until an operator acknowledges it.
_EPOCH = """
local cur = redis.call('HGET', KEYS[1], 'id')
local t = redis.call('TIME')
local now = t[1] .. '.' .. string.format('%06d', tonumber(t[2]))
if cur then
  local wiped = redis.call('HGET', KEYS[1], 'wiped_at') or ''
  if ARGV[1] == '' or cur == ARGV[1] then
    return {cur, wiped, wiped ~= '' and 'wiped' or 'ok'}
  end
  if redis.call('HGET', KEYS[1], 'previous') ~= ARGV[1] then
    redis.call('HSET', KEYS[1], 'wiped_at', now, 'previous', ARGV[1])
    wiped = now
  end
  return {cur, wiped, wiped ~= '' and 'wiped' or 'ok'}
end
if ARGV[3] ~= '1' then return {'', '', ARGV[1] == '' and 'missing' or 'wiped'} end
redis.call('HSET', KEYS[1], 'id', ARGV[2], 'created_at', now)
if ARGV[1] ~= '' then
  redis.call('HSET', KEYS[1], 'wiped_at', now, 'previous', ARGV[1])
  return {ARGV[2], now, 'wiped'}
end
return {ARGV[2], '', 'created'}
"""


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _persistence(redis: Redis, info: dict[str, Any]) -> Persistence:
    if "aof_enabled" not in info:
        return Persistence.UNKNOWN
    if int(info["aof_enabled"]):
        return Persistence.AOF
    try:
        save = _text(redis.config_get("save").get("save", ""))
    except ResponseError:  # CONFIG is disabled on most managed Redis plans
        return Persistence.UNKNOWN
    return Persistence.RDB if save.strip() else Persistence.OFF


def inspect_redis(
    redis: Redis, *, known_epoch: str | None = None, create_epoch: bool = False
) -> RedisSafety:
    """Read INFO and the epoch key: is this Redis safe to keep exolegs's work in?

    O(1) Redis work, at most four commands (INFO memory, INFO persistence,
    CONFIG GET save when AOF is off, one Lua call on the one-hash epoch key);
    fine for every /readyz. Raises RedisError when Redis is unreachable.

    - ``maxmemory-policy`` other than ``noeviction`` is a problem: an evicting
      Redis silently drops jobs, ledgers and dead letters.
    - persistence off (no AOF, no snapshots) is a warning.
    - ``known_epoch`` is the epoch this caller saw before (see
      :class:`RedisWatch`, which remembers it for you). If it vanished or
      changed, Redis was wiped (a FLUSHALL, a failover to an empty replica):
      a problem, kept in Redis until ``exolegs check --ack-wipe``.
      ``create_epoch`` writes a new epoch when there is none (workers and the
      edge do; ``exolegs check`` only looks).
    """
    problems: list[Finding] = []
    warnings: list[Finding] = []
    policy: str | None = None
    persistence = Persistence.UNKNOWN
    try:
        pipe = redis.pipeline(transaction=False)
        pipe.info("memory")
        pipe.info("persistence")
        memory, persisted = pipe.execute()
    except ResponseError as err:  # fakeredis, or INFO renamed away
        warnings.append(
            Finding("maxmemory-policy", f"cannot read INFO ({err}); check it is noeviction")
        )
    else:
        policy = str(memory.get("maxmemory_policy")) if "maxmemory_policy" in memory else None
        if policy is not None and policy != "noeviction":
            problems.append(Finding("maxmemory-policy", eviction_fix(policy)))
        persistence = _persistence(redis, persisted)
        if persistence is Persistence.OFF:
            warnings.append(
                Finding(
                    "appendonly",
                    "persistence is off (no AOF, no snapshots): a Redis restart loses every "
                    "job, ledger and dead letter; set `appendonly yes`",
                )
            )
    raw = redis.eval(
        _EPOCH, 1, keys.EPOCH, known_epoch or "", uuid.uuid4().hex, "1" if create_epoch else ""
    )
    epoch, wiped, state = (_text(v) for v in raw)
    epoch_state = EpochState(state)
    if epoch_state is EpochState.WIPED:
        when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(float(wiped))) if wiped else "now"
        problems.append(
            Finding(
                "Redis data",
                f"Redis was wiped (noticed {when}): the exolegs epoch changed, as after a "
                "FLUSHALL or a failover to an empty replica. Jobs, records, ledgers and dead "
                "letters from before are gone: calls in flight then were not delivered and "
                "append-only sinks may get repeats of earlier calls. Check the sinks for that "
                "period, then clear this with `exolegs check --ack-wipe`",
            )
        )
    elif epoch_state is EpochState.MISSING:
        warnings.append(
            Finding(
                "Redis data",
                "no exolegs epoch: no worker has started on this Redis yet, or it was wiped",
            )
        )
    return RedisSafety(
        eviction_policy=policy,
        persistence=persistence,
        epoch=epoch or None,
        epoch_state=epoch_state,
        wiped_at=float(wiped) if wiped else None,
        problems=tuple(problems),
        warnings=tuple(warnings),
    )


def acknowledge_wipe(redis: Redis) -> bool:
    """Clear a wipe notice once the operator has dealt with it; True if there was one.

    ``previous`` stays, so a process that knew the old epoch and looks only
    now does not raise the notice again.
    """
    return bool(redis.hdel(keys.EPOCH, "wiped_at"))


@dataclass
class RedisWatch:
    """:func:`inspect_redis` for a long-lived process: remembers the epoch between looks.

    The edge keeps one for /readyz and each worker one for its start-up and
    its periodic look; ``check()`` creates the epoch if there is none yet.
    """

    redis: Redis
    epoch: str | None = None
    last: RedisSafety | None = None  # what the previous look found
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def check(self) -> RedisSafety:
        with self._lock:
            safety = inspect_redis(self.redis, known_epoch=self.epoch, create_epoch=True)
            if safety.epoch:
                self.epoch = safety.epoch
            self.last = safety
            return safety


def report(safety: RedisSafety, previous: RedisSafety | None = None) -> None:
    """Log what a look found: problems at CRITICAL (and to Sentry), warnings once."""
    seen = set() if previous is None else {*previous.problems, *previous.warnings}
    for finding in safety.problems:
        if finding not in seen:
            log.critical("Redis is not safe for exolegs: %s", finding)
            _sentry(f"Redis is not safe for exolegs: {finding.setting}")
    for finding in safety.warnings:
        if finding not in seen:
            log.warning("Redis: %s", finding)
    if safety.epoch_state is EpochState.CREATED:
        log.warning(
            "Redis had no exolegs epoch; created one. Expected on a first start: otherwise "
            "this Redis was wiped before any exolegs process was running to notice"
        )


def _sentry(message: str) -> None:
    try:
        import sentry_sdk

        sentry_sdk.capture_message(message, level="fatal")
    except Exception:  # noqa: BLE001, S110 - alerting must never break the work
        pass


def worker_start(redis: Redis) -> RedisWatch:
    """A worker's look before it starts: refuse an evicting Redis, report the rest.

    Raises :class:`SettingsError` (one line, naming ``maxmemory-policy``) when
    Redis may evict. An unreachable Redis is not refused here: Celery waits
    for it, and the periodic look (:class:`Watchdog`) checks it once it is up.
    """
    watch = RedisWatch(redis)
    try:
        safety = watch.check()
    except RedisError as err:
        log.warning("cannot inspect Redis at start-up (%s); will look again", err)
        return watch
    if safety.evicting:
        raise SettingsError("maxmemory-policy", eviction_fix(str(safety.eviction_policy)))
    report(safety)
    return watch


class Watchdog:
    """Looks at Redis again every ``interval`` seconds, for a policy change or a wipe.

    ``chores`` run on the same beat (a worker announces its sinks there).
    """

    def __init__(
        self,
        watch: RedisWatch,
        interval: float = 30.0,
        chores: Sequence[Callable[[], object]] = (),
    ) -> None:
        self.watch = watch
        self.interval = interval
        self.chores = list(chores)
        self._stop = threading.Event()

    def look(self) -> RedisSafety | None:
        """Run the chores and look once; report only what is new since the last look."""
        previous = self.watch.last
        try:
            for chore in self.chores:
                chore()
            safety = self.watch.check()
        except RedisError:
            return None  # the pump and Celery already say Redis is away
        report(safety, previous)
        return safety

    def run(self) -> None:
        while not self._stop.wait(self.interval):
            self.look()

    def start(self) -> Watchdog:
        threading.Thread(target=self.run, name="exolegs-redis-watch", daemon=True).start()
        return self

    def stop(self) -> None:
        self._stop.set()


def problems(settings: Settings) -> list[str]:
    found = []
    if not settings.any_callback_token:
        found.append("CALLBACK_TOKEN: not set; the web process refuses to start without it")
    if not settings.all_accounts[0].configured and settings.all_accounts[0].name == DEFAULT_ACCOUNT:
        found.append(
            "EXOTEL_ACCOUNT_SID/EXOTEL_API_KEY/EXOTEL_API_TOKEN: not set; "
            "legs cannot be fetched (exolegs dev runs the simulator instead)"
        )
    if settings.retry_max_seconds >= 3600:
        found.append("RETRY_MAX_SECONDS: retries more than an hour apart delay records a lot")
    found.extend(str(p) for p in redis_findings(settings, warnings=False))
    try:
        from worker.sinks.registry import build_account_sinks

        build_account_sinks(settings)
    except SettingsError as err:
        found.append(str(err))
    return found


def redis_findings(settings: Settings, *, warnings: bool) -> list[Finding]:
    """Redis's problems (or, with ``warnings``, its warnings) for `exolegs check`."""
    try:
        from worker.runtime import connect

        safety = inspect_redis(connect(settings))
    except RedisError as err:
        if warnings:
            return []
        reason = type(err).__name__
        return [Finding("REDIS_URL", f"{mask_url(settings.redis_url)} unreachable ({reason})")]
    return list(safety.warnings if warnings else safety.problems)


def _env_secrets(env: Mapping[str, str] | None) -> list[str]:
    """Values of secret-looking variables, for when Settings cannot even be built."""
    env = os.environ if env is None else env
    found: list[str] = []
    for name, value in env.items():
        if _SECRET_NAME.search(name) and value.strip():
            found.extend(v for v in re.split(r"[,\s]+", value) if v)
            found.append(value.strip())
        if name in ("SINKS", "REDIS_URL", "REDIS_TLS_URL", "SENTRY_DSN"):
            for url in re.split(r"[,\s]+", value):
                found.extend(url_secrets(url, username_too=name == "SENTRY_DSN"))
    return found


def run_check(env: Mapping[str, str] | None = None, *, out: TextIO | None = None) -> int:
    """Print the configuration and its problems; 0 when fine, 1 when something is wrong.

    ``env`` replaces the environment (and ``.env``) for tests.
    """
    stream = out or sys.stdout
    try:
        settings = Settings.from_env(env)
    except SettingsError as err:
        # The message names the variable and should not echo a secret; in case
        # it does, mask the value of every secret-looking variable anyway.
        print(f"problem: {Scrubber(_env_secrets(env))(str(err))}", file=stream)
        return 1
    scrub = Scrubber(settings.secrets())

    def say(line: str = "") -> None:
        print(scrub(line), file=stream)

    rows = describe(settings)
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        say(f"{key:{width}}  {value}")
    for line in live_state(settings):
        say(line)
    found = problems(settings)
    security, notes = security_findings(settings, env)
    found.extend(security)
    exotel, proven = exotel_findings(settings)
    found.extend(exotel)
    say()
    for line in proven:
        say(f"ok: {line}")
    for warning in redis_findings(settings, warnings=True):
        say(f"warning: {warning}")
    for note in notes:
        say(f"note: {note}")
    if not found:
        say("configuration OK")
        return 0
    for problem in found:
        say(f"problem: {problem}")
    return 1
