"""Callbacks as live Exotel accounts send them: decode, classify, intake and enrich.

Each payload is shaped the way Exotel sends it: the agent pass-through and
Passthru hooks as GET query strings (support articles 48284, 48283), the v1
StatusCallback as multipart with Exotel's ``form-data-boundary-<random>``
boundary (its default content type) or as JSON, Connect-applet hooks as forms.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl, urlencode

import redis

from web.payload import decode_body
from worker import jobs
from worker.calls.callbacks import event_from_fields
from worker.calls.enrich import build_record
from worker.calls.intake import Intake, terminal_callback
from worker.calls.provenance import Legs

from .test_enrich import VALIDATOR

SID = "b6cf1d0c9a1e4c2f8e8d7a6b5c4d3e2f"
FETCHED = datetime(2025, 3, 1, 7, 0, tzinfo=UTC)


def get(query: str) -> dict[str, Any]:
    return decode_body(None, b"", parse_qsl(query, keep_blank_values=True))


def form(fields: dict[str, str]) -> dict[str, Any]:
    return decode_body("application/x-www-form-urlencoded", urlencode(fields).encode(), [])


def exotel_multipart(
    fields: dict[str, str], boundary: str = "form-data-boundary-jt7ql1w2"
) -> dict[str, Any]:
    body = b"".join(
        f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
        for k, v in fields.items()
    )
    body += f"--{boundary}--\r\n".encode()
    return decode_body(f"multipart/form-data; boundary={boundary}", body, [])


def as_json(fields: dict[str, Any]) -> dict[str, Any]:
    return decode_body("application/json", json.dumps(fields).encode(), [])


def record_without_legs(fields: dict[str, Any]) -> dict[str, Any]:
    event = event_from_fields(fields)
    record = build_record(
        {},
        fields,
        default_country="IN",
        fetched_at=FETCHED,
        direction=event.direction,
        status=event.status,
        legs_state=Legs.UNAVAILABLE,
    )
    VALIDATOR.validate(record)
    return record


# --- agent line hooks are never the end of the call ---------------------------------


def test_agent_pass_through_busy_is_an_agent_ringing_not_a_busy_call(
    redis_client: redis.Redis,
) -> None:
    fields = get(f"CallSid={SID}&From=09876543210&DialWhomNumber=09123456780&Status=busy")
    event = event_from_fields(fields)
    assert not event.terminal and event.status is None
    got = Intake(redis_client, retention_seconds=3600, fetch_delay=30).accept(event)
    assert not got.fetch_booked and redis_client.zcard(jobs.JOBS) == 0


def test_agent_pass_through_free_books_nothing_either(redis_client: redis.Redis) -> None:
    intake = Intake(redis_client, retention_seconds=3600, fetch_delay=30)
    for status in ("busy", "free"):
        fields = get(f"CallSid={SID}&From=09876543210&DialWhomNumber=09123456780&Status={status}")
        assert not intake.accept(event_from_fields(fields)).fetch_booked
    assert redis_client.zcard(jobs.JOBS) == 0


def test_connect_terminal_free_is_the_agent_line_not_the_outcome(
    redis_client: redis.Redis,
) -> None:
    fields = form(
        {
            "CallSid": SID,
            "EventType": "Terminal",
            "Status": "free",
            "DialWhomNumber": "sip:priya@acme.sip.exotel.com",
            "AgentEmail": "priya@example.com",
        }
    )
    event = event_from_fields(fields)
    assert not event.terminal and event.status is None
    intake = Intake(redis_client, retention_seconds=3600, fetch_delay=30)
    assert not intake.accept(event).fetch_booked
    # The call's real end, later, still books the one fetch, with its real status.
    end = exotel_multipart(
        {"CallSid": SID, "Status": "completed", "DateUpdated": "2025-03-01 12:31:20"}
    )
    assert intake.accept(event_from_fields(end)).fetch_booked
    _, status, _ = terminal_callback(redis_client, SID)
    assert status == "completed"


def test_v1_busy_without_an_agent_number_is_still_a_busy_call() -> None:
    fields = exotel_multipart(
        {"CallSid": SID, "Status": "busy", "DateUpdated": "2025-03-01 12:31:20"}
    )
    event = event_from_fields(fields)
    assert event.terminal and event.status == "busy"


# --- the literal null ---------------------------------------------------------------


def test_null_dial_call_status_does_not_hide_call_status() -> None:
    fields = get(
        f"CallSid={SID}&CallFrom=09876543210&CallTo=08047112345&Direction=incoming"
        "&DialCallStatus=null&CallStatus=completed&CallType=completed&ForwardedFrom=null"
        "&StartTime=2025-03-01+12:30:00&EndTime=1970-01-01+05:30:00&DialCallDuration=42"
        "&RecordingUrl=null&DialWhomNumber=09123456780"
    )
    event = event_from_fields(fields)
    assert event.terminal and event.status == "completed"
    record = record_without_legs(fields)
    assert record["status"] == "completed"
    assert record["recording_url"] is None
    assert record["callback"]["ForwardedFrom"] == "null"  # kept as received
    assert record["callback"]["DialCallStatus"] == "null"


def test_null_call_sid_is_a_missing_call_sid() -> None:
    import pytest

    from worker.calls.callbacks import CallbackError

    with pytest.raises(CallbackError, match="missing call sid"):
        event_from_fields(get("CallSid=null&Status=completed"))


def test_null_status_everywhere_is_no_status() -> None:
    event = event_from_fields(get(f"CallSid={SID}&Status=null&DialCallStatus=null"))
    assert event.status is None and not event.terminal


# --- times and durations ------------------------------------------------------------


def test_offset_less_times_are_india_time_and_the_placeholder_end_is_ignored() -> None:
    fields = get(
        f"CallSid={SID}&CallFrom=09876543210&Direction=incoming&DialCallStatus=completed"
        "&CallType=completed&StartTime=2025-03-01+12:30:00&EndTime=1970-01-01+05:30:00"
        "&DialCallDuration=42&CurrentTime=2025-03-01+12:30:50"
    )
    record = record_without_legs(fields)
    assert record["started_at"] == "2025-03-01T12:30:00+05:30"
    assert record["ended_at"] == "2025-03-01T12:30:42+05:30"  # start + the stated duration
    assert record["duration_seconds"] == 42


def test_v1_terminal_json_times_and_conversation_duration_fill_the_record() -> None:
    fields = as_json(
        {
            "CallSid": SID,
            "EventType": "terminal",
            "Status": "completed",
            "Direction": "outbound-api",
            "From": "09123456780",
            "To": "09876543210",
            "StartTime": "2025-03-01 12:30:00",
            "EndTime": "2025-03-01 12:33:20",
            "ConversationDuration": 185,
            "Legs": [
                {"Status": "completed", "OnCallDuration": 195, "AnsweredBy": "Human"},
                {"Status": "completed", "OnCallDuration": 185},
            ],
        }
    )
    record = record_without_legs(fields)
    assert record["duration_seconds"] == 200  # end - start, before any stated duration
    assert record["ended_at"] == "2025-03-01T12:33:20+05:30"
    assert record["missed"] is False
    assert record["customer"] == {"contact_uri": "09876543210", "phone_e164": "+919876543210"}
    assert record["answered_by"] is None  # AnsweredBy is machine detection, not the agent


def test_leg_durations_fill_in_when_nothing_else_does() -> None:
    fields = form(
        {
            "CallSid": SID,
            "Status": "completed",
            "Legs[0][OnCallDuration]": "30",
            "Legs[1][OnCallDuration]": "25",
        }
    )
    assert record_without_legs(fields)["duration_seconds"] == 30


def test_durations_from_the_callback_fill_legs_without_times() -> None:
    fields = exotel_multipart(
        {
            "CallSid": SID,
            "Status": "completed",
            "StartTime": "2025-03-01 12:30:00",
            "Duration": "61",
        }
    )
    legs = {
        "call_sid": SID,
        "from": [
            {"sid": "l1", "contact_uri": "+919123456780", "status": "completed", "group_id": "g"}
        ],
        "to": [],
    }
    record = build_record(legs, fields, default_country="IN", fetched_at=FETCHED)
    assert record["started_at"] == "2025-03-01T12:30:00+05:30"
    assert record["duration_seconds"] == 61
    assert record["legs"] == "fetched" and record["source"] == "callback"


# --- calls that never connected are records too -------------------------------------


def test_a_call_nobody_answered_is_a_missed_record() -> None:
    for status in ("no-answer", "busy", "failed", "canceled"):
        fields = exotel_multipart(
            {"CallSid": SID, "Status": status, "DateUpdated": "2025-03-01 12:31:20"}
        )
        record = record_without_legs(fields)
        assert record["missed"] is True and record["status"] == status


def test_completed_without_a_second_leg_is_the_caller_hanging_up_first() -> None:
    fields = form(
        {
            "CallSid": SID,
            "Status": "completed",
            "Leg1Status": "completed",
            "Leg2Status": "no-answer",
        }
    )
    assert record_without_legs(fields)["missed"] is True


def test_zero_conversation_means_nobody_talked() -> None:
    fields = as_json({"CallSid": SID, "Status": "completed", "ConversationDuration": 0})
    assert record_without_legs(fields)["missed"] is True
