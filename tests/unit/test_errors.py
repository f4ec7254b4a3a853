from __future__ import annotations

import pytest

from worker.errors import (
    EXOTEL_CODES,
    ConfigFaultError,
    Kind,
    PermanentError,
    RateLimitedError,
    TransientError,
    exotel_error,
    http_error,
)


@pytest.mark.parametrize(
    ("status", "code", "cls", "max_attempts"),
    [
        (500, 10743, TransientError, None),
        (500, 10715, TransientError, None),
        (429, 10724, RateLimitedError, None),
        (404, 10744, TransientError, 3),
        (404, 1017, ConfigFaultError, None),
        (401, 1010, ConfigFaultError, None),
        (500, None, TransientError, None),
        (502, None, TransientError, None),
        (503, None, TransientError, None),
        (504, None, TransientError, None),
        (400, 9999, PermanentError, None),
    ],
)
def test_exotel_codes_map_through_one_table(
    status: int, code: int | None, cls: type, max_attempts: int | None
) -> None:
    err = exotel_error(status, code, None, call_sid="abc123", retry_after=None)
    assert type(err) is cls
    assert err.max_attempts == max_attempts
    assert "abc123" in err.message  # the operator learns which call
    assert err.upstream_status == status


def test_seed_table_is_complete() -> None:
    assert {
        (500, 10743),
        (500, 10715),
        (429, 10724),
        (404, 10744),
        (404, 1017),
        (401, 1010),
        (500, None),
    } <= set(EXOTEL_CODES)


def test_config_faults_tell_the_operator_what_to_check() -> None:
    assert "EXOTEL_API_KEY" in exotel_error(401, 1010, None, call_sid="x").message
    assert "EXOTEL_ACCOUNT_SID" in exotel_error(404, 1017, None, call_sid="x").message


def test_retry_after_travels_with_the_error() -> None:
    err = exotel_error(429, 10724, "slow down", call_sid="x", retry_after=2.0)
    assert err.kind is Kind.RATE_LIMITED and err.retry_after == 2.0 and err.retryable


@pytest.mark.parametrize(
    ("status", "retryable"),
    [(500, True), (503, True), (429, True), (408, True), (410, False), (400, False), (422, False)],
)
def test_sink_http_errors_classified_by_status(status: int, retryable: bool) -> None:
    assert http_error(status, "body", what="webhook").retryable is retryable
