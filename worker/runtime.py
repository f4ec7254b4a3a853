"""What a process needs at run time, built once from Settings and then shared."""

from __future__ import annotations

import ssl
from functools import cached_property
from typing import TYPE_CHECKING, Any

import redis

from worker.calls.intake import Intake
from worker.jobs import JobBook
from worker.jobs.circuit import Circuit
from worker.jobs.deadletters import DeadLetters
from worker.jobs.ratelimit import RateLimiter
from worker.settings import Settings

if TYPE_CHECKING:
    from worker.calls.exotel import ExotelClient
    from worker.sinks.base import Sink


def redis_options(url: str) -> dict[str, Any]:
    """Heroku Redis speaks TLS with a self-signed certificate."""
    if url.startswith("rediss://") and "ssl_cert_reqs" not in url:
        return {"ssl_cert_reqs": ssl.CERT_NONE}
    return {}


def connect(url: str, **extra: Any) -> redis.Redis:
    return redis.Redis.from_url(
        url,
        socket_connect_timeout=2,
        socket_timeout=5,
        health_check_interval=30,
        **redis_options(url),
        **extra,
    )


class Runtime:
    def __init__(self, settings: Settings, *, client: redis.Redis | None = None) -> None:
        self.settings = settings
        self._client = client

    @cached_property
    def redis(self) -> redis.Redis:
        return self._client or connect(self.settings.redis_url)

    @cached_property
    def book(self) -> JobBook:
        return JobBook(self.redis, lease_seconds=self.settings.job_lease_seconds)

    @cached_property
    def limiter(self) -> RateLimiter:
        return RateLimiter(self.redis)

    @cached_property
    def dead(self) -> DeadLetters:
        return DeadLetters(self.redis, self.book)

    @cached_property
    def intake(self) -> Intake:
        return Intake(
            self.redis,
            retention_seconds=self.settings.retention_seconds,
            fetch_delay=self.settings.fetch_delay_seconds,
        )

    @cached_property
    def exotel(self) -> ExotelClient:
        from worker.calls.exotel import ExotelClient

        return ExotelClient(self.settings)

    @property
    def exotel_limit_name(self) -> str:
        return f"exotel:{self.settings.exotel_account_sid or 'unconfigured'}"

    def circuit(self, name: str) -> Circuit:
        """The configuration-fault circuit of an upstream (``exotel:<sid>``, ``sink:<name>``)."""
        return Circuit(self.redis, name, probe_interval=self.settings.circuit_probe_seconds)

    @cached_property
    def sinks(self) -> dict[str, Sink]:
        from worker.sinks.base import SinkContext
        from worker.sinks.registry import build_sinks

        return build_sinks(self.settings.sinks, SinkContext(self.settings, self.redis))

    def close(self) -> None:
        if "sinks" in self.__dict__:
            for sink in self.sinks.values():
                sink.close()
        if "exotel" in self.__dict__:
            self.exotel.close()
