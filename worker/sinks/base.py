"""What a sink is: a named destination, built from one URL, that takes one record.

A sink raises :class:`~worker.errors.TransientError` (or
:class:`~worker.errors.RateLimitedError`) when a retry may succeed and
:class:`~worker.errors.PermanentError` when it cannot. Retries, the delivery
ledger, dead letters and rate limits belong to the pipeline, not to sinks.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import parse_qs, urlsplit

from worker.errors import ConfigFaultError, PermanentError
from worker.redact import mask_url

if TYPE_CHECKING:
    from redis import Redis

    from worker.settings import Rate, Settings

CallRecord = dict[str, Any]


class CheckFailed(ConfigFaultError):
    """``check()`` found problems in the destination's settings, one line each.

    Each line says what is wrong and what to change (a scope to grant, a
    field to create), so ``exolegs sinks check`` prints one row per problem.
    """

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = list(problems)


@dataclass
class SinkContext:
    """What a sink may use besides its URL: settings and the shared Redis."""

    settings: Settings
    redis: Redis | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class Sink(ABC):
    #: Entry-point name and URL scheme prefix (``webhook`` for ``webhook+https://``).
    scheme: ClassVar[str]
    #: One line for ``exolegs sinks list``: the URL form this sink takes.
    url_help: ClassVar[str] = ""
    #: True when the destination itself dedupes on call_sid (upsert, external id).
    native_idempotency: ClassVar[bool] = False
    #: Default per-sink rate limit shared by all workers, e.g. ``Rate(100, 10)``.
    default_rate_limit: ClassVar[Rate | None] = None

    def __init__(self, url: str, context: SinkContext) -> None:
        self.url = url
        self.context = context
        parts = urlsplit(url)
        self.query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        self.name = self.query.pop("name", "") or self.scheme
        self.rate_limit = self.default_rate_limit
        if "rate_limit" in self.query:
            from worker.settings import parse_rate

            self.rate_limit = parse_rate("SINKS", self.query.pop("rate_limit"))

    @property
    def display_url(self) -> str:
        return mask_url(self.url)

    @abstractmethod
    def deliver(self, record: CallRecord) -> None:
        """Write one record; raise an ExolegsError subclass on failure."""

    def lookup(self, call_sid: str) -> bool | None:
        """Does the destination already hold this call? None when it cannot tell.

        Asked only before retrying a delivery whose outcome is unknown (the
        worker died between writing and recording it), so a sink without a
        natural upsert can avoid a second copy.
        """
        return None

    def check(self) -> str:
        """One harmless call proving the sink is usable; returns what was checked."""
        return "configuration parsed"

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""

    def require(self, key: str) -> str:
        value = self.query.get(key)
        if not value:
            raise PermanentError(f"sink {self.name}: URL {self.display_url} needs ?{key}=")
        return value

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} {self.display_url}>"
