"""Enrichment: the `exolegs.call/v1` record built from legs and a callback.

Every record built here is also checked against docs/schema/call.v1.json, so
the schema and the builder cannot drift apart silently.
"""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator, FormatChecker
from jsonschema.exceptions import ValidationError

from worker.calls.enrich import SCHEMA_ID, build_record, leg_details_of, recording_allowed
from worker.errors import PermanentError

ROOT = Path(__file__).resolve().parents[3]
FIXTURES = ROOT / "tests" / "fixtures"
SCHEMA_PATH = ROOT / "docs" / "schema" / "call.v1.json"
DEFAULT_COUNTRY = "IN"
FETCHED_AT = datetime(2020, 9, 15, 6, 0, 0, tzinfo=UTC)
CALL_SID = "f1ca1057692d586b23b4e7ffcc3216mk"

SIP_AGENT = "913f2760d153d744cd61eb81a98616ak"
SANJAY = "a13f2760d153d744cd61eb81a98616ak"
PRIYA = "b13f2760d153d744cd61eb81a98616ak"
CUSTOMER = "213f2560d153d744cd61eb81a98616ak"


def _format_checker() -> FormatChecker:
    """jsonschema's checkers, plus a real date-time check (rfc3339-validator is not a dep)."""
    checker = FormatChecker()

    def is_datetime(value: object) -> bool:
        if not isinstance(value, str):
            return True
        if "T" not in value:
            raise ValueError("no T between date and time")
        return datetime.fromisoformat(value).tzinfo is not None

    checker.checks("date-time", raises=ValueError)(is_datetime)
    return checker


VALIDATOR = Draft202012Validator(
    json.loads(SCHEMA_PATH.read_text(encoding="utf-8")), format_checker=_format_checker()
)


def load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((FIXTURES / name).read_text(encoding="utf-8"))
    return data


def seed_legs() -> dict[str, Any]:
    return dict(leg_details_of(load("legs_seed.json")))


def build(legs: Any, callback: dict[str, Any] | None = None, **kwargs: Any) -> dict[str, Any]:
    """build_record with the test defaults, checked against the schema every time."""
    kwargs.setdefault("default_country", DEFAULT_COUNTRY)
    kwargs.setdefault("fetched_at", FETCHED_AT)
    record = build_record(legs, callback, **kwargs)
    VALIDATOR.validate(record)
    json.dumps(record)  # every sink must be able to serialise it
    return record


def leg_by_sid(record: dict[str, Any], sid: str) -> dict[str, Any]:
    leg: dict[str, Any] = next(x for x in record["from"] + record["to"] if x["sid"] == sid)
    return leg


# --- the seed: inbound call, three agents dialled in turn ---------------------


def test_seed_keeps_legs_in_exotel_order() -> None:
    record = build(seed_legs(), {"CallSid": CALL_SID, "Status": "completed"})
    assert record["schema"] == SCHEMA_ID
    assert record["call_sid"] == CALL_SID
    assert record["account_sid"] == "exotel"
    assert [leg["sid"] for leg in record["from"]] == [CUSTOMER]
    assert [leg["sid"] for leg in record["to"]] == [SIP_AGENT, SANJAY, PRIYA]


def test_seed_every_leg_lasts_sixty_seconds() -> None:
    record = build(seed_legs(), {"CallSid": CALL_SID, "Status": "completed"})
    for leg in record["from"] + record["to"]:
        assert leg["duration_seconds"] == 60
        assert leg["started_at"] == "2020-09-15T11:01:20+05:30"
        assert leg["ended_at"] == "2020-09-15T11:02:20+05:30"
    assert record["started_at"] == "2020-09-15T11:01:20+05:30"
    assert record["ended_at"] == "2020-09-15T11:02:20+05:30"
    assert record["duration_seconds"] == 60


def test_seed_phone_numbers_and_kinds() -> None:
    record = build(seed_legs(), None)
    sip = leg_by_sid(record, SIP_AGENT)
    assert sip["kind"] == "sip"
    assert sip["phone_e164"] is None
    assert sip["contact_uri"] == "sip:aditya.sharma@acme.sip.exotel.com"
    assert leg_by_sid(record, SANJAY)["kind"] == "pstn"
    assert leg_by_sid(record, SANJAY)["phone_e164"] == "+919876543210"
    assert leg_by_sid(record, PRIYA)["phone_e164"] == "+919988776655"
    masked = leg_by_sid(record, CUSTOMER)
    assert masked["kind"] == "pstn"
    assert masked["contact_uri"] == "0987xxxxxxx"
    assert masked["phone_e164"] is None


def test_seed_without_direction_finds_agents_by_group_keys_and_infers_inbound() -> None:
    record = build(seed_legs(), {"CallSid": CALL_SID, "Status": "completed"})
    assert record["direction"] == "inbound"
    assert [leg["role"] for leg in record["from"]] == ["customer"]
    assert [leg["role"] for leg in record["to"]] == ["agent", "agent", "agent"]
    assert record["customer"] == {"contact_uri": "0987xxxxxxx", "phone_e164": None}
    assert record["agents"] == [
        {
            "name": "Aditya Sharma",
            "contact_uri": "sip:aditya.sharma@acme.sip.exotel.com",
            "status": "no-answer",
            "group_name": "Sales",
        },
        {
            "name": "Sanjay Mishra",
            "contact_uri": "+919876543210",
            "status": "completed",
            "group_name": "Sales",
        },
        {
            "name": "Priya Nair",
            "contact_uri": "09988776655",
            "status": "completed",
            "group_name": "Sales",
        },
    ]
    assert leg_by_sid(record, SANJAY)["group_id"] == "g-101"


def test_seed_answered_by_is_the_first_completed_agent() -> None:
    record = build(seed_legs(), {"CallSid": CALL_SID, "Status": "completed"})
    assert record["answered_by"] == {
        "sid": SANJAY,
        "name": "Sanjay Mishra",
        "contact_uri": "+919876543210",
    }
    assert record["missed"] is False
    assert record["status"] == "completed"


def test_all_agents_no_answer_is_missed() -> None:
    legs = seed_legs()
    legs["to"] = [dict(leg, status="no-answer") for leg in legs["to"]]
    record = build(legs, {"CallSid": CALL_SID, "Status": "no-answer"})
    assert record["answered_by"] is None
    assert record["missed"] is True
    assert record["status"] == "no-answer"
    assert len(record["agents"]) == 3


def test_outbound_callback_flips_roles() -> None:
    record = build(seed_legs(), {"CallSid": CALL_SID, "Direction": "outbound-api"})
    assert record["direction"] == "outbound"
    assert [leg["role"] for leg in record["from"]] == ["agent"]
    assert [leg["role"] for leg in record["to"]] == ["customer"] * 3
    assert record["agents"] == [
        {"name": None, "contact_uri": "0987xxxxxxx", "status": "completed", "group_name": None}
    ]
    assert record["answered_by"] == {"sid": CUSTOMER, "name": None, "contact_uri": "0987xxxxxxx"}
    assert record["missed"] is False
    # the first customer leg is the SIP one: no phone number
    assert record["customer"] == {
        "contact_uri": "sip:aditya.sharma@acme.sip.exotel.com",
        "phone_e164": None,
    }


def test_inbound_callback_agrees_with_group_keys() -> None:
    record = build(seed_legs(), {"CallSid": CALL_SID, "Direction": "incoming"})
    assert record["direction"] == "inbound"
    assert record["answered_by"] is not None
    assert record["answered_by"]["sid"] == SANJAY


def test_direction_argument_wins_over_the_callback() -> None:
    record = build(seed_legs(), {"Direction": "inbound"}, direction="outbound")
    assert record["direction"] == "outbound"
    assert record["from"][0]["role"] == "agent"


def test_status_argument_wins_over_the_callback() -> None:
    record = build(seed_legs(), {"Status": "completed"}, status="busy")
    assert record["status"] == "busy"


# --- the documented example ---------------------------------------------------


def test_docs_example_builds_as_outbound_click_to_call() -> None:
    legs = leg_details_of(load("legs_docs_example.json"))
    record = build(legs, {"CallSid": CALL_SID, "Direction": "outbound-api", "Status": "completed"})
    assert [leg["sid"] for leg in record["from"]] == [
        "213f2560d153d744cd61eb81a98616ak",
        "813f2660d153d744cd61eb81a98616ak",
    ]
    assert [leg["name"] for leg in record["agents"]] == ["Aditya Sharma", None]
    assert record["answered_by"] is not None
    assert record["answered_by"]["name"] == "Aditya Sharma"
    assert record["customer"] == {"contact_uri": "09988xxxxxx", "phone_e164": None}
    assert all(leg["phone_e164"] is None for leg in record["from"] + record["to"])  # all masked
    assert record["started_at"] == "2020-09-15T11:01:20+05:30"
    assert record["ended_at"] == "2020-09-15T11:04:20+05:30"
    assert record["duration_seconds"] == 180
    assert record["to"][0]["duration_seconds"] == 175


def test_docs_example_without_direction_follows_the_group_key_rule() -> None:
    """Pinned on purpose: the docs' `to` leg carries null group keys, so the group-key
    rule (worker/calls/enrich.py) makes it the agents' side though Exotel named it "Customer"."""
    legs = leg_details_of(load("legs_docs_example.json"))
    record = build(legs, None)
    assert record["direction"] == "inbound"
    assert [leg["role"] for leg in record["to"]] == ["agent"]
    assert record["callback"] == {}
    assert record["status"] == ("completed" if record["answered_by"] else record["to"][0]["status"])
    assert record["recording_url"] is None


# --- the role rule when nothing else decides ----------------------------------


def _plain_leg(sid: str, status: str = "completed", **extra: Any) -> dict[str, Any]:
    return {
        "sid": sid,
        "contact_uri": "+919876543210",
        "date_created": "2020-09-15 11:01:20+05:30",
        "date_updated": "2020-09-15 11:02:20+05:30",
        "status": status,
        **extra,
    }


@pytest.mark.parametrize(
    ("from_extra", "to_extra", "agents_side", "direction"),
    [
        ({}, {}, "from", None),
        ({"group_id": "g"}, {"group_name": "Sales"}, "from", None),
        ({"group_name": None}, {}, "from", "outbound"),
        ({}, {"group_id": None}, "to", "inbound"),
    ],
    ids=["neither", "both", "from-only", "to-only"],
)
def test_group_key_rule(
    from_extra: dict[str, Any], to_extra: dict[str, Any], agents_side: str, direction: str | None
) -> None:
    legs = {
        "call_sid": CALL_SID,
        "account_sid": "exotel",
        "from": [_plain_leg("f1", **from_extra)],
        "to": [_plain_leg("t1", **to_extra)],
    }
    record = build(legs, {"Status": "completed"})
    assert record["direction"] == direction
    other = "to" if agents_side == "from" else "from"
    assert record[agents_side][0]["role"] == "agent"
    assert record[other][0]["role"] == "customer"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("inbound", "inbound"),
        ("incoming", "inbound"),
        ("Inbound", "inbound"),
        ("outbound-dial", "outbound"),
        ("outbound-api", "outbound"),
        ("outbound", "outbound"),
        ("sideways", None),
        ("", None),
        (7, None),
    ],
)
def test_direction_from_the_callback(value: Any, expected: str | None) -> None:
    legs = {"call_sid": CALL_SID, "from": [_plain_leg("f1")], "to": [_plain_leg("t1")]}
    record = build(legs, {"Direction": value})
    assert record["direction"] == expected


@pytest.mark.parametrize(
    ("callback", "expected"),
    [
        ({"Status": "COMPLETED"}, "completed"),
        ({"CallStatus": "completed", "DialCallStatus": "no-answer"}, "no-answer"),
        ({"CallStatus": "busy"}, "busy"),
        ({"call_sid": CALL_SID, "event_type": "terminal", "status": "failed"}, "failed"),
        ({"Status": "", "DialCallStatus": "canceled"}, "canceled"),
        ({"Status": "  ", "CallStatus": "busy"}, "busy"),
        ({"DialCallStatus": "null", "CallStatus": "completed"}, "completed"),
    ],
)
def test_status_from_the_callback(callback: dict[str, Any] | None, expected: str | None) -> None:
    assert build(seed_legs(), callback)["status"] == expected


@pytest.mark.parametrize("callback", [{}, None, {"Status": "free"}, {"Status": "null"}])
def test_without_an_outcome_in_the_callback_the_legs_say_how_the_call_ended(
    callback: dict[str, Any] | None,
) -> None:
    """A line state (free) or nothing is never the call's status: the legs decide."""
    answered = build(seed_legs(), callback)
    assert answered["answered_by"] is not None
    assert answered["status"] == "completed"
    nobody = _plain_leg("a1", status="no-answer", group_id="g")
    customer = _plain_leg("c1", status="canceled")
    record = build({"call_sid": CALL_SID, "from": [customer], "to": [nobody]}, callback)
    assert record["missed"] is True
    assert record["status"] == "canceled"


# --- callback fields ----------------------------------------------------------


def test_recording_url_custom_field_and_callback_copy() -> None:
    callback = {
        "CallSid": CALL_SID,
        "Status": "completed",
        "RecordingUrl": "https://s3-ap-southeast-1.amazonaws.com/exotelrecordings/acme/abc123.mp3",
        "CustomField": "order_12345",
        "Legs": [{"OnCallDuration": 335, "Status": "completed", "AnsweredBy": "NA"}],
    }
    original = copy.deepcopy(callback)
    record = build(seed_legs(), callback)
    assert record["recording_url"] == callback["RecordingUrl"]
    assert record["custom_field"] == "order_12345"
    assert record["callback"] == original
    assert callback == original  # the input is not touched


def test_ccm_snake_case_callback_fields() -> None:
    callback = {
        "call_sid": CALL_SID,
        "event_type": "terminal",
        "recording_url": "https://recordings.exotel.com/acme/r.mp3",
        "custom_field": "lead-42",
    }
    record = build(seed_legs(), callback)
    assert record["recording_url"] == "https://recordings.exotel.com/acme/r.mp3"
    assert record["custom_field"] == "lead-42"


@pytest.mark.parametrize(
    ("url", "kept"),
    [
        ("https://recordings.exotel.com/acme/r.mp3", True),
        ("https://exotel.in/r.mp3", True),
        ("https://s3-ap-southeast-1.amazonaws.com/exotelrecordings/acme/r.mp3", True),
        # anything else a forged callback might carry into CRM notes
        ("https://s3-ap-southeast-1.amazonaws.com/attacker-bucket/r.mp3", False),
        ("https://evil.example/r.mp3", False),
        ("https://exotel.com.evil.example/r.mp3", False),
        ("https://evilexotel.com/r.mp3", False),
        ("http://recordings.exotel.com/r.mp3", False),
        ("https://user:pw@recordings.exotel.com/r.mp3", False),
        ("javascript:alert(1)//exotel.com", False),
        ("https://[::1/r.mp3", False),
    ],
)
def test_recording_url_is_kept_only_on_exotel_hosts(url: str, kept: bool) -> None:
    record = build(seed_legs(), {"CallSid": CALL_SID, "RecordingUrl": url})
    assert record["recording_url"] == (url if kept else None)


def test_recording_hosts_can_be_extended() -> None:
    from worker.settings import Settings

    settings = Settings.from_env(
        {"RECORDING_HOSTS": "media.example.org, cdn.example.net/rec/"}, dotenv=False
    )
    url = "https://media.example.org/r.mp3"
    record = build_record(seed_legs(), {"CallSid": CALL_SID, "RecordingUrl": url},
                          default_country="IN", fetched_at=FETCHED_AT,
                          recording_hosts=settings.recording_hosts)
    assert record["recording_url"] == url
    assert recording_allowed("https://cdn.example.net/rec/1.mp3", settings.recording_hosts)
    assert not recording_allowed("https://cdn.example.net/other.mp3", settings.recording_hosts)


@pytest.mark.parametrize("empty", ["", "   ", "null", None])
def test_empty_recording_url_and_custom_field_are_null(empty: str | None) -> None:
    record = build(seed_legs(), {"RecordingUrl": empty, "CustomField": empty})
    assert record["recording_url"] is None
    assert record["custom_field"] is None


def test_call_sid_falls_back_to_the_callback() -> None:
    legs = seed_legs()
    del legs["call_sid"]
    assert build(legs, {"CallSid": "abc123"})["call_sid"] == "abc123"


# --- times --------------------------------------------------------------------


def test_fetched_at_is_utc_with_offset() -> None:
    ist = timezone(timedelta(hours=5, minutes=30))
    record = build(seed_legs(), None, fetched_at=datetime(2020, 9, 15, 11, 30, tzinfo=ist))
    assert record["fetched_at"] == "2020-09-15T06:00:00+00:00"
    naive = build(seed_legs(), None, fetched_at=datetime(2020, 9, 15, 6, 0))
    assert naive["fetched_at"] == "2020-09-15T06:00:00+00:00"


def test_naive_times_are_india_time() -> None:
    """Exotel's v1 times carry no offset and are IST."""
    leg = _plain_leg("t1", date_created="2020-09-15 05:31:20", date_updated="2020-09-15 05:32:00")
    record = build({"call_sid": CALL_SID, "from": [], "to": [leg]}, None)
    assert record["to"][0]["started_at"] == "2020-09-15T05:31:20+05:30"
    assert record["to"][0]["duration_seconds"] == 40


def test_mixed_offsets_compare_as_instants() -> None:
    early = _plain_leg(
        "f1", date_created="2020-09-15T05:00:00Z", date_updated="2020-09-15 10:31:00+05:30"
    )
    late = _plain_leg(
        "t1", date_created="2020-09-15 10:31:00+05:30", date_updated="2020-09-15T05:05:00Z"
    )
    record = build({"call_sid": CALL_SID, "from": [early], "to": [late]}, None)
    assert record["started_at"] == "2020-09-15T05:00:00+00:00"
    assert record["ended_at"] == "2020-09-15T05:05:00+00:00"
    assert record["duration_seconds"] == 300
    assert record["from"][0]["duration_seconds"] == 60


@pytest.mark.parametrize(
    ("created", "updated"),
    [
        ("not a date", "2020-09-15 11:02:20+05:30"),
        ("2020-09-15 11:01:20+05:30", None),
        ("0000-00-00 00:00:00", "2020-09-15 11:02:20+05:30"),
        ("2020-09-15", "2020-09-15 11:02:20+05:30"),
        (1600147880, "2020-09-15 11:02:20+05:30"),
    ],
)
def test_unusable_times_give_null_duration(created: Any, updated: Any) -> None:
    leg = _plain_leg("t1", date_created=created, date_updated=updated)
    record = build({"call_sid": CALL_SID, "from": [], "to": [leg]}, None)
    assert record["to"][0]["duration_seconds"] is None
    assert record["duration_seconds"] is None


def test_end_before_start_is_zero_not_negative() -> None:
    leg = _plain_leg(
        "t1", date_created="2020-09-15 11:02:20+05:30", date_updated="2020-09-15 11:01:20+05:30"
    )
    record = build({"call_sid": CALL_SID, "from": [], "to": [leg]}, None)
    assert record["to"][0]["duration_seconds"] == 0
    assert record["duration_seconds"] == 0


# --- phone numbers ------------------------------------------------------------


@pytest.mark.parametrize(
    ("contact_uri", "kind", "e164"),
    [
        ("+919876543210", "pstn", "+919876543210"),
        ("09988776655", "pstn", "+919988776655"),
        ("919876543210", "pstn", "+919876543210"),
        ("+91 98765-43210", "pstn", "+919876543210"),
        ("tel:+919876543210", "pstn", "+919876543210"),
        ("0987xxxxxxx", "pstn", None),
        ("09976xxxxxx", "pstn", None),
        ("09988xxxxxx", "pstn", None),
        ("1234", "pstn", None),
        ("+0000", "pstn", None),
        ("SIP:agent@acme.sip.exotel.com", "sip", None),
        ("agent@acme.sip.exotel.com", "sip", None),
        ("sips:agent@acme.example", "sip", None),
        ("", None, None),
        (None, None, None),
        (919876543210, "pstn", "+919876543210"),
    ],
)
def test_contact_uri_kind_and_e164(contact_uri: Any, kind: str | None, e164: str | None) -> None:
    leg = _plain_leg("t1", contact_uri=contact_uri)
    record = build({"call_sid": CALL_SID, "from": [], "to": [leg]}, None)
    assert record["to"][0]["kind"] == kind
    assert record["to"][0]["phone_e164"] == e164


def test_default_country_reads_national_numbers() -> None:
    leg = _plain_leg("t1", contact_uri="(650) 253-0000")
    legs = {"call_sid": CALL_SID, "from": [], "to": [leg]}
    assert build(legs, None, default_country="US")["to"][0]["phone_e164"] == "+16502530000"
    assert build(legs, None, default_country="ZZ")["to"][0]["phone_e164"] is None


# --- the envelope -------------------------------------------------------------


def test_leg_details_of_extracts_the_object() -> None:
    details = leg_details_of(load("legs_seed.json"))
    assert details["call_sid"] == CALL_SID


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"response": None},
        {"response": {"status": "failure", "error_data": {"code": 10743}}},
        {"response": {"leg_details": []}},
        {"response": {"leg_details": "nope"}},
        {"request_id": "r-1", "response": "oops"},
    ],
)
def test_leg_details_of_rejects_malformed_bodies(body: dict[str, Any]) -> None:
    with pytest.raises(PermanentError, match=CALL_SID):
        leg_details_of(body, call_sid=CALL_SID)


def test_leg_details_of_names_unknown_call_and_request() -> None:
    with pytest.raises(PermanentError, match=r"unknown call.*request_id r-9"):
        leg_details_of({"request_id": "r-9", "response": {"status": "failure"}})


# --- tolerance ----------------------------------------------------------------


@pytest.mark.parametrize(
    "legs",
    [
        {},
        {"from": None, "to": None},
        {"from": "x", "to": 5},
        {"from": [None, 1, "a", []], "to": [{}]},
        {"from": {"sid": "lone", "status": "completed"}, "to": []},
        {
            "call_sid": 12345,
            "account_sid": ["x"],
            "from": [
                {
                    "sid": True,
                    "name": {"first": "A"},
                    "contact_uri": ["+919876543210"],
                    "date_created": 3.5,
                    "date_updated": "2020-13-45 99:99:99",
                    "status": None,
                    "group_id": 101,
                    "group_name": "",
                }
            ],
            "to": [
                {"contact_uri": "   ", "status": 200, "date_created": "0001-01-01T00:00:00+05:30"}
            ],
        },
        {"to": [{"contact_uri": "+" * 500, "date_created": "9999-12-31T23:59:59-05:30"}]},
        {"to": [{"contact_uri": "\x00\ufffd", "date_updated": "\x00"}]},
    ],
)
def test_garbage_legs_never_raise(legs: Any) -> None:
    record = build(legs, {"CallSid": CALL_SID, "Status": "completed", "Odd": b"\xff", "F": 1.5})
    assert record["schema"] == SCHEMA_ID
    assert isinstance(record["missed"], bool)


def test_garbage_top_level_inputs_never_raise() -> None:
    record = build_record(
        None,  # type: ignore[arg-type]
        "not a mapping",  # type: ignore[arg-type]
        default_country=None,  # type: ignore[arg-type]
        fetched_at=FETCHED_AT,
    )
    assert record["from"] == [] and record["to"] == [] and record["callback"] == {}


_json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
_odd_strings = st.sampled_from(
    [
        "2020-09-15 11:01:20+05:30",
        "2020-09-15 11:01:20",
        "2020-09-15T11:01:20Z",
        "sip:a@b",
        "+919876543210",
        "0987xxxxxxx",
        "completed",
        "no-answer",
        "",
    ]
)
_leg_values = _json_scalars | _odd_strings | st.lists(_json_scalars, max_size=2)
_leg_keys = st.sampled_from(
    [
        "sid",
        "name",
        "contact_uri",
        "date_created",
        "date_updated",
        "status",
        "group_id",
        "group_name",
        "other",
    ]
)
_legs_lists = st.lists(
    st.dictionaries(_leg_keys, _leg_values, max_size=9) | _json_scalars, max_size=4
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    from_legs=_legs_lists | _json_scalars,
    to_legs=_legs_lists | _json_scalars,
    direction=st.none() | _odd_strings | st.sampled_from(["inbound", "outbound-dial"]),
)
def test_random_legs_never_raise_and_always_validate(
    from_legs: Any, to_legs: Any, direction: Any
) -> None:
    legs = {"call_sid": CALL_SID, "from": from_legs, "to": to_legs}
    record = build(legs, {"Direction": direction})
    assert len(record["from"]) <= (len(from_legs) if isinstance(from_legs, list) else 1)
    assert record["missed"] is (record["answered_by"] is None)


# --- the schema can fail ------------------------------------------------------


def test_schema_is_a_valid_draft_2020_12_schema() -> None:
    Draft202012Validator.check_schema(json.loads(SCHEMA_PATH.read_text(encoding="utf-8")))


def _mutations() -> list[tuple[str, Any]]:
    def set_top(key: str, value: Any) -> Any:
        return lambda r: r.__setitem__(key, value)

    return [
        ("missed is a string", set_top("missed", "no")),
        ("unknown top-level field", set_top("extra", 1)),
        ("missing field", lambda r: r.pop("fetched_at")),
        ("wrong schema id", set_top("schema", "exolegs.call/v2")),
        ("bad direction", set_top("direction", "sideways")),
        ("naive fetched_at", set_top("fetched_at", "2020-09-15T06:00:00")),
        ("negative duration", set_top("duration_seconds", -1)),
        ("unknown leg field", lambda r: r["to"][0].__setitem__("extra", 1)),
        ("bad role", lambda r: r["to"][0].__setitem__("role", "boss")),
        ("bad kind", lambda r: r["to"][0].__setitem__("kind", "voip")),
        ("bad e164", lambda r: r["to"][1].__setitem__("phone_e164", "09988776655")),
        ("unknown answered_by field", lambda r: r["answered_by"].__setitem__("x", 1)),
        ("date-time format", set_top("started_at", "2020-19-45T11:01:20+05:30")),
    ]


@pytest.mark.parametrize(("what", "mutate"), _mutations(), ids=[m[0] for m in _mutations()])
def test_schema_rejects_a_wrong_record(what: str, mutate: Any) -> None:
    record = build(seed_legs(), {"CallSid": CALL_SID, "Status": "completed"})
    mutate(record)
    with pytest.raises(ValidationError):
        VALIDATOR.validate(record)
