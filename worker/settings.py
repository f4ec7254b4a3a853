"""One typed, validated view of the environment, built once at start-up.

Nothing in exolegs reads ``os.environ`` except :meth:`Settings.from_env`.
Tests build settings from a plain mapping.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus, urlsplit

from worker.errors import SettingsError
from worker.redact import MIN_SECRET, mask_url, url_secrets

REGION_HOSTS = {"sg": "https://ccm-api.exotel.com", "in": "https://ccm-api.in.exotel.com"}
#: v1 (Bulk Call Details) lives on other hosts than the v3 legs API, per region.
V1_REGION_HOSTS = {"sg": "https://api.exotel.com", "in": "https://api.in.exotel.com"}
_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$", re.IGNORECASE)
_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_CLOCK_RE = re.compile(r"^\s*([01]?\d|2[0-3]):([0-5]\d)\s*$")
CALL_SID_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
_PERIODS = {"second": 1.0, "minute": 60.0, "hour": 3600.0}
_RATE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*/\s*(second|minute|hour)s?\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class Rate:
    """``count`` requests per ``period`` seconds."""

    count: float
    period: float

    @property
    def per_second(self) -> float:
        return self.count / self.period

    def __str__(self) -> str:
        name = {1.0: "second", 60.0: "minute", 3600.0: "hour"}.get(self.period, "?")
        count = int(self.count) if self.count == int(self.count) else self.count
        return f"{count}/{name}"


def parse_rate(variable: str, text: str) -> Rate:
    match = _RATE_RE.match(text)
    if not match or float(match.group(1)) <= 0:
        raise SettingsError(variable, f"expected N/second, N/minute or N/hour, got {text!r}")
    return Rate(float(match.group(1)), _PERIODS[match.group(2).lower()])


DEFAULT_ACCOUNT = "default"
ACCOUNT_NAME_RE = re.compile(r"[a-z][a-z0-9_-]{0,31}")
_TOKEN_RE = re.compile(r"[A-Za-z0-9._~-]{16,256}")
_ENV_REF_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_ACCOUNT_FIELDS = frozenset(
    {
        "sid",
        "api_key",
        "api_token",
        "region",
        "base_url",
        "rate_limit",
        "callback_tokens",
        "sinks",
        "default_country",
    }
)


@dataclass(frozen=True)
class Account:
    """One Exotel account: whose calls arrive on its callback tokens and go to its sinks.

    The single ``EXOTEL_*`` set of variables is the account named ``default``.
    """

    name: str
    sid: str | None = None
    api_key: str | None = None
    api_token: str | None = field(default=None, repr=False)
    region: str = "sg"
    base_url: str | None = None
    rate_limit: Rate = Rate(200, 60)
    callback_tokens: tuple[str, ...] = field(default=(), repr=False)
    sinks: tuple[str, ...] = field(default=(), repr=False)
    default_country: str = "IN"

    @property
    def url(self) -> str:
        return (self.base_url or REGION_HOSTS[self.region]).rstrip("/")

    @property
    def configured(self) -> bool:
        return bool(self.sid and self.api_key and self.api_token)

    @property
    def limit_name(self) -> str:
        """Its Exotel rate limit and circuit: Exotel limits each account sid on its own."""
        return (
            f"exotel:{self.sid or ('unconfigured' if self.name == DEFAULT_ACCOUNT else self.name)}"
        )


#: Where Exotel serves recordings: its own domains, and its S3 bucket
#: (https://developer.exotel.com/docs/voice-v3/api-reference/voice-log-download).
DEFAULT_RECORDING_HOSTS = (
    "exotel.com",
    "exotel.in",
    "s3-ap-southeast-1.amazonaws.com/exotelrecordings/",
    "s3.ap-southeast-1.amazonaws.com/exotelrecordings/",
    "s3.ap-south-1.amazonaws.com/exotelrecordings/",
)
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


@dataclass(frozen=True)
class Settings:
    exotel_account_sid: str | None = None
    exotel_api_key: str | None = None
    exotel_api_token: str | None = field(default=None, repr=False)
    exotel_region: str = "sg"
    exotel_base_url: str | None = None
    exotel_rate_limit: Rate = Rate(200, 60)
    exotel_timeout_seconds: float = 10.0
    callback_tokens: tuple[str, ...] = field(default=(), repr=False)
    callback_basic_auth: tuple[str, str] | None = field(default=None, repr=False)
    callback_allowed_ips: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    trusted_proxies: int = 0
    trusted_proxy_ips: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    #: Every peer counts as a trusted proxy: set on Heroku, where only the router reaches a dyno.
    trust_any_proxy: bool = False
    heroku: bool = False
    callback_rate_limit: Rate | None = None
    redis_url: str = field(default="redis://localhost:6379/0", repr=False)
    redis_tls_verify: bool = True
    redis_tls_ca_file: Path | None = None
    sinks: tuple[str, ...] = field(default=("jsonl://./var/calls.jsonl",), repr=False)
    fetch_delay_seconds: float = 30.0
    fetch_delay_max_seconds: float = 300.0
    reconcile: bool = True
    reconcile_recent_every: float = 300.0
    reconcile_recent_lookback: float = 3600.0
    reconcile_hourly_every: float = 3600.0
    reconcile_hourly_lookback: float = 5 * 3600.0
    reconcile_nightly_at: int = 60  # minutes after midnight, India time
    reconcile_grace_seconds: float = 60.0
    reconcile_rate_share: float = 0.1
    retry_base_seconds: float = 5.0
    retry_max_seconds: float = 600.0
    retry_max_attempts: int = 12
    retention_hours: float = 48.0
    job_lease_seconds: float = 120.0
    sink_concurrency: int = 2
    fetch_concurrency: int = 4
    circuit_probe_seconds: int = 60
    unknown_sink_grace_seconds: float = 600.0
    spool_dir: Path = Path("./var/spool")
    default_country: str = "IN"
    sentry_dsn: str | None = field(default=None, repr=False)
    log_level: str = "INFO"
    log_format: str = "console"
    port: int = 8000
    web_concurrency: int = 2
    worker_concurrency: int | None = None
    max_body_bytes: int = 64 * 1024
    #: Every account, ``default`` (the EXOTEL_* set) first when there is one.
    accounts: tuple[Account, ...] = field(default=(), repr=False)
    ops_password: str | None = field(default=None, repr=False)
    ops_users_file: Path | None = None
    ops_session_minutes: float = 60.0
    metrics_token: str | None = field(default=None, repr=False)

    callback_max_events: int = 100
    readyz_details: bool = False
    recording_hosts: tuple[str, ...] = DEFAULT_RECORDING_HOSTS

    # ------------------------------------------------------------------ build
    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, *, dotenv: bool = True) -> Settings:
        """Validate every variable; the first bad one raises :class:`SettingsError`.

        With no mapping, reads ``os.environ`` over a ``.env`` file in the
        working directory (the environment wins).
        """
        if env is None:
            merged: dict[str, str] = {}
            if dotenv and Path(".env").is_file():
                from dotenv import dotenv_values

                merged.update({k: v for k, v in dotenv_values(".env").items() if v is not None})
            merged.update(os.environ)
            env = merged
        return cls(**_parse(env))

    def with_(self, **changes: Any) -> Settings:
        return replace(self, **changes)

    # ------------------------------------------------------------ derived
    @property
    def exotel_url(self) -> str:
        """Scheme and host (and port) the legs API is called on."""
        return (self.exotel_base_url or REGION_HOSTS[self.exotel_region]).rstrip("/")

    @property
    def exotel_v1_url(self) -> str:
        """Scheme and host the v1 Bulk Call Details API is called on."""
        return (self.exotel_base_url or V1_REGION_HOSTS[self.exotel_region]).rstrip("/")

    @property
    def exotel_configured(self) -> bool:
        return bool(self.exotel_account_sid and self.exotel_api_key and self.exotel_api_token)

    @property
    def all_accounts(self) -> tuple[Account, ...]:
        """The configured accounts; a Settings built by hand has just ``default``."""
        return self.accounts or (self.default_account(),)

    def default_account(self) -> Account:
        """The account the single EXOTEL_* set of variables describes."""
        return Account(
            name=DEFAULT_ACCOUNT,
            sid=self.exotel_account_sid,
            api_key=self.exotel_api_key,
            api_token=self.exotel_api_token,
            region=self.exotel_region,
            base_url=self.exotel_base_url,
            rate_limit=self.exotel_rate_limit,
            callback_tokens=self.callback_tokens,
            sinks=self.sinks,
            default_country=self.default_country,
        )

    def account(self, name: str) -> Account:
        """The account called ``name``; SettingsError naming the known ones otherwise."""
        for account in self.all_accounts:
            if account.name == name:
                return account
        known = ", ".join(a.name for a in self.all_accounts)
        raise SettingsError("--account", f"no account named {name!r}; configured: {known}")

    def for_account(self, account: Account | str) -> Settings:
        """These settings seen from one account: its credentials, host, rate, sinks, country."""
        acct = self.account(account) if isinstance(account, str) else account
        return replace(
            self,
            exotel_account_sid=acct.sid,
            exotel_api_key=acct.api_key,
            exotel_api_token=acct.api_token,
            exotel_region=acct.region,
            exotel_base_url=acct.base_url,
            exotel_rate_limit=acct.rate_limit,
            callback_tokens=acct.callback_tokens,
            sinks=acct.sinks,
            default_country=acct.default_country,
        )

    @property
    def token_accounts(self) -> tuple[tuple[str, str, int], ...]:
        """(callback token, account name, its place in that account's list) for every token."""
        return tuple(
            (token, account.name, n)
            for account in self.all_accounts
            for n, token in enumerate(account.callback_tokens)
        )

    @property
    def any_callback_token(self) -> bool:
        return any(a.callback_tokens for a in self.all_accounts)

    @property
    def sink_urls(self) -> tuple[str, ...]:
        """Every sink URL some account delivers to, each once, the global SINKS first."""
        seen: dict[str, None] = {}
        for account in self.all_accounts:
            seen.update(dict.fromkeys(account.sinks))
        return tuple(seen)

    @property
    def redis_tls(self) -> str:
        """How the Redis TLS certificate is checked, in words (``exolegs check``)."""
        if not self.redis_url.startswith("rediss://"):
            return "no TLS (redis:// or unix://)"
        if not self.redis_tls_verify:
            why = "REDIS_TLS_VERIFY=false" if not self.heroku else "Heroku Redis (self-signed)"
            return f"TLS, certificate NOT verified ({why})"
        ca = f"CA file {self.redis_tls_ca_file}" if self.redis_tls_ca_file else "system CAs"
        return f"TLS, certificate verified against {ca}"

    def trusts_proxy(self, peer: ipaddress.IPv4Address | ipaddress.IPv6Address | None) -> bool:
        """True when ``peer`` (the TCP peer) is one of the proxies whose X-Forwarded-For we read."""
        if self.trusted_proxies == 0 or peer is None:
            return False
        return self.trust_any_proxy or any(peer in net for net in self.trusted_proxy_ips)

    @property
    def ops_enabled(self) -> bool:
        """The console is served only when it has a credential of its own."""
        return bool(self.ops_password or self.ops_users_file)

    @property
    def retention_seconds(self) -> int:
        return int(self.retention_hours * 3600)

    def secrets(self) -> list[str]:
        """Every string that must never be printed, longest first.

        The Exotel token and its Basic header, every callback token, the
        callback Basic password and header, SENTRY_DSN and its key, passwords
        and secret-looking query values in REDIS_URL and SINKS, each also
        percent-encoded. Logs, errors, Sentry events and the CLI scrub these.
        """
        found = {
            self.exotel_api_token,
            self.sentry_dsn,
            self.ops_password,
            self.metrics_token,
            *self.callback_tokens,
        }
        for account in self.all_accounts:
            found |= {account.api_token, *account.callback_tokens}
            if account.api_key and account.api_token:
                pair = f"{account.api_key}:{account.api_token}".encode()
                found.add(base64.b64encode(pair).decode())
        if self.callback_basic_auth:
            user, password = self.callback_basic_auth
            found |= {password, base64.b64encode(f"{user}:{password}".encode()).decode()}
        if self.sentry_dsn:
            found.update(url_secrets(self.sentry_dsn, username_too=True))
        for url in (self.redis_url, *self.sinks, *self.sink_urls):
            found.update(url_secrets(url))
        for secret in [s for s in found if s]:
            found |= {quote(secret, safe=""), quote_plus(secret, safe="")}
        return sorted((s for s in found if s and len(s) >= MIN_SECRET), key=len, reverse=True)


def _get(env: Mapping[str, str], name: str) -> str | None:
    value = env.get(name)
    if value is None:
        return None
    value = value.strip()
    return value or None


def _number(env: Mapping[str, str], name: str, default: float, *, minimum: float = 0) -> float:
    raw = _get(env, name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(name, f"expected a number, got {raw!r}") from None
    if value < minimum or value != value or value in (float("inf"), float("-inf")):
        raise SettingsError(name, f"must be a number >= {minimum:g}, got {raw!r}")
    return value


def _duration(env: Mapping[str, str], name: str, default: float, *, minimum: float = 1) -> float:
    """Seconds from ``90``, ``90s``, ``5m``, ``5h`` or ``1d``."""
    raw = _get(env, name)
    if raw is None:
        return default
    match = _DURATION_RE.match(raw)
    if not match:
        raise SettingsError(name, f"expected a duration such as 90s, 5m, 5h or 1d, got {raw!r}")
    value = float(match.group(1)) * _UNITS[match.group(2).lower()]
    if value < minimum:
        raise SettingsError(name, f"must be at least {minimum:g} seconds, got {raw!r}")
    return value


def _switch(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = _get(env, name)
    if raw is None:
        return default
    lowered = raw.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise SettingsError(name, f"expected on or off, got {raw!r}")


def _reconcile(env: Mapping[str, str], out: dict[str, Any]) -> None:
    """The sweeper's tiers; none may look back further than RETENTION_HOURS.

    A call older than retention has lost its dedupe state, so listing it
    again would deliver it a second time: refused at start-up.
    """
    out["fetch_delay_max_seconds"] = _number(env, "FETCH_DELAY_MAX_SECONDS", 300.0)
    if out["fetch_delay_max_seconds"] < out["fetch_delay_seconds"]:
        raise SettingsError("FETCH_DELAY_MAX_SECONDS", "must be >= FETCH_DELAY_SECONDS")
    out["reconcile"] = _switch(env, "RECONCILE", True)
    out["reconcile_recent_every"] = _duration(env, "RECONCILE_RECENT_EVERY", 300.0)
    out["reconcile_recent_lookback"] = _duration(env, "RECONCILE_RECENT_LOOKBACK", 3600.0)
    out["reconcile_hourly_every"] = _duration(env, "RECONCILE_HOURLY_EVERY", 3600.0)
    out["reconcile_hourly_lookback"] = _duration(env, "RECONCILE_HOURLY_LOOKBACK", 5 * 3600.0)
    at = _get(env, "RECONCILE_NIGHTLY_AT") or "01:00"
    clock = _CLOCK_RE.match(at)
    if not clock:
        raise SettingsError("RECONCILE_NIGHTLY_AT", f"expected HH:MM (India time), got {at!r}")
    out["reconcile_nightly_at"] = int(clock.group(1)) * 60 + int(clock.group(2))
    out["reconcile_grace_seconds"] = _duration(env, "RECONCILE_GRACE", 60.0, minimum=0)
    share = _number(env, "RECONCILE_RATE_SHARE", 0.1)
    if not 0 < share <= 0.5:
        raise SettingsError(
            "RECONCILE_RATE_SHARE",
            f"must be above 0 and at most 0.5 (live legs fetches keep the rest), got {share:g}",
        )
    out["reconcile_rate_share"] = share
    retention = out["retention_hours"] * 3600
    nightly_reach = 86400 + out["reconcile_nightly_at"] * 60 + 3600
    for name, reach in (
        ("RECONCILE_RECENT_LOOKBACK", out["reconcile_recent_lookback"]),
        ("RECONCILE_HOURLY_LOOKBACK", out["reconcile_hourly_lookback"]),
        ("RECONCILE_NIGHTLY_AT", nightly_reach),
    ):
        if out["reconcile"] and reach > retention:
            raise SettingsError(
                name,
                f"reaches back {reach / 3600:g}h, beyond "
                f"RETENTION_HOURS={out['retention_hours']:g}:"
                " calls older than retention would be delivered again; raise RETENTION_HOURS"
                " or shorten the lookback (or RECONCILE=off)",
            )


def _integer(env: Mapping[str, str], name: str, default: int, *, minimum: int = 0) -> int:
    raw = _get(env, name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(name, f"expected a whole number, got {raw!r}") from None
    if value < minimum:
        raise SettingsError(name, f"must be >= {minimum}, got {raw!r}")
    return value


def _flag(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = _get(env, name)
    if raw is None:
        return default
    if raw.lower() in _TRUE:
        return True
    if raw.lower() in _FALSE:
        return False
    raise SettingsError(name, f"expected true or false, got {raw!r}")


def _networks(
    env: Mapping[str, str], name: str
) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    nets = []
    for item in re.split(r"[,\s]+", _get(env, name) or ""):
        if not item:
            continue
        try:
            nets.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise SettingsError(name, f"{item!r} is not an IP address or CIDR network") from None
    return tuple(nets)


def _parse(env: Mapping[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    out["exotel_account_sid"] = _get(env, "EXOTEL_ACCOUNT_SID")
    if out["exotel_account_sid"] and not CALL_SID_RE.fullmatch(out["exotel_account_sid"]):
        raise SettingsError("EXOTEL_ACCOUNT_SID", "must be letters, digits, '_' or '-'")
    out["exotel_api_key"] = _get(env, "EXOTEL_API_KEY")
    out["exotel_api_token"] = _get(env, "EXOTEL_API_TOKEN")
    creds = [out["exotel_account_sid"], out["exotel_api_key"], out["exotel_api_token"]]
    if any(creds) and not all(creds):
        missing = [
            n
            for n, v in zip(
                ("EXOTEL_ACCOUNT_SID", "EXOTEL_API_KEY", "EXOTEL_API_TOKEN"), creds, strict=True
            )
            if not v
        ]
        raise SettingsError(missing[0], "must be set together with the other EXOTEL_* credentials")
    region = (_get(env, "EXOTEL_REGION") or "sg").lower()
    if region not in REGION_HOSTS:
        raise SettingsError("EXOTEL_REGION", f"must be 'sg' or 'in', got {region!r}")
    out["exotel_region"] = region
    base = _get(env, "EXOTEL_BASE_URL")
    if base is not None:
        parts = urlsplit(base)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise SettingsError("EXOTEL_BASE_URL", "must look like https://host[:port]")
    out["exotel_base_url"] = base
    out["exotel_rate_limit"] = parse_rate(
        "EXOTEL_RATE_LIMIT", _get(env, "EXOTEL_RATE_LIMIT") or "200/minute"
    )
    out["exotel_timeout_seconds"] = _number(env, "EXOTEL_TIMEOUT_SECONDS", 10.0, minimum=0.1)

    tokens = tuple(t.strip() for t in (_get(env, "CALLBACK_TOKEN") or "").split(",") if t.strip())
    for token in tokens:
        if not _TOKEN_RE.fullmatch(token):
            raise SettingsError(
                "CALLBACK_TOKEN",
                "each token must be 16 or more URL-safe characters (letters, digits, . _ ~ -)",
            )
    out["callback_tokens"] = tokens
    basic = _get(env, "CALLBACK_BASIC_AUTH")
    if basic is not None:
        user, sep, password = basic.partition(":")
        if not sep or not user or not password:
            raise SettingsError("CALLBACK_BASIC_AUTH", "expected user:password")
        out["callback_basic_auth"] = (user, password)
    out["callback_allowed_ips"] = _networks(env, "CALLBACK_ALLOWED_IPS")
    # Heroku's own variable: every dyno has it, and only the router can reach a dyno.
    out["heroku"] = bool(_get(env, "DYNO"))
    out["trusted_proxies"] = _integer(env, "TRUSTED_PROXIES", 0)
    out["trusted_proxy_ips"] = _networks(env, "TRUSTED_PROXY_IPS")
    if out["trusted_proxies"] and not out["trusted_proxy_ips"]:
        if not out["heroku"]:
            raise SettingsError(
                "TRUSTED_PROXY_IPS",
                "must list your proxies' addresses or networks when TRUSTED_PROXIES > 0 "
                "(X-Forwarded-For is only read from them)",
            )
        out["trust_any_proxy"] = True
    crl = _get(env, "CALLBACK_RATE_LIMIT")
    out["callback_rate_limit"] = parse_rate("CALLBACK_RATE_LIMIT", crl) if crl else None

    redis_url = _get(env, "REDIS_TLS_URL") or _get(env, "REDIS_URL") or "redis://localhost:6379/0"
    if urlsplit(redis_url).scheme not in ("redis", "rediss", "unix"):
        name = "REDIS_TLS_URL" if _get(env, "REDIS_TLS_URL") else "REDIS_URL"
        raise SettingsError(name, "must start with redis://, rediss:// or unix://")
    out["redis_url"] = redis_url
    out["redis_tls_verify"] = _flag(env, "REDIS_TLS_VERIFY", not out["heroku"])
    ca = _get(env, "REDIS_TLS_CA_FILE")
    if ca is not None:
        if not Path(ca).is_file():
            raise SettingsError("REDIS_TLS_CA_FILE", f"{ca!r} is not a readable file")
        out["redis_tls_ca_file"] = Path(ca)
    sinks = tuple(s for s in re.split(r"[,\s]+", _get(env, "SINKS") or "") if s)
    out["sinks"] = sinks or ("jsonl://./var/calls.jsonl",)
    for url in out["sinks"]:
        if "://" not in url:
            raise SettingsError("SINKS", f"{mask_url(url)!r} is not a URL (scheme://...)")

    out["fetch_delay_seconds"] = _number(env, "FETCH_DELAY_SECONDS", 30.0)
    out["retry_base_seconds"] = _number(env, "RETRY_BASE_SECONDS", 5.0, minimum=0.01)
    out["retry_max_seconds"] = _number(env, "RETRY_MAX_SECONDS", 600.0, minimum=0.01)
    if out["retry_max_seconds"] < out["retry_base_seconds"]:
        raise SettingsError("RETRY_MAX_SECONDS", "must be >= RETRY_BASE_SECONDS")
    out["retry_max_attempts"] = _integer(env, "RETRY_MAX_ATTEMPTS", 12, minimum=1)
    out["retention_hours"] = _number(env, "RETENTION_HOURS", 48.0, minimum=0.01)
    out["job_lease_seconds"] = _number(env, "JOB_LEASE_SECONDS", 120.0, minimum=1)
    if out["job_lease_seconds"] > 300:
        raise SettingsError(
            "JOB_LEASE_SECONDS", "must be <= 300 so a killed worker's work returns within 5 minutes"
        )
    _reconcile(env, out)
    out["sink_concurrency"] = _integer(env, "SINK_CONCURRENCY", 2, minimum=0)
    out["fetch_concurrency"] = _integer(env, "FETCH_CONCURRENCY", 4, minimum=1)
    out["circuit_probe_seconds"] = _integer(env, "CIRCUIT_PROBE_SECONDS", 60, minimum=1)
    out["unknown_sink_grace_seconds"] = _number(env, "UNKNOWN_SINK_GRACE_SECONDS", 600.0)
    out["spool_dir"] = Path(_get(env, "SPOOL_DIR") or "./var/spool")

    country = (_get(env, "DEFAULT_COUNTRY") or "IN").upper()
    import phonenumbers

    if country not in phonenumbers.SUPPORTED_REGIONS:
        raise SettingsError("DEFAULT_COUNTRY", f"{country!r} is not an ISO 3166 region code")
    out["default_country"] = country
    out["sentry_dsn"] = _get(env, "SENTRY_DSN")
    level = (_get(env, "LOG_LEVEL") or "INFO").upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        raise SettingsError("LOG_LEVEL", f"must be DEBUG, INFO, WARNING or ERROR, got {level!r}")
    out["log_level"] = level
    fmt = (_get(env, "LOG_FORMAT") or "console").lower()
    if fmt not in ("json", "console"):
        raise SettingsError("LOG_FORMAT", f"must be json or console, got {fmt!r}")
    out["log_format"] = fmt
    out["port"] = _integer(env, "PORT", 8000, minimum=1)
    if out["port"] > 65535:
        raise SettingsError("PORT", "must be a TCP port (1-65535)")
    out["web_concurrency"] = _integer(env, "WEB_CONCURRENCY", 2, minimum=1)
    out["callback_max_events"] = _integer(env, "CALLBACK_MAX_EVENTS", 100, minimum=1)
    out["readyz_details"] = _flag(env, "READYZ_DETAILS", False)
    extra_hosts = tuple(
        h.lower().removeprefix("https://")
        for h in re.split(r"[,\s]+", _get(env, "RECORDING_HOSTS") or "")
        if h
    )
    for host in extra_hosts:
        if not re.fullmatch(r"[a-z0-9.-]+\.[a-z0-9-]+(/\S*)?", host):
            raise SettingsError("RECORDING_HOSTS", f"{host!r} is not a host name (host[/path])")
    out["recording_hosts"] = DEFAULT_RECORDING_HOSTS + extra_hosts
    wc = _get(env, "WORKER_CONCURRENCY")
    out["worker_concurrency"] = _integer(env, "WORKER_CONCURRENCY", 1, minimum=1) if wc else None
    out["accounts"] = _accounts(env, out)
    _parse_ops(env, out)
    return out


# ------------------------------------------------------------------ accounts
def _accounts(env: Mapping[str, str], out: dict[str, Any]) -> tuple[Account, ...]:
    """``default`` from the EXOTEL_* set, then every account EXOTEL_ACCOUNTS names."""
    default = Account(
        name=DEFAULT_ACCOUNT,
        sid=out["exotel_account_sid"],
        api_key=out["exotel_api_key"],
        api_token=out["exotel_api_token"],
        region=out["exotel_region"],
        base_url=out["exotel_base_url"],
        rate_limit=out["exotel_rate_limit"],
        callback_tokens=out["callback_tokens"],
        sinks=out["sinks"],
        default_country=out["default_country"],
    )
    raw = _get(env, "EXOTEL_ACCOUNTS")
    if raw is None:
        return (default,)
    table = _load_accounts(raw)
    accounts: list[Account] = []
    if default.sid or default.callback_tokens:
        accounts.append(default)
    for name, spec in table.items():
        if not isinstance(name, str) or not ACCOUNT_NAME_RE.fullmatch(name):
            raise SettingsError(
                "EXOTEL_ACCOUNTS",
                f"account name {str(name)[:40]!r} must be 1-32 lower-case letters, digits, "
                "'_' or '-', starting with a letter",
            )
        if name == DEFAULT_ACCOUNT and accounts and accounts[0].name == DEFAULT_ACCOUNT:
            raise SettingsError(
                "EXOTEL_ACCOUNTS",
                "account 'default' is also given by EXOTEL_ACCOUNT_SID/CALLBACK_TOKEN; "
                "keep one of the two",
            )
        accounts.append(_account(env, name, spec, out))
    if not accounts:
        raise SettingsError("EXOTEL_ACCOUNTS", "names no account")
    _check_unique(accounts)
    return tuple(accounts)


def _load_accounts(raw: str) -> dict[str, Any]:
    """Inline JSON (``{...}``), inline TOML, or the path of a .json / .toml file."""
    text, source = raw, "inline"
    if not raw.startswith(("{", "[")) and "\n" not in raw and "=" not in raw:
        path = Path(raw).expanduser()
        if not path.is_file():
            raise SettingsError(
                "EXOTEL_ACCOUNTS", f"{raw!r} is neither inline JSON/TOML nor a readable file"
            )
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise SettingsError("EXOTEL_ACCOUNTS", f"cannot read {raw}: {err}") from None
        source = str(path)
    as_json = text.lstrip().startswith("{") or source.endswith(".json")
    try:
        table = json.loads(text) if as_json else tomllib.loads(text)
    except json.JSONDecodeError as err:
        where = f"line {err.lineno} column {err.colno}"
        raise SettingsError(
            "EXOTEL_ACCOUNTS", f"{source}: bad JSON at {where}: {err.msg}"
        ) from None
    except tomllib.TOMLDecodeError as err:
        raise SettingsError("EXOTEL_ACCOUNTS", f"{source}: bad TOML: {err}") from None
    if not isinstance(table, dict):
        raise SettingsError("EXOTEL_ACCOUNTS", f"{source}: expected a table of accounts by name")
    return table


def _expand(env: Mapping[str, str], where: str, value: str) -> str:
    """Replace each ``${NAME}`` with that environment variable, so secrets stay out of files."""

    def one(match: re.Match[str]) -> str:
        found = _get(env, match.group(1))
        if found is None:
            raise SettingsError(
                "EXOTEL_ACCOUNTS", f"{where} refers to ${{{match.group(1)}}}, which is not set"
            )
        return found

    return _ENV_REF_RE.sub(one, value).strip()


def _account(env: Mapping[str, str], name: str, spec: Any, out: dict[str, Any]) -> Account:
    var = "EXOTEL_ACCOUNTS"
    if not isinstance(spec, dict):
        raise SettingsError(var, f"account {name}: expected a table of settings")
    unknown = sorted(set(spec) - _ACCOUNT_FIELDS)
    if unknown:
        known = ", ".join(sorted(_ACCOUNT_FIELDS))
        raise SettingsError(var, f"account {name}: unknown field {unknown[0]!r} (known: {known})")

    def text(key: str) -> str | None:
        value = spec.get(key)
        if value is None:
            return None
        if not isinstance(value, str):
            raise SettingsError(var, f"account {name}: {key} must be a string")
        return _expand(env, f"account {name}: {key}", value) or None

    def words(key: str) -> tuple[str, ...] | None:
        value = spec.get(key)
        if value is None:
            return None
        if isinstance(value, str):
            items = re.split(r"[,\s]+", _expand(env, f"account {name}: {key}", value))
        elif isinstance(value, list) and all(isinstance(v, str) for v in value):
            items = [
                w
                for n, v in enumerate(value)
                for w in re.split(r"[,\s]+", _expand(env, f"account {name}: {key}[{n}]", v))
            ]
        else:
            raise SettingsError(var, f"account {name}: {key} must be a string or a list of strings")
        return tuple(i for i in items if i)

    sid = text("sid")
    if sid is None:
        raise SettingsError(var, f"account {name}: sid is missing")
    if not CALL_SID_RE.fullmatch(sid):
        raise SettingsError(var, f"account {name}: sid must be letters, digits, '_' or '-'")
    api_key, api_token = text("api_key"), text("api_token")
    for key, value in (("api_key", api_key), ("api_token", api_token)):
        if value is None:
            raise SettingsError(var, f"account {name}: {key} is missing")
    region = (text("region") or "sg").lower()
    if region not in REGION_HOSTS:
        raise SettingsError(var, f"account {name}: region must be 'sg' or 'in', got {region!r}")
    base = text("base_url")
    if base is not None:
        parts = urlsplit(base)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise SettingsError(var, f"account {name}: base_url must look like https://host[:port]")
    rate_text = text("rate_limit")
    rate = (
        parse_rate(f"{var}: account {name}: rate_limit", rate_text) if rate_text else Rate(200, 60)
    )
    tokens = words("callback_tokens") or ()
    if not tokens:
        raise SettingsError(
            var, f"account {name}: callback_tokens is missing (the secret in its callback URL)"
        )
    for token in tokens:
        if not _TOKEN_RE.fullmatch(token):
            raise SettingsError(
                var,
                f"account {name}: each callback token must be 16 or more URL-safe characters "
                "(letters, digits, . _ ~ -)",
            )
    sinks = words("sinks")
    for url in sinks or ():
        if "://" not in url:
            raise SettingsError(var, f"account {name}: sink {mask_url(url)!r} is not a URL")
    country = (text("default_country") or out["default_country"]).upper()
    import phonenumbers

    if country not in phonenumbers.SUPPORTED_REGIONS:
        raise SettingsError(
            var, f"account {name}: default_country {country!r} is not an ISO 3166 region code"
        )
    return Account(
        name=name,
        sid=sid,
        api_key=api_key,
        api_token=api_token,
        region=region,
        base_url=base,
        rate_limit=rate,
        callback_tokens=tokens,
        sinks=sinks or out["sinks"],
        default_country=country,
    )


def _check_unique(accounts: list[Account]) -> None:
    """Names, sids and callback tokens each belong to one account."""
    names: set[str] = set()
    sids: dict[str, str] = {}
    tokens: dict[str, str] = {}
    for account in accounts:
        if account.name in names:
            raise SettingsError("EXOTEL_ACCOUNTS", f"account {account.name} is named twice")
        names.add(account.name)
        if account.sid:
            if account.sid in sids:
                raise SettingsError(
                    "EXOTEL_ACCOUNTS",
                    f"accounts {sids[account.sid]} and {account.name} have the same sid",
                )
            sids[account.sid] = account.name
        for token in account.callback_tokens:
            other = tokens.setdefault(token, account.name)
            if other != account.name:
                raise SettingsError(
                    "EXOTEL_ACCOUNTS",
                    f"accounts {other} and {account.name} share a callback token: the token "
                    "in the URL is what says whose call it is, so each needs its own",
                )
def _parse_ops(env: Mapping[str, str], out: dict[str, Any]) -> None:
    """The console's own credential and the /metrics bearer token, never a callback token."""
    tokens = {t for account in out["accounts"] for t in account.callback_tokens}
    password = _get(env, "OPS_PASSWORD")
    if password is not None:
        if len(password) < 12:
            raise SettingsError("OPS_PASSWORD", "must be 12 or more characters")
        if password in tokens:
            raise SettingsError("OPS_PASSWORD", "must not be a callback token")
    out["ops_password"] = password
    users = _get(env, "OPS_USERS_FILE")
    if users is not None:
        path = Path(users)
        if not path.is_file():
            raise SettingsError("OPS_USERS_FILE", f"{users!r} is not a readable file")
        from worker.opsusers import UsersFileError, load_users

        try:
            load_users(path)
        except UsersFileError as err:
            raise SettingsError("OPS_USERS_FILE", str(err)) from None
        out["ops_users_file"] = path
    out["ops_session_minutes"] = _number(env, "OPS_SESSION_MINUTES", 60.0, minimum=1)
    metrics = _get(env, "METRICS_TOKEN")
    if metrics is not None:
        if not re.fullmatch(r"[A-Za-z0-9._~+/=-]{16,256}", metrics):
            raise SettingsError(
                "METRICS_TOKEN", "must be 16 or more characters (letters, digits, . _ ~ + / = -)"
            )
        if metrics in tokens:
            raise SettingsError("METRICS_TOKEN", "must not be a callback token")
    out["metrics_token"] = metrics
