"""HTTP for the CRM sinks: one ``requests`` session per sink, timeouts, no redirects.

The session retries nothing itself (the pipeline owns retries); a request that
gets no answer becomes :class:`~worker.errors.TransientError` with secrets
scrubbed from its message.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import requests

from worker.errors import TransientError
from worker.redact import scrub

USER_AGENT = "exolegs (+https://github.com/exolegs/exolegs) python-requests"
CONNECT_TIMEOUT = 5.0
READ_TIMEOUT = 20.0
_HINT_CHARS = 300


# --------------------------------------------------------------------------- HTTP
class CrmHttp:
    """A ``requests`` session with timeouts whose network failures are transient.

    Secrets named at construction are scrubbed from every message it raises.
    Redirects are never followed: a CRM API that redirects is misconfigured,
    and following one could send credentials to another host.
    """

    def __init__(
        self,
        crm: str,
        *,
        secrets: Iterable[str] = (),
        timeout: tuple[float, float] = (CONNECT_TIMEOUT, READ_TIMEOUT),
    ) -> None:
        self.crm = crm
        self.secrets = [s for s in secrets if s]
        self.timeout = timeout
        self.session = requests.Session()
        self.session.headers["User-Agent"] = USER_AGENT
        self.session.headers["Accept"] = "application/json"

    def request(
        self,
        method: str,
        url: str,
        *,
        what: str,
        params: Mapping[str, str] | None = None,
        json_body: Any = None,
        form: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> requests.Response:
        """Send one request; raise TransientError when no answer came back."""
        try:
            return self.session.request(
                method,
                url,
                params=params,
                json=json_body,
                data=form,
                headers=dict(headers or {}),
                timeout=self.timeout,
                allow_redirects=False,
            )
        except requests.Timeout as err:
            raise TransientError(
                f"{self.crm} {what}: no answer within {self.timeout[1]:g} s "
                "(the write may or may not have happened); retrying with backoff"
            ) from err
        except requests.ConnectionError as err:
            raise TransientError(
                f"{self.crm} {what}: cannot connect ({self.scrub(_root_cause(err))}); "
                "retrying with backoff"
            ) from err
        except requests.RequestException as err:
            raise TransientError(
                f"{self.crm} {what}: request failed ({self.scrub(str(err))}); retrying"
            ) from err

    def scrub(self, text: str) -> str:
        return scrub(text, self.secrets)

    def hint(self, response: requests.Response) -> str:
        """The start of a response body, secrets scrubbed, for error messages."""
        text = " ".join(response.text.split())
        return self.scrub(text[:_HINT_CHARS]) or "(empty body)"

    def close(self) -> None:
        self.session.close()


def _root_cause(err: BaseException) -> str:
    """The innermost reason of a connection error, without the URL-laden wrapper text."""
    current = err
    for _ in range(10):
        args = current.args
        nested = args[0] if args and isinstance(args[0], BaseException) else None
        following = current.__cause__ or current.__context__ or nested
        if following is None:
            break
        current = following
    text = str(current)
    return text.rsplit(": ", 1)[-1][:200] if text else type(current).__name__


def response_json(response: requests.Response) -> Any:
    """The decoded JSON body, or None when the body is empty or not JSON."""
    if not response.content:
        return None
    try:
        return response.json()
    except ValueError:
        return None


def seconds_until_utc_midnight(now: datetime | None = None) -> float:
    """Seconds from ``now`` to the next 00:00 UTC (at least one second)."""
    current = now or datetime.now(UTC)
    tomorrow = (current + timedelta(days=1)).date()
    midnight = datetime(tomorrow.year, tomorrow.month, tomorrow.day, tzinfo=UTC)
    return max(1.0, (midnight - current).total_seconds())
