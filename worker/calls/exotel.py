"""The Exotel v3 Call Legs API client.

One pooled :class:`requests.Session` per process, HTTP Basic auth, explicit
(connect, read) timeouts, and every failure turned into the error vocabulary
of :mod:`worker.errors`, so the retry policy never looks at HTTP itself:

* an error answer (v3 ``error_data`` envelope, v1 ``RestException`` envelope,
  or any non-JSON body such as a proxy's HTML 502) goes through
  :func:`worker.errors.exotel_error`, with ``Retry-After`` (or, failing that,
  ``X-RateLimit-Reset``) as ``retry_after``;
* a network error or timeout is a :class:`TransientError` naming the call and
  the host;
* a 200 whose body is not the success envelope is a :class:`TransientError`
  (an Exotel glitch, worth another try).

Credentials travel only in the ``Authorization`` header; they are never part
of a URL or of an error message.
"""

from __future__ import annotations

import email.utils
import math
import time
from dataclasses import dataclass
from datetime import UTC
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import requests
from requests.adapters import HTTPAdapter
from requests.auth import HTTPBasicAuth

from worker.errors import (
    ConfigFaultError,
    PermanentError,
    RateLimitedError,
    TransientError,
    exotel_error,
)
from worker.redact import scrub
from worker.settings import CALL_SID_RE, Settings

#: Connections kept open to Exotel per host; sized for a threaded worker.
POOL_SIZE = 32
#: The connect timeout never exceeds this, however long reads may take.
MAX_CONNECT_TIMEOUT = 5.0
USER_AGENT = "exolegs/0.1 (+requests)"
#: Upstream error text copied into our messages is cut to this length.
_HINT_CHARS = 200
#: ``X-RateLimit-Reset`` values above this are epoch seconds, not a delta.
_EPOCH_THRESHOLD = 1_000_000_000.0

NOT_CONFIGURED = (
    "EXOTEL_ACCOUNT_SID/EXOTEL_API_KEY/EXOTEL_API_TOKEN are not set: legs cannot be "
    "fetched until they are (calls are parked, not lost)"
)


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` value: delta-seconds or an HTTP-date.

    Returns ``None`` for a missing or unparseable value; a date in the past is
    ``0.0``. ``now`` (Unix time) is for tests.
    """
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        if math.isfinite(seconds) and seconds >= 0:
            return seconds
        return None
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # RFC 9110 dates are GMT; tolerate a missing zone
        when = when.replace(tzinfo=UTC)
    current = time.time() if now is None else now
    return max(0.0, when.timestamp() - current)


def server_now(headers: Any) -> float | None:
    """The answering server's clock (its ``Date`` header), to read a dated ``Retry-After`` by.

    A date in ``Retry-After`` (or an epoch ``X-RateLimit-Reset``) is a time
    on the server's clock; measured against it, the wait is right however
    far off this host's clock is.
    """
    value = headers.get("Date") if headers is not None else None
    if not value:
        return None
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


def _parse_rate_limit_reset(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from ``X-RateLimit-Reset`` (unconfirmed header, so tolerant).

    Accepts delta seconds, Unix epoch seconds or milliseconds, or an HTTP-date.
    """
    if value is None or not value.strip():
        return None
    try:
        number = float(value.strip())
    except ValueError:
        return parse_retry_after(value, now)
    if not math.isfinite(number) or number < 0:
        return None
    if number < _EPOCH_THRESHOLD:
        return number
    if number > _EPOCH_THRESHOLD * 1000:  # epoch milliseconds
        number /= 1000.0
    current = time.time() if now is None else now
    return max(0.0, number - current)


def _as_code(value: object) -> int | None:
    """Exotel's ``error_data.code`` as an int (it is documented as one)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return None


def _as_status(value: object) -> int | None:
    code = _as_code(value)
    return code if code is not None and 100 <= code <= 599 else None


def _is_success_envelope(body: object) -> bool:
    """True for ``{"response": {"status": "success", "leg_details": {"from": [...], ...}}}``."""
    if not isinstance(body, dict):
        return False
    response = body.get("response")
    if not isinstance(response, dict):
        return False
    status = response.get("status")
    if status is not None and str(status).lower() != "success":
        return False
    if response.get("error_data"):
        return False
    details = response.get("leg_details")
    if not isinstance(details, dict):
        return False
    sides = [details.get("from"), details.get("to")]
    if any(side is not None and not isinstance(side, list) for side in sides):
        return False
    return any(isinstance(side, list) for side in sides)


def _error_fields(body: object) -> tuple[int | None, int | None, str | None]:
    """(status from the envelope, error code, message) from any known error envelope."""
    if not isinstance(body, dict):
        return None, None, None
    # v3: {"http_code": 401, "response": {"code": 401, "error_data": {...}, "status": "failure"}}
    response = body.get("response")
    if isinstance(response, dict):
        status = _as_status(body.get("http_code")) or _as_status(response.get("code"))
        data = response.get("error_data")
        if isinstance(data, dict):
            message = data.get("message") or data.get("description")
            return status, _as_code(data.get("code")), str(message) if message else None
        if str(response.get("status", "")).lower() == "failure":
            return status, None, None
    # v1: {"RestException": {"Status": 429, "Message": "...", "Code": "RATE_LIMIT_EXCEEDED"}}
    rest = body.get("RestException")
    if isinstance(rest, dict):
        code_value = rest.get("Code")
        code = _as_code(code_value)
        message = rest.get("Message")
        text = str(message) if message else None
        if code is None and code_value:
            text = f"{text} [{code_value}]" if text else str(code_value)
        return _as_status(rest.get("Status")), code, text
    # Anything else that looks like an error.
    for key in ("message", "error", "detail"):
        value = body.get(key)
        if isinstance(value, str) and value:
            return _as_status(body.get("http_code") or body.get("status")), None, value
    return None, None, None


class ExotelClient:
    """Fetches one call's legs from ``GET {base}/v3/accounts/<sid>/calls/<call_sid>/legs``.

    Thread-safe for concurrent :meth:`fetch_legs` calls (one pooled session).
    """

    def __init__(self, settings: Settings, session: requests.Session | None = None) -> None:
        self.settings = settings
        self._owns_session = session is None
        if session is None:
            session = requests.Session()
            adapter = HTTPAdapter(pool_connections=4, pool_maxsize=POOL_SIZE, max_retries=0)
            session.mount("https://", adapter)
            session.mount("http://", adapter)
            # Read HTTPS_PROXY/NO_PROXY once here, not on every request.
            session.proxies.update(requests.utils.get_environ_proxies(settings.exotel_url))
            session.trust_env = False
        self.session = session
        self._auth: HTTPBasicAuth | None = None
        if settings.exotel_api_key and settings.exotel_api_token:
            self._auth = HTTPBasicAuth(settings.exotel_api_key, settings.exotel_api_token)
        read = float(settings.exotel_timeout_seconds)
        self.timeout: tuple[float, float] = (min(read, MAX_CONNECT_TIMEOUT), read)
        self._base, self.host = _split_base(settings.exotel_url)
        self._v1_base, self._v1_host = _split_base(settings.exotel_v1_url)
        self._headers = {"Accept": "application/json", "User-Agent": USER_AGENT}
        # The legs GET, prepared once (session headers, auth); each fetch copies it.
        self._legs_request = self.session.prepare_request(
            requests.Request("GET", f"{self._base}/", auth=self._auth, headers=self._headers)
        )

    # ----------------------------------------------------------------- API
    def legs_url(self, call_sid: str) -> str:
        """The legs URL for ``call_sid``; :class:`PermanentError` for a malformed sid."""
        _check_call_sid(call_sid)
        account = self.settings.exotel_account_sid
        if not account:
            raise ConfigFaultError(NOT_CONFIGURED)
        return (
            f"{self._base}/v3/accounts/{quote(account, safe='')}"
            f"/calls/{quote(call_sid, safe='')}/legs"
        )

    def fetch_legs(self, call_sid: str) -> dict[str, Any]:
        """The full parsed success body for ``call_sid``, or an :class:`ExolegsError`."""
        _check_call_sid(call_sid)
        if not self.settings.exotel_configured or self._auth is None:
            raise ConfigFaultError(NOT_CONFIGURED)
        url = self.legs_url(call_sid)
        try:
            answer = self._send_legs_get(url)
        except requests.Timeout as err:
            raise TransientError(
                f"Exotel legs fetch for call {call_sid} timed out talking to {self.host} "
                f"(connect {self.timeout[0]:g}s, read {self.timeout[1]:g}s; "
                f"{type(err).__name__}): retrying with backoff"
            ) from err
        except requests.RequestException as err:
            raise TransientError(
                f"Exotel legs fetch for call {call_sid} could not reach {self.host} "
                f"({type(err).__name__}: {self._scrub(str(err))[:_HINT_CHARS]}): "
                "retrying with backoff"
            ) from err
        try:
            return self._handle(call_sid, answer)
        finally:
            answer.close()

    def _send_legs_get(self, url: str) -> requests.Response:
        """The legs GET through the session's adapter, body read, no redirect followed.

        ``Session.get`` would rebuild and merge the same request each time and
        keep cookie and redirect bookkeeping this API never uses: about a
        third of the client's CPU per fetch, measured with ``bench/worker.py``.
        The URL is built from parts already checked (the base URL, a sid of
        ``[A-Za-z0-9_-]``), so it needs no re-preparing.
        """
        request = self._legs_request.copy()
        request.url = url
        adapter = self.session.get_adapter(url)
        answer = adapter.send(
            request,
            stream=False,
            timeout=self.timeout,
            verify=True if self.session.verify is None else self.session.verify,
            cert=self.session.cert,
            proxies=self.session.proxies,
        )
        _ = answer.content  # read it all now, as a non-streaming Session.get would
        return answer

    #: A call sid no account has: asking for its legs proves the credentials harmlessly.
    CHECK_CALL_SID = "exolegs-check-0"

    def check(self) -> str:
        """One harmless authenticated request: the legs of a call that does not exist.

        Exotel answers 404/10744 (call not found) only once the key, token and
        account sid are accepted; 401/1010 and 404/1017 come back as a
        :class:`ConfigFaultError`, a network failure as a :class:`TransientError`.
        Returns what was proven.
        """
        try:
            self.fetch_legs(self.CHECK_CALL_SID)
        except ConfigFaultError:
            raise
        except RateLimitedError:
            return f"credentials accepted by {self.host} (it answered 429: rate limited just now)"
        except TransientError as err:
            if err.upstream_code != 10744:
                raise
        return f"credentials accepted by {self.host} (legs of a made-up call: 404/10744)"

    def calls_url(self) -> str:
        """The v1 Bulk Call Details URL: ``{v1 host}/v1/Accounts/<sid>/Calls.json``."""
        account = self.settings.exotel_account_sid
        if not account:
            raise ConfigFaultError(NOT_CONFIGURED)
        return f"{self._v1_base}/v1/Accounts/{quote(account, safe='')}/Calls.json"

    def list_calls(
        self, since: str, until: str, *, page_uri: str | None = None, page_size: int = 100
    ) -> CallsPage:
        """One page of the account's calls created between two IST times (``YYYY-MM-DD HH:MM:SS``).

        The first page is asked with ``DateCreated=gte:…;lte:…``,
        ``SortBy=DateCreated:asc`` and ``PageSize``; later ones by the
        relative ``NextPageUri`` Exotel returned (it carries the cursor), on
        the same host (https://developer.exotel.com/api/call-details, bulk).
        """
        if not self.settings.exotel_configured or self._auth is None:
            raise ConfigFaultError(NOT_CONFIGURED)
        what = "Exotel call listing"
        if page_uri:
            if not page_uri.startswith("/v1/"):
                raise PermanentError(f"{what}: NextPageUri {page_uri[:80]!r} is not a /v1/ path")
            url, params = f"{self._v1_base}{page_uri}", None
        else:
            url = self.calls_url()
            params = {
                "DateCreated": f"gte:{since};lte:{until}",
                "SortBy": "DateCreated:asc",
                "PageSize": str(max(1, min(100, page_size))),
            }
        try:
            answer = self.session.get(
                url,
                params=params,
                auth=self._auth,
                headers=self._headers,
                timeout=self.timeout,
                allow_redirects=False,
            )
        except requests.RequestException as err:
            raise TransientError(
                f"{what} ({since} to {until}) could not reach {self._v1_host} "
                f"({type(err).__name__}): retrying on the next sweep"
            ) from err
        try:
            status = answer.status_code
            try:
                body: Any = answer.json()
            except ValueError:
                body = None
            if (
                200 <= status < 300
                and isinstance(body, dict)
                and isinstance(body.get("Calls"), list)
            ):
                meta = body.get("Metadata") if isinstance(body.get("Metadata"), dict) else {}
                next_uri = meta.get("NextPageUri") if isinstance(meta, dict) else None
                return CallsPage(
                    calls=[c for c in body["Calls"] if isinstance(c, dict)],
                    next_uri=next_uri if isinstance(next_uri, str) and next_uri else None,
                    total=_as_code(meta.get("Total")) if isinstance(meta, dict) else None,
                )
            if 200 <= status < 300:
                raise TransientError(
                    f"{what} got {status} without a Calls list from {self._v1_host} "
                    f"({self._content_type(answer)}): retrying on the next sweep",
                    upstream_status=status,
                )
            _env_status, code, message = _error_fields(body)
            raise exotel_error(
                status,
                code,
                self._hint(message or answer.reason or None),
                call_sid=None,
                retry_after=self._retry_after(answer, status),
                what=f"{what} ({since} to {until})",
            )
        finally:
            answer.close()

    def close(self) -> None:
        """Release pooled connections (only of a session this client created)."""
        if self._owns_session:
            self.session.close()

    def __enter__(self) -> ExotelClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------ private
    def _handle(self, call_sid: str, answer: requests.Response) -> dict[str, Any]:
        status = answer.status_code
        try:
            body: Any = answer.json()
            parsed = True
        except ValueError:  # requests.JSONDecodeError, UnicodeDecodeError
            body, parsed = None, False

        if 200 <= status < 300:
            if parsed and _is_success_envelope(body):
                return dict(body)
            env_status, code, message = _error_fields(body)
            if env_status is not None and env_status >= 400:
                # A 200 carrying a failure envelope: trust the envelope.
                raise exotel_error(
                    env_status,
                    code,
                    self._hint(message),
                    call_sid=call_sid,
                    retry_after=self._retry_after(answer, env_status),
                )
            what = "a non-JSON body" if not parsed else "a body that is not the success envelope"
            raise TransientError(
                f"Exotel legs fetch for call {call_sid} got {status} with {what} "
                f"from {self.host} ({self._content_type(answer)}): retrying with backoff",
                upstream_status=status,
            )

        if 300 <= status < 400:
            target = urlsplit(answer.headers.get("Location", "")).hostname or "elsewhere"
            raise ConfigFaultError(
                f"Exotel legs fetch for call {call_sid}: {self.host} redirected ({status}) "
                f"to {target}; check EXOTEL_REGION and EXOTEL_BASE_URL",
                upstream_status=status,
            )

        _env_status, code, message = _error_fields(body) if parsed else (None, None, None)
        if not parsed:
            message = f"non-JSON {self._content_type(answer)} answer from {self.host}"
        elif message is None and code is None:
            message = answer.reason or None
        raise exotel_error(
            status,
            code,
            self._hint(message),
            call_sid=call_sid,
            retry_after=self._retry_after(answer, status),
        )

    @staticmethod
    def _retry_after(answer: requests.Response, status: int) -> float | None:
        now = server_now(answer.headers) or time.time()
        delay = parse_retry_after(answer.headers.get("Retry-After"), now)
        if delay is None and status == 429:
            delay = _parse_rate_limit_reset(answer.headers.get("X-RateLimit-Reset"), now)
        return delay

    @staticmethod
    def _content_type(answer: requests.Response) -> str:
        ctype = answer.headers.get("Content-Type", "").split(";")[0].strip()
        return ctype or "no content type"

    def _hint(self, message: str | None) -> str | None:
        if not message:
            return None
        text = " ".join(self._scrub(message).split())
        return text[:_HINT_CHARS] or None

    def _scrub(self, text: str) -> str:
        secrets = self.settings.secrets()
        if self.settings.exotel_api_key and len(self.settings.exotel_api_key) >= 4:
            secrets.append(self.settings.exotel_api_key)
        return scrub(text, secrets)


@dataclass(frozen=True)
class CallsPage:
    """One page of Bulk Call Details: its calls, and the relative URI of the next page."""

    calls: list[dict[str, Any]]
    next_uri: str | None
    total: int | None = None


def _check_call_sid(call_sid: str) -> None:
    if not isinstance(call_sid, str) or not CALL_SID_RE.fullmatch(call_sid):
        shown = repr(call_sid)[:80]
        raise PermanentError(
            f"refusing to fetch legs for malformed call sid {shown}: "
            "a call sid is 1-64 letters, digits, '_' or '-'"
        )


def _split_base(base_url: str) -> tuple[str, str]:
    """(base URL without any userinfo, host[:port] to name in messages)."""
    parts = urlsplit(base_url)
    host = parts.hostname or "exotel"
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    base = urlunsplit((parts.scheme, host, parts.path.rstrip("/"), "", ""))
    return base, host
