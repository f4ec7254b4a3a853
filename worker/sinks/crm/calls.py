"""What a CRM is told about a call: outcome, direction, times, durations, summary.

Pure functions of an ``exolegs.call/v1`` record; every CRM sink maps them to
its own fields.
"""

from __future__ import annotations

import html
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from worker.sinks.base import CallRecord


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
