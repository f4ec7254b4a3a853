"""One error vocabulary for the whole worker.

Every failure that crosses a boundary (Exotel, a sink, Redis) becomes one of
these, so the retry policy needs to know only four things: retry it, retry it
after the upstream's own delay, park it until an operator fixes the
configuration, or dead-letter it.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class Kind(Enum):
    TRANSIENT = "transient"  # retry with backoff
    RATE_LIMITED = "rate_limited"  # retry after the upstream's delay, slow everyone down
    CONFIG = "config"  # our credentials or account are wrong: park, alert, probe
    PERMANENT = "permanent"  # retrying cannot help: dead-letter


class ExolegsError(Exception):
    """Base of every error exolegs raises on purpose."""

    kind: Kind = Kind.PERMANENT

    def __init__(
        self,
        message: str,
        *,
        retry_after: float | None = None,
        max_attempts: int | None = None,
        upstream_status: int | None = None,
        upstream_code: int | str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after
        self.max_attempts = max_attempts
        self.upstream_status = upstream_status
        self.upstream_code = upstream_code

    @property
    def retryable(self) -> bool:
        return self.kind in (Kind.TRANSIENT, Kind.RATE_LIMITED)


class TransientError(ExolegsError):
    kind = Kind.TRANSIENT


class RateLimitedError(TransientError):
    kind = Kind.RATE_LIMITED


class ConfigFaultError(ExolegsError):
    kind = Kind.CONFIG


class PermanentError(ExolegsError):
    kind = Kind.PERMANENT


class SettingsError(ValueError):
    """A bad setting. The message is one line that names the variable."""

    def __init__(self, variable: str, problem: str) -> None:
        super().__init__(f"{variable}: {problem}")
        self.variable = variable


@dataclass(frozen=True)
class Rule:
    kind: Kind
    meaning: str
    action: str
    max_attempts: int | None = None


_CLASSES: dict[Kind, type[ExolegsError]] = {
    Kind.TRANSIENT: TransientError,
    Kind.RATE_LIMITED: RateLimitedError,
    Kind.CONFIG: ConfigFaultError,
    Kind.PERMANENT: PermanentError,
}

# Exotel's documented Call Legs API errors (https://developer.exotel.com/api/call-legs-beta,
# https://developer.exotel.com/api/rate-limits), keyed by
# (HTTP status, error_data.code). A code of None is the bare HTTP status.
EXOTEL_CODES: dict[tuple[int, int | None], Rule] = {
    (500, 10743): Rule(Kind.TRANSIENT, "legs not found (not ready yet)", "retrying with backoff"),
    (500, 10715): Rule(Kind.TRANSIENT, "error retrieving leg details", "retrying with backoff"),
    (429, 10724): Rule(Kind.RATE_LIMITED, "too many requests", "backing off for all workers"),
    (404, 10744): Rule(
        Kind.TRANSIENT,
        "call not found",
        "retrying a few times, then delivering the callback's record without legs",
        3,
    ),
    (404, 1017): Rule(
        Kind.CONFIG,
        "tenant not found",
        "check EXOTEL_ACCOUNT_SID and EXOTEL_REGION; calls are parked until it works",
    ),
    (401, 1010): Rule(
        Kind.CONFIG,
        "authentication failed",
        "check EXOTEL_API_KEY and EXOTEL_API_TOKEN; calls are parked until it works",
    ),
    (500, None): Rule(Kind.TRANSIENT, "Exotel server error", "retrying with backoff"),
}


def rule_for_status(status: int, code: int | None = None) -> Rule:
    """The rule for an HTTP answer: the exact code first, then by status class."""
    rule = EXOTEL_CODES.get((status, code)) or EXOTEL_CODES.get((status, None))
    if rule is not None:
        return rule
    if status == 429:
        return Rule(Kind.RATE_LIMITED, "too many requests", "backing off for all workers")
    if status in (401, 403):
        return Rule(Kind.CONFIG, "not authorised", "check the credentials")
    if status == 408 or status >= 500:
        return Rule(Kind.TRANSIENT, f"upstream error {status}", "retrying with backoff")
    return Rule(Kind.PERMANENT, f"rejected with {status}", "dead-lettering")


def exotel_error(
    status: int,
    code: int | None,
    message: str | None,
    *,
    call_sid: str | None,
    retry_after: float | None = None,
    what: str | None = None,
) -> ExolegsError:
    """Build the error for an Exotel answer, with a sentence for the operator.

    ``what`` names the request when it is not a call's legs fetch (the
    sweeper's call listing).
    """
    rule = rule_for_status(status, code)
    shown = f"{status}/{code}" if code is not None else str(status)
    text = (
        f"{what or f'Exotel legs fetch for call {call_sid}'} failed with {shown} "
        f"({message or rule.meaning}): {rule.action}"
    )
    return _CLASSES[rule.kind](
        text,
        retry_after=retry_after,
        max_attempts=rule.max_attempts,
        upstream_status=status,
        upstream_code=code,
    )


def http_error(
    status: int, body_hint: str, *, what: str, retry_after: float | None = None
) -> ExolegsError:
    """Classify a non-Exotel HTTP answer (sinks) by status alone."""
    rule = rule_for_status(status)
    if status == 410:
        rule = Rule(Kind.PERMANENT, "gone", "dead-lettering")
    return _CLASSES[rule.kind](
        f"{what} answered {status}: {body_hint}"[:500],
        retry_after=retry_after,
        upstream_status=status,
    )


class Deferred(Exception):
    """Not a failure: the job must wait (for a rate-limit slot or a circuit probe)."""

    def __init__(self, delay: float, reason: str) -> None:
        super().__init__(reason)
        self.delay = delay
        self.reason = reason
