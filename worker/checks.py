"""``exolegs check``: the effective configuration, secrets masked, and what is wrong.

Every line printed goes through the same scrubber as the logs, so a secret
that slips into a value or an error message is still masked. Problems make
the command exit 1; notes are advice and do not.
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
from collections.abc import Mapping
from typing import TextIO

from worker.errors import SettingsError
from worker.logs import Scrubber
from worker.redact import MASK, mask_url, url_secrets
from worker.settings import Settings

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
        ("TRUSTED_PROXIES", str(s.trusted_proxies)),
        ("CALLBACK_RATE_LIMIT", str(s.callback_rate_limit) if s.callback_rate_limit else "(off)"),
        ("REDIS_URL", mask_url(s.redis_url)),
        ("SINKS", " ".join(mask_url(u) for u in s.sinks)),
        ("FETCH_DELAY_SECONDS", f"{s.fetch_delay_seconds:g}"),
        ("RETRY_BASE/MAX_SECONDS", f"{s.retry_base_seconds:g} / {s.retry_max_seconds:g}"),
        ("RETRY_MAX_ATTEMPTS", str(s.retry_max_attempts)),
        ("RETENTION_HOURS", f"{s.retention_hours:g}"),
        ("JOB_LEASE_SECONDS", f"{s.job_lease_seconds:g}"),
        ("SPOOL_DIR", str(s.spool_dir)),
        ("DEFAULT_COUNTRY", s.default_country),
        ("SENTRY_DSN", _dsn(s.sentry_dsn)),
        ("LOG_LEVEL / LOG_FORMAT", f"{s.log_level} / {s.log_format}"),
        ("PORT / WEB_CONCURRENCY", f"{s.port} / {s.web_concurrency}"),
    ]
    return rows


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


def problems(settings: Settings) -> list[str]:
    found = []
    if not settings.callback_tokens:
        found.append("CALLBACK_TOKEN: not set; the web process refuses to start without it")
    if not settings.exotel_configured:
        found.append(
            "EXOTEL_ACCOUNT_SID/EXOTEL_API_KEY/EXOTEL_API_TOKEN: not set; "
            "legs cannot be fetched (exolegs dev runs the simulator instead)"
        )
    if settings.retry_max_seconds >= 3600:
        found.append("RETRY_MAX_SECONDS: retries more than an hour apart delay records a lot")
    try:
        from worker.runtime import connect

        connect(settings.redis_url).ping()
    except Exception as err:  # noqa: BLE001
        found.append(
            f"REDIS_URL: {mask_url(settings.redis_url)} unreachable ({type(err).__name__})"
        )
    try:
        from worker.sinks.base import SinkContext
        from worker.sinks.registry import build_sinks

        build_sinks(settings.sinks, SinkContext(settings))
    except SettingsError as err:
        found.append(str(err))
    return found


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
    found = problems(settings)
    security, notes = security_findings(settings, env)
    found.extend(security)
    say()
    for note in notes:
        say(f"note: {note}")
    if not found:
        say("configuration OK")
        return 0
    for problem in found:
        say(f"problem: {problem}")
    return 1
