"""What the CRM sinks (HubSpot, Zoho, Salesforce, LeadSquared) share.

- :class:`CrmHttp`: one ``requests`` session per sink with timeouts, no
  redirects and no retries of its own (the pipeline owns retries); network
  failures become :class:`~worker.errors.TransientError` with secrets scrubbed.
- :class:`AgentDirectory`: the optional ``?agents=/path/agents.json`` (or
  ``.csv``) file that maps an Exotel agent (phone number, SIP URI or Exotel
  user name) to the CRM user who should own the call activity.
- Phone formats for contact lookups, the Exotel status -> CRM value table,
  duration and time formats, and a one-paragraph leg summary;
  ``parse_retry_after`` is :func:`worker.calls.exotel.parse_retry_after`.
- :func:`get_token`: an OAuth access token cached in Redis and shared by every
  worker, minted by one worker at a time under a Redis lock.
"""

from __future__ import annotations

import csv
import hashlib
import html
import io
import json
import logging
import os
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import phonenumbers
import requests

from worker import keys
from worker.calls.enrich import to_e164
from worker.calls.exotel import parse_retry_after as parse_retry_after  # re-exported for the sinks
from worker.errors import (
    ConfigFaultError,
    ExolegsError,
    RateLimitedError,
    SettingsError,
    TransientError,
)
from worker.redact import scrub
from worker.sinks.base import CallRecord, Sink, SinkContext

if TYPE_CHECKING:
    from redis import Redis

log = logging.getLogger(__name__)

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


# ------------------------------------------------------------------ base sink
class CrmSink(Sink):
    """Common construction for the CRM sinks: HTTP session, agents file, recordings."""

    #: Human name used in every message ("HubSpot", "Zoho CRM"...).
    crm: ClassVar[str] = "CRM"

    def __init__(self, url: str, context: SinkContext) -> None:
        super().__init__(url, context)
        self.default_country = context.settings.default_country
        self.agents = AgentDirectory.from_query(self.query, self.default_country, self.crm)
        self.include_recordings = _flag("recordings", self.query.get("recordings"), default=True)
        self.http = CrmHttp(self.crm, secrets=self.url_secrets())

    def url_secrets(self) -> list[str]:
        """Values in this sink's URL that must never be shown."""
        found = []
        for name, value in self.query.items():
            if re.search(r"token|secret|key|password", name, re.IGNORECASE) and value:
                found.append(value)
        return found

    def owner_id(self, record: CallRecord) -> str | None:
        return self.agents.owner_for(record) if self.agents else None

    def recording(self, record: CallRecord) -> str | None:
        url = record.get("recording_url")
        if not self.include_recordings or not isinstance(url, str) or not url.strip():
            return None
        return url.strip()

    def close(self) -> None:
        self.http.close()


def _flag(name: str, value: str | None, *, default: bool) -> bool:
    if value is None or value == "":
        return default
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise SettingsError("SINKS", f"{name}= takes true or false, not {value!r}")


# ------------------------------------------------------------ agents -> users
def normalise_agent_key(value: str, default_country: str) -> str | None:
    """The lookup key for an agent: E.164, a lowercased SIP address, or a name.

    ``sip:Alice@Acme.sip.exotel.com`` and ``alice@acme.sip.exotel.com`` give the
    same key; ``09876543210``, ``+91 98765 43210`` and ``+919876543210`` give
    ``+919876543210`` (with IN as the default country); anything else is an
    Exotel user name, compared case-insensitively with whitespace collapsed.
    """
    text = value.strip()
    if not text:
        return None
    lowered = text.lower()
    if lowered.startswith(("sip:", "sips:")):
        return "sip:" + lowered.split(":", 1)[1]
    if "@" in text:
        return "sip:" + lowered
    number = to_e164(text, default_country)
    if number is not None:
        return number
    return "name:" + " ".join(text.split()).casefold()


class AgentDirectory:
    """Who in the CRM owns a call: agent contact_uri or Exotel user name -> CRM user id.

    The file is named by ``?agents=`` in the sink URL and is either a JSON
    object (``{"+919876543210": "123", "sip:asha@acme.sip.exotel.com": "456",
    "Sanjay Mishra": "789"}``) or a CSV of ``contact_uri,crm_user_id`` rows (a
    header row and ``#`` comments are allowed). It is re-read when its
    modification time changes; a file broken by an edit keeps the last good
    mapping (and logs why).
    """

    def __init__(self, path: Path, default_country: str, crm: str = "CRM") -> None:
        self.path = path
        self.default_country = default_country
        self.crm = crm
        self._lock = threading.Lock()
        self._mtime = self._stat()
        self.mapping = self._load()

    @classmethod
    def from_query(
        cls, query: Mapping[str, str], default_country: str, crm: str = "CRM"
    ) -> AgentDirectory | None:
        raw = query.get("agents")
        if not raw:
            return None
        return cls(Path(raw).expanduser(), default_country, crm)

    def _stat(self) -> float:
        try:
            return self.path.stat().st_mtime
        except OSError as err:
            raise SettingsError(
                "SINKS", f"{self.crm} agents file {self.path} cannot be read: {err.strerror}"
            ) from err

    def _load(self) -> dict[str, str]:
        try:
            text = self.path.read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError) as err:
            raise SettingsError(
                "SINKS", f"{self.crm} agents file {self.path} cannot be read: {err}"
            ) from err
        pairs = _parse_agents_text(text, self.path)
        mapping: dict[str, str] = {}
        for key, user in pairs:
            normal = normalise_agent_key(key, self.default_country)
            if normal is None or not user:
                raise SettingsError(
                    "SINKS", f"{self.crm} agents file {self.path}: empty agent or user in {key!r}"
                )
            mapping[normal] = user
        return mapping

    def _refresh(self) -> None:
        try:
            mtime = self.path.stat().st_mtime
        except OSError as err:
            log.warning("agents file %s unreadable (%s); keeping the last mapping", self.path, err)
            return
        if mtime == self._mtime:
            return
        with self._lock:
            if mtime == self._mtime:
                return
            try:
                self.mapping = self._load()
            except SettingsError as err:
                log.warning("%s; keeping the last good mapping", err)
            self._mtime = mtime

    def user_for(self, value: str | None) -> str | None:
        if not value:
            return None
        key = normalise_agent_key(value, self.default_country)
        return self.mapping.get(key) if key else None

    def owner_for(self, record: CallRecord) -> str | None:
        """The CRM user of the agent who answered, else of the first agent dialled.

        The agent is matched by contact_uri (or its E.164 form), then by name.
        None when that agent is not in the file (the CRM then uses its default
        owner, usually the integration user).
        """
        self._refresh()
        agent = record.get("answered_by")
        if not isinstance(agent, Mapping):
            agents = record.get("agents") or []
            agent = agents[0] if agents and isinstance(agents[0], Mapping) else None
        if agent is None:
            return None
        for value in (agent.get("contact_uri"), _agent_e164(record, agent), agent.get("name")):
            user = self.user_for(value) if isinstance(value, str) else None
            if user:
                return user
        return None


def _agent_e164(record: CallRecord, agent: Mapping[str, Any]) -> str | None:
    for leg in _legs(record):
        if leg.get("contact_uri") == agent.get("contact_uri") and leg.get("phone_e164"):
            return str(leg["phone_e164"])
    return None


def _parse_agents_text(text: str, path: Path) -> list[tuple[str, str]]:
    stripped = text.lstrip()
    if stripped.startswith("{"):
        try:
            data = json.loads(stripped)
        except json.JSONDecodeError as err:
            raise SettingsError("SINKS", f"agents file {path} is not valid JSON: {err}") from err
        pairs = []
        for key, value in data.items():
            if isinstance(value, bool) or not isinstance(value, str | int):
                raise SettingsError(
                    "SINKS", f"agents file {path}: the user id for {key!r} must be a string"
                )
            pairs.append((str(key), str(value).strip()))
        return pairs
    if stripped.startswith("["):
        raise SettingsError(
            "SINKS", f"agents file {path}: expected a JSON object {{agent: crm_user_id}}"
        )
    pairs = []
    rows = csv.reader(io.StringIO(text))
    for number, row in enumerate(rows, start=1):
        cells = [cell.strip() for cell in row]
        if not any(cells) or cells[0].startswith("#"):
            continue
        if len(cells) != 2:
            raise SettingsError(
                "SINKS",
                f"agents file {path} line {number}: expected 'contact_uri,crm_user_id'",
            )
        if number == 1 and cells[1].lower() in ("crm_user_id", "user_id", "owner_id"):
            continue  # header row
        pairs.append((cells[0], cells[1]))
    return pairs


# --------------------------------------------------------------------- phones


@dataclass(frozen=True)
class PhoneFormats:
    """One number written the ways CRM users type it (phone fields are free text)."""

    e164: str  # +919876543210
    national: str  # 9876543210
    trunk: str  # 09876543210 (national with the trunk prefix, where the country has one)
    digits: str  # 919876543210
    country_code: int

    def variants(self) -> list[str]:
        """Every distinct form, most specific first."""
        out: list[str] = []
        for value in (self.e164, self.national, self.trunk, self.digits):
            if value and value not in out:
                out.append(value)
        return out

    @property
    def dashed(self) -> str:
        """``+91-9876543210``: the form LeadSquared documents and stores."""
        return f"+{self.country_code}-{self.national}"


def phone_formats(text: str | None, default_country: str) -> PhoneFormats | None:
    e164 = to_e164(text, default_country)
    if e164 is None:
        return None
    number = phonenumbers.parse(e164, None)
    national = str(phonenumbers.national_significant_number(number))
    in_national_format = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.NATIONAL)
    trunk = re.sub(r"\D", "", in_national_format)
    return PhoneFormats(
        e164=e164,
        national=national,
        trunk=trunk,
        digits=e164.lstrip("+"),
        country_code=int(number.country_code or 0),
    )


def customer_phone(record: CallRecord, default_country: str) -> PhoneFormats | None:
    """The customer's number in lookup formats; None for SIP or masked numbers."""
    customer = record.get("customer")
    if not isinstance(customer, Mapping):
        return None
    for value in (customer.get("phone_e164"), customer.get("contact_uri")):
        if isinstance(value, str):
            formats = phone_formats(value, default_country)
            if formats is not None:
                return formats
    return None


def display_number(record: CallRecord) -> str | None:
    """The ExoPhone the call used, from the callback, when it says."""
    callback = record.get("callback")
    if not isinstance(callback, Mapping):
        return None
    direction = call_direction(record)
    names = (
        ("CallTo", "To", "PhoneNumberSid", "virtual_number")
        if direction == "inbound"
        else ("PhoneNumberSid", "CallerId", "virtual_number", "From")
    )
    for name in names:
        value = callback.get(name)
        if isinstance(value, str) and value.strip() and value.strip().lower() != "null":
            return value.strip()
    return None


# ------------------------------------------------------------ status table
@dataclass(frozen=True)
class Outcome:
    """One Exotel call outcome and what each CRM calls it."""

    key: str  # completed | no-answer | busy | failed | canceled
    label: str
    answered: bool
    hubspot_status: str  # hs_call_status
    hubspot_disposition: str | None  # hs_call_disposition GUID (HubSpot's defaults)
    salesforce_disposition: str  # Task.CallDisposition (free text)
    leadsquared_status: str  # LogCall Status


# HubSpot's default call outcome GUIDs (the same in every portal; custom ones differ).
HUBSPOT_CONNECTED = "f240bbac-87c9-4f6e-bf70-924b57d47db7"
HUBSPOT_NO_ANSWER = "73a0d17f-1163-4015-bdd5-ec830791da20"
HUBSPOT_BUSY = "9d9162e7-6cf3-4944-bf63-4dff82258764"

OUTCOMES: dict[str, Outcome] = {
    "completed": Outcome(
        "completed", "Connected", True, "COMPLETED", HUBSPOT_CONNECTED, "Connected", "Answered"
    ),
    "no-answer": Outcome(
        "no-answer", "No answer", False, "NO_ANSWER", HUBSPOT_NO_ANSWER, "No answer", "NotAnswered"
    ),
    "busy": Outcome("busy", "Busy", False, "BUSY", HUBSPOT_BUSY, "Busy", "NotAnswered"),
    "failed": Outcome("failed", "Failed", False, "FAILED", None, "Failed", "NotAnswered"),
    "canceled": Outcome("canceled", "Canceled", False, "CANCELED", None, "Canceled", "NotAnswered"),
}
_STATUS_ALIASES = {
    "completed": "completed",
    "answered": "completed",
    "no-answer": "no-answer",
    "no_answer": "no-answer",
    "noanswer": "no-answer",
    "missed": "no-answer",
    "busy": "busy",
    "failed": "failed",
    "canceled": "canceled",
    "cancelled": "canceled",
}


def call_outcome(record: CallRecord) -> Outcome:
    """The call's outcome from the agents' point of view.

    Exotel's busy/no-answer/failed/canceled are kept. A ``completed`` inbound
    call that no agent answered (the IVR took it) is a missed call, so it is
    ``no-answer``; with no status at all, an answered call is ``completed``.
    """
    status = _STATUS_ALIASES.get(str(record.get("status") or "").strip().lower())
    answered = isinstance(record.get("answered_by"), Mapping)
    if status in (None, "completed"):
        if call_direction(record) == "inbound" and not answered:
            status = "no-answer"
        elif status is None:
            status = "completed" if answered else "no-answer"
    return OUTCOMES[status or "completed"]


def call_direction(record: CallRecord) -> str:
    """``inbound`` or ``outbound``: the record's, else the side the agents are on."""
    direction = record.get("direction")
    if direction in ("inbound", "outbound"):
        return str(direction)
    from_roles = {leg.get("role") for leg in record.get("from") or [] if isinstance(leg, Mapping)}
    return "outbound" if "agent" in from_roles else "inbound"


# ------------------------------------------------------------ times, durations
def _legs(record: CallRecord) -> list[Mapping[str, Any]]:
    legs = [*(record.get("from") or []), *(record.get("to") or [])]
    return [leg for leg in legs if isinstance(leg, Mapping)]


def parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def call_start(record: CallRecord) -> datetime:
    """When the call started (with its offset); the fetch time when unknown."""
    return (
        parse_time(record.get("started_at"))
        or parse_time(record.get("fetched_at"))
        or datetime.now(UTC)
    )


def call_end(record: CallRecord) -> datetime:
    start = call_start(record)
    end = parse_time(record.get("ended_at"))
    if end is None or end < start:
        return start + timedelta(seconds=talk_seconds(record))
    return end


def talk_seconds(record: CallRecord) -> int:
    """Conversation time: the answering leg's duration; 0 when nobody answered.

    Inbound: the answering agent's leg. Outbound: the customer's leg (the
    agent's leg also covers ringing the customer). Falls back to the whole
    call's duration.
    """
    if not call_outcome(record).answered:
        return 0
    legs = _legs(record)
    leg: Mapping[str, Any] | None = None
    if call_direction(record) == "outbound":
        leg = next(
            (x for x in legs if x.get("role") == "customer" and x.get("status") == "completed"),
            None,
        )
    else:
        answered = record.get("answered_by")
        sid = answered.get("sid") if isinstance(answered, Mapping) else None
        leg = next((x for x in legs if sid and x.get("sid") == sid), None)
    for value in (leg.get("duration_seconds") if leg else None, record.get("duration_seconds")):
        if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
            return int(value)
    return 0


def duration_ms(seconds: int) -> int:
    """HubSpot's ``hs_call_duration`` unit."""
    return max(0, int(seconds)) * 1000


def duration_mmss(seconds: int) -> str:
    """Zoho's ``Call_Duration``: minutes (unbounded) and seconds, ``"75:03"``."""
    total = max(0, int(seconds))
    return f"{total // 60:02d}:{total % 60:02d}"


def utc_text(moment: datetime) -> str:
    """``2020-09-15 05:31:20``: UTC, the form LeadSquared and Pipedrive take."""
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def iso_utc(moment: datetime) -> str:
    """``2020-09-15T05:31:20Z``."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def iso_with_offset(moment: datetime) -> str:
    """``2020-09-15T11:01:20+05:30``: Zoho's datetime form (no fractions)."""
    return moment.replace(microsecond=0).isoformat()


# -------------------------------------------------------------------- summary
def _who(name: Any, contact: Any) -> str:
    parts = [str(x) for x in (name, contact) if x]
    if len(parts) == 2:
        return f"{parts[0]} ({parts[1]})"
    return parts[0] if parts else "unknown"


def customer_label(record: CallRecord) -> str:
    customer = record.get("customer")
    if not isinstance(customer, Mapping):
        return "unknown number"
    return str(customer.get("phone_e164") or customer.get("contact_uri") or "unknown number")


def call_title(record: CallRecord) -> str:
    """``Inbound call from +919812345678 - answered by Sanjay - Exotel <sid>``.

    The call sid is its own word so it can be searched for.
    """
    direction = call_direction(record)
    outcome = call_outcome(record)
    party = customer_label(record)
    text = f"{direction.capitalize()} call {'from' if direction == 'inbound' else 'to'} {party}"
    answered = record.get("answered_by")
    if outcome.answered and isinstance(answered, Mapping) and direction == "inbound":
        text += f" - answered by {answered.get('name') or answered.get('contact_uri')}"
    elif not outcome.answered:
        text += f" - {outcome.label.lower()}"
    return f"{text} - Exotel {record.get('call_sid')}"


def leg_summary(record: CallRecord, *, recording: str | None = None) -> list[str]:
    """Lines describing the call and every agent leg, for a note or description.

    ``recording`` is the link to show (the sink decides whether to show one).
    """
    outcome = call_outcome(record)
    lines = [
        f"Exotel call {record.get('call_sid')}: {call_direction(record)}, {outcome.label.lower()}"
        + (f", talk time {talk_seconds(record)} s" if outcome.answered else ""),
        f"Customer: {customer_label(record)}",
    ]
    agent_legs = [leg for leg in _legs(record) if leg.get("role") == "agent"]
    if agent_legs:
        lines.append("Agents dialled:")
    for number, leg in enumerate(agent_legs, start=1):
        group = f" [{leg['group_name']}]" if leg.get("group_name") else ""
        seconds = leg.get("duration_seconds")
        took = f", {seconds} s" if isinstance(seconds, int) else ""
        lines.append(
            f"{number}. {_who(leg.get('name'), leg.get('contact_uri'))}{group}: "
            f"{leg.get('status') or 'not attempted'}{took}"
        )
    if recording:
        lines.append(f"Recording: {recording}")
    if record.get("custom_field"):
        lines.append(f"Custom field: {record['custom_field']}")
    return lines


def summary_text(record: CallRecord, *, recording: str | None = None) -> str:
    return "\n".join(leg_summary(record, recording=recording))


def summary_html(record: CallRecord, *, recording: str | None = None) -> str:
    return "<br>".join(html.escape(line) for line in leg_summary(record, recording=recording))


# ------------------------------------------------------------- OAuth tokens
@dataclass(frozen=True)
class Token:
    """A cached access token and what came with it (api_domain, instance_url...)."""

    value: str
    extra: dict[str, Any] = field(default_factory=dict)
    expires_at: float = 0.0


#: Mints a new token: returns (access token, lifetime in seconds, extra fields).
Mint = Callable[[], tuple[str, float, dict[str, Any]]]

TOKEN_MARGIN_SECONDS = 120.0
LOCK_SECONDS = 30.0
WAIT_SECONDS = 30.0
CONFIG_BLOCK_SECONDS = 60.0
_POLL_SECONDS = 0.05

_local_tokens: dict[str, Token] = {}
_local_blocked: dict[str, tuple[float, str, str]] = {}
_local_locks: dict[str, threading.Lock] = {}
_local_guard = threading.Lock()


def token_key(crm: str, *parts: str) -> str:
    """The Redis key for one set of credentials (a new secret gets a new key)."""
    digest = hashlib.sha256("\x00".join(parts).encode()).hexdigest()[:16]
    return keys.token_cache(f"{crm}:{digest}")


def cache_seconds(lifetime: float, margin: float = TOKEN_MARGIN_SECONDS) -> float:
    """How long to keep a token that lives ``lifetime`` seconds."""
    if lifetime > 2 * margin:
        return lifetime - margin
    return max(1.0, lifetime / 2)


def get_token(
    redis: Redis | None,
    cache_key: str,
    mint: Mint,
    *,
    margin: float = TOKEN_MARGIN_SECONDS,
    lock_seconds: float = LOCK_SECONDS,
    wait_seconds: float = WAIT_SECONDS,
) -> Token:
    """The cached token for ``cache_key``, minting one (once, for all workers) if needed.

    With Redis, one worker at a time holds ``<cache_key>:lock`` and mints;
    the others wait for the token to appear. A mint refused as rate-limited
    (or as a configuration fault) is remembered briefly, so the other workers
    fail fast instead of asking the token endpoint again. Without Redis
    (``redis is None``) the same happens inside this process.
    """
    if redis is None:
        return _local_token(cache_key, mint, margin)
    from redis.exceptions import RedisError

    try:
        return _redis_token(redis, cache_key, mint, margin, lock_seconds, wait_seconds)
    except RedisError as err:
        raise TransientError(
            f"token cache in Redis unavailable ({type(err).__name__}); retrying"
        ) from err


def drop_token(redis: Redis | None, cache_key: str, stale: str) -> None:
    """Forget ``stale`` (the CRM said it expired) unless a newer token replaced it."""
    if redis is None:
        with _local_guard:
            current = _local_tokens.get(cache_key)
            if current is not None and current.value == stale:
                del _local_tokens[cache_key]
        return
    from redis.exceptions import RedisError, WatchError

    try:
        with redis.pipeline() as pipe:
            pipe.watch(cache_key)  # type: ignore[no-untyped-call]
            cached = _decode_token(pipe.get(cache_key))
            if cached is not None and cached.value == stale:
                pipe.multi()
                pipe.delete(cache_key)
                pipe.execute()
            else:
                pipe.unwatch()
    except WatchError:
        pass  # someone replaced it meanwhile: that one is fresh
    except RedisError as err:
        raise TransientError(f"token cache in Redis unavailable ({type(err).__name__})") from err


def _encode_token(token: Token) -> str:
    return json.dumps({"token": token.value, "extra": token.extra, "expires_at": token.expires_at})


def _decode_token(raw: Any) -> Token | None:
    if raw is None:
        return None
    try:
        data = json.loads(raw)
        return Token(str(data["token"]), dict(data.get("extra") or {}), float(data["expires_at"]))
    except (ValueError, KeyError, TypeError):
        return None


def _blocked_error(kind: str, message: str, remaining: float) -> ExolegsError:
    if kind == "rate_limited":
        return RateLimitedError(message, retry_after=max(1.0, remaining))
    return ConfigFaultError(message)


def _remember_failure(err: ExolegsError) -> tuple[str, float] | None:
    """(kind, seconds) to block further mints for, or None to let others try."""
    if isinstance(err, RateLimitedError):
        return "rate_limited", err.retry_after or 60.0
    if isinstance(err, ConfigFaultError):
        return "config", CONFIG_BLOCK_SECONDS
    return None


def _redis_token(
    redis: Redis,
    cache_key: str,
    mint: Mint,
    margin: float,
    lock_seconds: float,
    wait_seconds: float,
) -> Token:
    lock_key, blocked_key = f"{cache_key}:lock", f"{cache_key}:blocked"
    deadline = time.monotonic() + wait_seconds
    while True:
        cached = _decode_token(redis.get(cache_key))
        if cached is not None:
            return cached
        blocked = redis.get(blocked_key)
        if blocked is not None:
            data = json.loads(blocked)
            remaining = max(0.0, float(redis.pttl(blocked_key)) / 1000)
            raise _blocked_error(str(data["kind"]), str(data["message"]), remaining)
        owner = secrets.token_hex(8)
        if redis.set(lock_key, owner, nx=True, px=int(lock_seconds * 1000)):
            try:
                cached = _decode_token(redis.get(cache_key))
                if cached is not None:
                    return cached
                try:
                    value, lifetime, extra = mint()
                except ExolegsError as err:
                    failure = _remember_failure(err)
                    if failure is not None:
                        kind, seconds = failure
                        payload = json.dumps({"kind": kind, "message": err.message})
                        redis.set(blocked_key, payload, px=max(1, int(seconds * 1000)))
                    raise
                ttl = cache_seconds(lifetime, margin)
                token = Token(value, extra, time.time() + ttl)
                redis.set(cache_key, _encode_token(token), px=max(1, int(ttl * 1000)))
                return token
            finally:
                _release(redis, lock_key, owner)
        if time.monotonic() >= deadline:
            raise TransientError(
                f"another worker has been minting an access token for over {wait_seconds:g} s "
                f"({cache_key}); retrying later"
            )
        time.sleep(_POLL_SECONDS)


def _release(redis: Redis, lock_key: str, owner: str) -> None:
    """Delete the lock only if it is still ours (it may have expired and moved on)."""
    from redis.exceptions import WatchError

    try:
        with redis.pipeline() as pipe:
            pipe.watch(lock_key)  # type: ignore[no-untyped-call]
            current = pipe.get(lock_key)
            if (
                current is not None
                and (current.decode() if isinstance(current, bytes) else current) == owner
            ):
                pipe.multi()
                pipe.delete(lock_key)
                pipe.execute()
            else:
                pipe.unwatch()
    except WatchError:
        pass


def _local_token(cache_key: str, mint: Mint, margin: float) -> Token:
    with _local_guard:
        lock = _local_locks.setdefault(cache_key, threading.Lock())
    with lock:
        now = time.time()
        with _local_guard:
            cached = _local_tokens.get(cache_key)
            blocked = _local_blocked.get(cache_key)
        if cached is not None and cached.expires_at > now:
            return cached
        if blocked is not None and blocked[0] > now:
            raise _blocked_error(blocked[1], blocked[2], blocked[0] - now)
        try:
            value, lifetime, extra = mint()
        except ExolegsError as err:
            failure = _remember_failure(err)
            if failure is not None:
                with _local_guard:
                    _local_blocked[cache_key] = (now + failure[1], failure[0], err.message)
            raise
        token = Token(value, extra, time.time() + cache_seconds(lifetime, margin))
        with _local_guard:
            _local_tokens[cache_key] = token
            _local_blocked.pop(cache_key, None)
        return token


def forget_local_tokens() -> None:
    """Clear the in-process token cache (tests)."""
    with _local_guard:
        _local_tokens.clear()
        _local_blocked.clear()


def read_private_key_file(path: str, crm: str) -> bytes:
    """Read a PEM key named in a sink URL, with a clear error when it cannot be."""
    try:
        data = Path(os.path.expanduser(path)).read_bytes()
    except OSError as err:
        raise SettingsError(
            "SINKS", f"{crm} private key file {path} cannot be read: {err.strerror}"
        ) from err
    if b"PRIVATE KEY" not in data:
        raise SettingsError("SINKS", f"{crm} private key file {path} is not a PEM private key")
    return data
