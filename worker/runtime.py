"""What a process needs at run time, built once from Settings and then shared."""

from __future__ import annotations

import ssl
from concurrent.futures import ThreadPoolExecutor
from functools import cached_property
from typing import TYPE_CHECKING, Any

import redis

from worker.calls.intake import STORED_OVERHEAD_BYTES, Intake
from worker.jobs import JobBook
from worker.jobs.circuit import Circuit
from worker.jobs.deadletters import DeadLetters
from worker.jobs.heartbeat import Heartbeat
from worker.jobs.ratelimit import RateLimiter
from worker.settings import Account, Settings

if TYPE_CHECKING:
    from worker.calls.exotel import ExotelClient
    from worker.sinks.base import Sink


def redis_tls_options(settings: Settings) -> dict[str, Any]:
    """The certificate checks for a ``rediss://`` URL: verified unless turned off.

    Off only with ``REDIS_TLS_VERIFY=false`` or on Heroku, whose Redis presents
    a self-signed certificate (https://devcenter.heroku.com/articles/connecting-heroku-redis);
    ``REDIS_TLS_CA_FILE`` names a CA bundle for a private CA.
    """
    if not settings.redis_url.startswith("rediss://"):
        return {}
    if not settings.redis_tls_verify:
        return {"ssl_cert_reqs": ssl.CERT_NONE, "ssl_check_hostname": False}
    options: dict[str, Any] = {"ssl_cert_reqs": ssl.CERT_REQUIRED, "ssl_check_hostname": True}
    if settings.redis_tls_ca_file is not None:
        options["ssl_ca_certs"] = str(settings.redis_tls_ca_file)
    return options


def connect(target: Settings | str, **extra: Any) -> redis.Redis:
    """A client for ``target``'s Redis (a bare URL gets the default, verifying TLS)."""
    settings = target if isinstance(target, Settings) else Settings(redis_url=target)
    return redis.Redis.from_url(
        settings.redis_url,
        socket_connect_timeout=2,
        socket_timeout=5,
        health_check_interval=30,
        **redis_tls_options(settings),
        **extra,
    )


class Runtime:
    def __init__(self, settings: Settings, *, client: redis.Redis | None = None) -> None:
        self.settings = settings
        self._client = client

    @cached_property
    def redis(self) -> redis.Redis:
        return self._client or connect(self.settings)

    @cached_property
    def book(self) -> JobBook:
        return JobBook(
            self.redis,
            lease_seconds=self.settings.job_lease_seconds,
            sink_concurrency=self.settings.sink_concurrency,
        )

    @cached_property
    def heartbeat(self) -> Heartbeat:
        return Heartbeat(self.book)

    @cached_property
    def limiter(self) -> RateLimiter:
        return RateLimiter(self.redis)

    @cached_property
    def dead(self) -> DeadLetters:
        return DeadLetters(
            self.redis, self.book, retention_seconds=self.settings.retention_seconds
        )

    @cached_property
    def intake(self) -> Intake:
        return Intake(
            self.redis,
            retention_seconds=self.settings.retention_seconds,
            fetch_delay=self.settings.fetch_delay_seconds,
            max_events=self.settings.callback_max_events,
            max_stored_bytes=self.settings.max_body_bytes + STORED_OVERHEAD_BYTES,
        )

    # ------------------------------------------------------------ accounts
    @cached_property
    def accounts(self) -> dict[str, Account]:
        """Every configured account by name; the first is the one commands use by default."""
        return {a.name: a for a in self.settings.all_accounts}

    @property
    def first_account(self) -> str:
        return next(iter(self.accounts))

    def account(self, name: str) -> Account:
        """The account ``name``; SettingsError (naming the configured ones) if there is none."""
        found = self.accounts.get(name)
        return found if found is not None else self.settings.account(name)

    def exotel_for(self, account: str) -> ExotelClient:
        """The Exotel client holding one account's credentials (one pooled session each)."""
        from worker.calls.exotel import ExotelClient

        client = self._exotel.get(account)
        if client is None:
            made = ExotelClient(self.settings.for_account(self.account(account)))
            client = self._exotel.setdefault(account, made)
            if client is not made:  # another thread made one first
                made.close()
        return client

    @cached_property
    def _exotel(self) -> dict[str, ExotelClient]:
        return {}

    @property
    def exotel(self) -> ExotelClient:
        return self.exotel_for(self.first_account)

    @property
    def exotel_limit_name(self) -> str:
        return self.account(self.first_account).limit_name

    def circuit(self, name: str) -> Circuit:
        """The configuration-fault circuit of an upstream (``exotel:<sid>``, ``sink:<name>``)."""
        return Circuit(self.redis, name, probe_interval=self.settings.circuit_probe_seconds)

    @cached_property
    def _sinks(self) -> tuple[dict[str, Sink], dict[str, tuple[str, ...]]]:
        from worker.sinks.registry import build_account_sinks

        return build_account_sinks(self.settings, self.redis)

    @property
    def sinks(self) -> dict[str, Sink]:
        """Every sink of every account, by name (a sink several accounts share is one)."""
        return self._sinks[0]

    def sinks_of(self, account: str) -> dict[str, Sink]:
        """The sinks one account delivers to."""
        names = self._sinks[1].get(self.account(account).name, ())
        return {name: self.sinks[name] for name in names}

    @cached_property
    def fetch_threads(self) -> ThreadPoolExecutor:
        """Threads for one batch's legs fetches, FETCH_CONCURRENCY at a time (made on first use)."""
        return ThreadPoolExecutor(
            self.settings.fetch_concurrency, thread_name_prefix="exolegs-fetch"
        )

    def close(self) -> None:
        if "fetch_threads" in self.__dict__:
            self.fetch_threads.shutdown(wait=True)
        if "_sinks" in self.__dict__:
            for sink in self.sinks.values():
                sink.close()
        if "_exotel" in self.__dict__:
            for client in self._exotel.values():
                client.close()
