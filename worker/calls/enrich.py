"""Enrichment: Exotel call legs + the callback -> one `exolegs.call/v1` record.

Pure functions only (no I/O, no clock, no settings): the worker passes in what
it fetched and when, so every branch here is testable with plain data. Exotel
data is loosely typed and sometimes masked, so every field is parsed
defensively: an odd value becomes null in the record, never an exception. The
one exception is `leg_details_of`, because a body without leg details means the
fetch itself went wrong and retrying the enrichment cannot fix it.

Decisions the record's contract (docs/schema/call.v1.json) leaves open, made here:

- Times: Exotel sends ``2020-09-15 11:01:20+05:30``; the record keeps the
  instant and its offset (``2020-09-15T11:01:20+05:30``). A time without an
  offset is India time (Asia/Kolkata): v1 callbacks and Call Details send
  their times that way. Passthru's placeholder ``1970-01-01 05:30:00`` (its
  ``EndTime`` is always that, per Exotel's Passthru support article 48283)
  and any time before 2000 are ignored, as are unparseable times and bare dates.
- The callback fills what the legs lack: start and end from ``StartTime`` /
  ``EndTime`` (``DateCreated``/``DateUpdated`` in a Bulk Call Details
  listing), the duration from them or from ``Duration``, ``DialCallDuration``,
  ``ConversationDuration`` or the longest ``Legs[n][OnCallDuration]``.
- Status: the callback's status when it is one of Exotel's call outcomes
  (v1 and CCM vocabularies); otherwise (an agent line state such as
  ``free``, or none) the outcome is read from the legs: ``completed`` when an
  agent answered, else the customer leg's status.
- Without legs (``legs: unavailable``: the legs API never had them), the
  record is the callback's: the customer is ``From`` for an inbound call and
  ``To`` otherwise, the agent is ``DialWhomNumber``, and the call was answered
  when its outcome is ``completed`` and neither ``Leg2Status`` nor a zero
  ``ConversationDuration``/``DialCallDuration`` says otherwise.
- Phone numbers: only a string made of digits and ``+ - . ( )`` and spaces
  (optionally ``tel:``-prefixed) is parsed, and only a number `phonenumbers`
  calls valid gets an E.164 value. Masked numbers such as ``0987xxxxxxx`` are
  null: phonenumbers would otherwise read the letters as a vanity keypad.
- Roles: outbound -> ``from`` legs are agents, inbound -> ``to`` legs are.
  Unknown direction -> the side whose legs carry ``group_id``/``group_name``
  keys (even null-valued) is the agents' side, and the record's direction is
  inferred from it (agents on ``to`` -> inbound, on ``from`` -> outbound).
  When neither or both sides carry them, ``from`` is taken as the agents (the
  click-to-call layout in Exotel's docs) and direction stays null.
- ``kind`` is null when a leg has no contact_uri (neither pstn nor sip is
  known); ``recording_url``/``custom_field`` treat ``""`` and the literal
  ``"null"`` (Passthru sends it) as absent.
- ``call_sid`` comes from the legs body, else from the callback; the schema
  requires it, so a record with neither does not validate (the worker always
  has one).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta, timezone
from functools import lru_cache
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

import phonenumbers

from worker.calls.provenance import Legs, Source
from worker.errors import PermanentError
from worker.settings import DEFAULT_RECORDING_HOSTS

SCHEMA_ID = "exolegs.call/v1"
INDIA = ZoneInfo("Asia/Kolkata")
#: Any time before this is a placeholder, not an instant (Passthru sends 1970-01-01 05:30:00).
_EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)


#: Exotel's words for how a call ended (v1 and CCM); anything else is not an outcome.
OUTCOMES = frozenset(
    {
        "completed",
        "failed",
        "busy",
        "no-answer",
        "canceled",
        "cancelled",
        "agent-unanswered",
        "customer-unanswered",
        "agent-cancelled",
        "from-leg-unanswered",
        "to-leg-unanswered",
        "from-leg-cancelled",
        "to-leg-no-dial",
        "from-leg-no-dial",
    }
)
_START_KEYS = ("StartTime", "start_time", "DateCreated")
_END_KEYS = ("EndTime", "end_time", "DateUpdated")
_DURATION_KEYS = ("Duration", "DialCallDuration", "ConversationDuration", "duration")
_TALK_KEYS = ("ConversationDuration", "DialCallDuration")
_CUSTOMER_KEYS_IN = ("From", "CallFrom")
_CUSTOMER_KEYS_OUT = ("To", "CallTo")
_AGENT_KEYS = ("DialWhomNumber",)

_INBOUND = frozenset({"inbound", "incoming"})
_OUTBOUND = frozenset({"outbound", "outbound-api", "outbound-dial", "outgoing"})
_DIRECTION_KEYS = ("Direction", "direction", "CallDirection")
_STATUS_KEYS = ("Status", "DialCallStatus", "CallStatus", "status")
_CALL_SID_KEYS = ("CallSid", "call_sid", "Sid", "sid")
_ACCOUNT_SID_KEYS = ("AccountSid", "account_sid")
_RECORDING_KEYS = ("RecordingUrl", "recording_url")
_CUSTOM_FIELD_KEYS = ("CustomField", "custom_field")
_GROUP_KEYS = ("group_id", "group_name")
_PHONE_CHARS = re.compile(r"\+?[0-9()\-. ]+")
_MAX_PHONE_LEN = 40


def leg_details_of(body: Mapping[str, Any], *, call_sid: str | None = None) -> Mapping[str, Any]:
    """Return ``response.leg_details`` of a Call Legs API success body.

    Raises PermanentError when it is missing or not an object: the fetch
    returned something that is not a legs answer, and enriching it again will
    not change that. ``call_sid`` (what was asked for) names the call in the
    message when the body does not.
    """
    response = body.get("response") if isinstance(body, Mapping) else None
    details = response.get("leg_details") if isinstance(response, Mapping) else None
    if isinstance(details, Mapping):
        return details
    named = _text(details.get("call_sid")) if isinstance(details, Mapping) else None
    who = call_sid or named or "unknown call"
    request_id = _text(body.get("request_id")) if isinstance(body, Mapping) else None
    where = f" (request_id {request_id})" if request_id else ""
    if not isinstance(body, Mapping):
        problem = f"the body is a {type(body).__name__}, not a JSON object"
    elif not isinstance(response, Mapping):
        problem = "it has no 'response' object"
    elif details is None:
        status = _text(response.get("status"))
        problem = "'response.leg_details' is missing" + (
            f" (response.status {status!r})" if status else ""
        )
    else:
        problem = f"'response.leg_details' is a {type(details).__name__}, not an object"
    raise PermanentError(f"Exotel legs answer for call {who} is malformed{where}: {problem}")


def build_record(
    legs: Mapping[str, Any],
    callback: Mapping[str, Any] | None,
    *,
    default_country: str,
    fetched_at: datetime,
    direction: str | None = None,
    status: str | None = None,
    source: Source = Source.CALLBACK,
    legs_state: Legs = Legs.FETCHED,
    recording_hosts: tuple[str, ...] = DEFAULT_RECORDING_HOSTS,
) -> dict[str, Any]:
    """Build the `exolegs.call/v1` record for one call.

    ``recording_url`` is kept only when it is an https URL on one of
    ``recording_hosts`` (:func:`recording_allowed`): the callback is the only
    source of it, and a forged one would otherwise reach CRM notes.

    ``legs`` is ``response.leg_details`` (empty when ``legs_state`` is
    unavailable); ``callback`` the callback fields as received.
    ``direction``/``status`` are the caller's normalised values; when None
    they are derived from the callback.
    """
    details: Mapping[str, Any] = legs if isinstance(legs, Mapping) else {}
    fields: Mapping[str, Any] = callback if isinstance(callback, Mapping) else {}
    country = default_country.strip().upper() if isinstance(default_country, str) else ""

    raw_from = _leg_list(details.get("from"))
    raw_to = _leg_list(details.get("to"))

    known = _direction(direction) or _direction(_first(fields, _DIRECTION_KEYS))
    agents_on_from, inferred = _agents_side(known, raw_from, raw_to)
    record_direction = known or inferred

    from_role, to_role = ("agent", "customer") if agents_on_from else ("customer", "agent")
    from_built = [_leg(raw, from_role, country) for raw in raw_from]
    to_built = [_leg(raw, to_role, country) for raw in raw_to]
    from_legs = [leg for leg, _, _ in from_built]
    to_legs = [leg for leg, _, _ in to_built]
    all_legs = from_legs + to_legs
    agent_legs = [leg for leg in all_legs if leg["role"] == "agent"]
    customer_leg = next((leg for leg in all_legs if leg["role"] == "customer"), None)
    answered = next((leg for leg in agent_legs if leg["status"] == "completed"), None)

    starts = [start for _, start, _ in from_built + to_built if start is not None]
    ends = [end for _, _, end in from_built + to_built if end is not None]
    first_start = min(starts) if starts else _parse_exotel_time(_first(fields, _START_KEYS))
    last_end = max(ends) if ends else _parse_exotel_time(_first(fields, _END_KEYS))
    duration = _seconds(first_start, last_end)
    if duration is None:
        duration = _callback_duration(fields)
    if last_end is None and first_start is not None and duration is not None:
        last_end = first_start + timedelta(seconds=duration)

    record_status = _outcome(status) or _outcome(_first(fields, _STATUS_KEYS))
    if record_status is None and all_legs:
        customer_status = customer_leg["status"] if customer_leg else None
        record_status = "completed" if answered else _outcome(customer_status)

    agents = [
        {
            "name": leg["name"],
            "contact_uri": leg["contact_uri"],
            "status": leg["status"],
            "group_name": leg["group_name"],
        }
        for leg in agent_legs
    ]
    answered_by = (
        {"sid": answered["sid"], "name": answered["name"], "contact_uri": answered["contact_uri"]}
        if answered
        else None
    )
    missed = answered is None
    customer = (
        {"contact_uri": customer_leg["contact_uri"], "phone_e164": customer_leg["phone_e164"]}
        if customer_leg
        else None
    )
    if not all_legs:
        customer, agents, answered_by, missed = _from_callback(
            fields, record_direction, record_status, country
        )

    return {
        "schema": SCHEMA_ID,
        "call_sid": _text(details.get("call_sid")) or _text(_first(fields, _CALL_SID_KEYS)),
        "account_sid": _text(details.get("account_sid"))
        or _text(_first(fields, _ACCOUNT_SID_KEYS)),
        "direction": record_direction,
        "status": record_status,
        "from": from_legs,
        "to": to_legs,
        "customer": customer,
        "agents": agents,
        "answered_by": answered_by,
        "missed": missed,
        "started_at": _iso(first_start),
        "ended_at": _iso(last_end),
        "duration_seconds": duration,
        "recording_url": recording_allowed(
            _optional_text(_first(fields, _RECORDING_KEYS)), recording_hosts
        ),
        "custom_field": _optional_text(_first(fields, _CUSTOM_FIELD_KEYS)),
        "callback": _jsonable(fields) if fields else {},
        "fetched_at": _utc_iso(fetched_at),
        "source": Source(source).value,
        "legs": Legs(legs_state).value,
    }


def recording_allowed(url: str | None, hosts: tuple[str, ...]) -> str | None:
    """``url`` when it is https on an allowed host, else None.

    An entry ``exotel.com`` allows that host and its subdomains; an entry with
    a path (``s3-ap-southeast-1.amazonaws.com/exotelrecordings/``) allows that
    exact host and URLs whose path starts there.
    """
    if not url:
        return None
    try:
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
    except ValueError:
        return None
    if parts.scheme != "https" or not host or parts.username or parts.password:
        return None
    for entry in hosts:
        allowed, slash, prefix = entry.lower().partition("/")
        if slash:
            if host == allowed and parts.path.startswith("/" + prefix):
                return url
        elif host == allowed or host.endswith("." + allowed):
            return url
    return None


def _outcome(value: Any) -> str | None:
    """A call outcome in Exotel's vocabulary, lower-cased; None for anything else."""
    text = _lower(value)
    if text is None:
        return None
    text = text.replace("_", "-").replace(" ", "-")
    text = {"cancelled": "canceled"}.get(text, text)
    return text if text in OUTCOMES else None


def _number(value: Any) -> int | None:
    """Whole non-negative seconds from Exotel's ``"17"``/``17``; None otherwise."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float) and value == value and 0 <= value < 10**7:
        return int(value)
    text = _text(value)
    if text is None:
        return None
    try:
        number = float(text)
    except ValueError:
        return None
    return int(number) if 0 <= number < 10**7 else None


def _callback_duration(fields: Mapping[str, Any]) -> int | None:
    """The first duration the callback states; else the longest leg's OnCallDuration."""
    for key in _DURATION_KEYS:
        seconds = _number(fields.get(key))
        if seconds is not None:
            return seconds
    legs = fields.get("Legs")
    if isinstance(legs, Mapping):
        legs = list(legs.values())
    if isinstance(legs, list):
        found = [_number(leg.get("OnCallDuration")) for leg in legs if isinstance(leg, Mapping)]
        known = [seconds for seconds in found if seconds is not None]
        if known:
            return max(known)
    return None


def _from_callback(
    fields: Mapping[str, Any], direction: str | None, status: str | None, country: str
) -> tuple[dict[str, Any] | None, list[dict[str, Any]], dict[str, Any] | None, bool]:
    """(customer, agents, answered_by, missed) from the callback alone (no legs)."""
    keys = _CUSTOMER_KEYS_IN if direction == "inbound" else _CUSTOMER_KEYS_OUT
    customer_uri = _optional_text(_first(fields, keys))
    customer = (
        {
            "contact_uri": customer_uri,
            "phone_e164": to_e164(customer_uri, country)
            if _kind(customer_uri) == "pstn"
            else None,
        }
        if customer_uri
        else None
    )
    answered = status == "completed"
    leg2 = _outcome(fields.get("Leg2Status"))
    if leg2 is not None:
        answered = answered and leg2 == "completed"
    talk = next(
        (s for s in (_number(fields.get(key)) for key in _TALK_KEYS) if s is not None), None
    )
    if talk == 0:
        answered = False
    agent_uri = _optional_text(_first(fields, _AGENT_KEYS))
    agents: list[dict[str, Any]] = []
    answered_by = None
    if agent_uri:
        agents.append(
            {
                "name": None,
                "contact_uri": agent_uri,
                "status": "completed" if answered else status,
                "group_name": None,
            }
        )
        if answered:
            answered_by = {"sid": None, "name": None, "contact_uri": agent_uri}
    return customer, agents, answered_by, not answered


def _leg(
    raw: Mapping[str, Any], role: str, country: str
) -> tuple[dict[str, Any], datetime | None, datetime | None]:
    """One leg of the record (and its start and end); tolerant of odd values."""
    contact_uri = _text(raw.get("contact_uri"))
    kind = _kind(contact_uri)
    started = _parse_exotel_time(raw.get("date_created"))
    ended = _parse_exotel_time(raw.get("date_updated"))
    leg = {
        "sid": _text(raw.get("sid")),
        "name": _text(raw.get("name")),
        "contact_uri": contact_uri,
        "kind": kind,
        "phone_e164": to_e164(contact_uri, country) if kind == "pstn" else None,
        "status": _lower(raw.get("status")),
        "group_id": _text(raw.get("group_id")),
        "group_name": _text(raw.get("group_name")),
        "role": role,
        "started_at": _iso(started),
        "ended_at": _iso(ended),
        "duration_seconds": _seconds(started, ended),
    }
    return leg, started, ended


def _agents_side(
    known: str | None, raw_from: list[Mapping[str, Any]], raw_to: list[Mapping[str, Any]]
) -> tuple[bool, str | None]:
    """(are the agents on `from`?, direction inferred from group keys or None)."""
    if known == "outbound":
        return True, None
    if known == "inbound":
        return False, None
    from_grouped = any(key in leg for leg in raw_from for key in _GROUP_KEYS)
    to_grouped = any(key in leg for leg in raw_to for key in _GROUP_KEYS)
    if to_grouped and not from_grouped:
        return False, "inbound"
    if from_grouped and not to_grouped:
        return True, "outbound"
    return True, None  # undecided: Exotel's click-to-call layout, from = user legs


def _direction(value: Any) -> str | None:
    """Map Exotel's direction spellings to inbound/outbound; anything else is unknown."""
    text = _lower(value)
    if text in _INBOUND:
        return "inbound"
    if text in _OUTBOUND:
        return "outbound"
    return None


def _kind(contact_uri: str | None) -> str | None:
    if contact_uri is None:
        return None
    lowered = contact_uri.lower()
    if lowered.startswith(("sip:", "sips:")) or "@" in contact_uri:
        return "sip"
    return "pstn"


@lru_cache(maxsize=8192)
def to_e164(contact_uri: str | None, country: str) -> str | None:
    """E.164 for a real, valid phone number; null for masked or odd ones.

    Cached: the same agents' numbers come back call after call, and parsing
    a number is the costliest step of enrichment.
    """
    if contact_uri is None:
        return None
    text = contact_uri.strip()
    if text[:4].lower() == "tel:":
        text = text[4:].strip()
    if not text or len(text) > _MAX_PHONE_LEN or not _PHONE_CHARS.fullmatch(text):
        return None  # letters (masking like "0987xxxxxxx") would be read as a keypad
    try:
        number = phonenumbers.parse(text, country or None)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_valid_number(number):
        return None
    formatted: str = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    return formatted


def _parse_exotel_time(value: Any) -> datetime | None:
    """An aware datetime from Exotel's time text; naive means India time; junk means None."""
    if not isinstance(value, str):
        return None
    text = value.strip()
    if len(text) <= 10:  # empty, or a bare date: not an instant
        return None
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    if parsed.tzinfo is None or parsed.utcoffset() is None:
        parsed = parsed.replace(tzinfo=INDIA)
    try:
        if parsed < _EARLIEST:
            return None  # a placeholder such as Passthru's 1970-01-01 05:30:00
    except (OverflowError, ValueError):
        return None
    if isinstance(parsed.tzinfo, ZoneInfo):
        return parsed.replace(tzinfo=timezone(parsed.utcoffset() or timedelta(0)))
    offset = parsed.utcoffset() or timedelta(0)
    if offset.seconds % 60 or offset.microseconds:
        # an offset RFC 3339 cannot spell: keep the instant, in UTC
        try:
            return parsed.astimezone(UTC)
        except (OverflowError, ValueError):
            return None
    return parsed


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _utc_iso(value: datetime) -> str:
    """fetched_at in UTC with an explicit offset; a naive value is taken as UTC."""
    if value.tzinfo is None or value.utcoffset() is None:
        return value.replace(tzinfo=UTC).isoformat()
    return value.astimezone(UTC).isoformat()


def _seconds(start: datetime | None, end: datetime | None) -> int | None:
    """Whole seconds from start to end, never negative; null without both ends."""
    if start is None or end is None:
        return None
    try:
        delta = (end - start).total_seconds()
    except (OverflowError, ValueError):
        return None
    return max(0, round(delta))


def _leg_list(value: Any) -> list[Mapping[str, Any]]:
    """The legs of one side: a list of objects (a lone object counts as one)."""
    if isinstance(value, Mapping):
        return [value]
    if isinstance(value, list | tuple):
        return [item for item in value if isinstance(item, Mapping)]
    return []


def _first(fields: Mapping[str, Any], keys: tuple[str, ...]) -> Any:
    """The first of ``keys`` with a value that is not blank nor the literal ``null``."""
    for key in keys:
        value = fields.get(key)
        if value is None or (
            isinstance(value, str) and (not value.strip() or value.strip().lower() == "null")
        ):
            continue
        return value
    return None


def _text(value: Any) -> str | None:
    """A non-empty string, or an integer as text (JSON numbers for ids); else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        stripped = value.strip()
        return stripped or None
    return None


def _lower(value: Any) -> str | None:
    text = _text(value)
    return text.lower() if text is not None else None


def _optional_text(value: Any) -> str | None:
    """Text, with ``""`` and the literal ``null`` (Passthru sends it) as absent."""
    text = _text(value)
    return None if text is None or text.lower() == "null" else text


def _jsonable(value: Any) -> Any:
    """A JSON-safe copy of the callback, so every sink can serialise the record."""
    if isinstance(value, Mapping):
        return {str(key): _jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(item) for item in value]
    if value is None or isinstance(value, str | bool | int):
        return value
    if isinstance(value, float):
        return value if value == value and value not in (float("inf"), float("-inf")) else None
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)
