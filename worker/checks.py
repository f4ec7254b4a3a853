"""``exolegs check``: the effective configuration, secrets masked, and what is wrong."""

from __future__ import annotations

import sys

from worker.errors import SettingsError
from worker.redact import MASK, mask_url
from worker.settings import Settings


def describe(settings: Settings) -> list[tuple[str, str]]:
    s = settings
    rows = [
        ("EXOTEL_ACCOUNT_SID", s.exotel_account_sid or "(not set)"),
        ("EXOTEL_API_KEY", s.exotel_api_key or "(not set)"),
        ("EXOTEL_API_TOKEN", MASK if s.exotel_api_token else "(not set)"),
        ("EXOTEL_REGION", s.exotel_region),
        ("Exotel API", s.exotel_url),
        ("EXOTEL_RATE_LIMIT", str(s.exotel_rate_limit)),
        (
            "CALLBACK_TOKEN",
            f"{len(s.callback_tokens)} token(s) {MASK}" if s.callback_tokens else "(not set)",
        ),
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
        ("SENTRY_DSN", MASK if s.sentry_dsn else "(off)"),
        ("LOG_LEVEL / LOG_FORMAT", f"{s.log_level} / {s.log_format}"),
        ("PORT / WEB_CONCURRENCY", f"{s.port} / {s.web_concurrency}"),
    ]
    return rows


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


def run_check() -> int:
    settings = Settings.from_env()
    width = max(len(k) for k, _ in describe(settings))
    for key, value in describe(settings):
        print(f"{key:{width}}  {value}")
    found = problems(settings)
    print()
    if not found:
        print("configuration OK")
        return 0
    for problem in found:
        print(f"problem: {problem}", file=sys.stdout)
    return 1
