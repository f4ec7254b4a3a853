"""event_from_fields: which callbacks end a call, and which call sids are refused."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from web.payload import decode_body
from worker.calls.callbacks import CallbackError, CallbackEvent, event_from_fields
from worker.settings import CALL_SID_RE

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "callbacks"
SID = "80bfbec2d78bbbf10fb851f4fa165211"


def load(name: str) -> dict[str, Any]:
    """Decode a fixture the way the edge would: JSON/form as a POST body, .query as a GET."""
    raw = (FIXTURES / name).read_bytes().strip()
    if name.endswith(".json"):
        return decode_body("application/json", raw, [])
    if name.endswith(".form"):
        return decode_body("application/x-www-form-urlencoded", raw, [])
    query = parse_qsl(raw.decode(), keep_blank_values=True)
    return decode_body(None, b"", query)


def event(**fields: Any) -> CallbackEvent:
    return event_from_fields({"CallSid": SID, **fields})


# --- every example in docs/exotel.md and tests/fixtures/callbacks ---------------------

FIXTURE_CASES = [
    # file, call sid, event, status, terminal, direction
    ("v1_terminal.json", SID, "terminal", "completed", True, "outbound"),
    ("v1_terminal.form", SID, "terminal", "completed", True, "outbound"),
    ("v1_answered.form", SID, "answered", "in-progress", False, "outbound"),
    ("v1_busy_minimal.form", "5a7c9e1b3d5f4a6c8e0b2d4f6a8c0e12", "terminal", "busy", True, None),
    ("insights.form", SID, "terminal", "completed", True, None),
    (
        "passthru_completed.json",
        "23c162077629863c1a2d7f29263a162m",
        "terminal",
        "completed",
        True,
        "inbound",
    ),
    (
        "passthru_canceled.query",
        "23c162077629863c1a2d7f29263a163n",
        "terminal",
        "canceled",
        True,
        "inbound",
    ),
    (
        "passthru_no_answer.query",
        "23c162077629863c1a2d7f29263a164p",
        "terminal",
        "no-answer",
        True,
        "inbound",
    ),
    # Connect-applet hooks report the agent's line, never the call's outcome
    ("connect_dial.json", "4f1e2d3c4b5a69788796a5b4c3d2e1f0", "agent-dial-busy", None, False, None),
    (
        "connect_terminal.query",
        "4f1e2d3c4b5a69788796a5b4c3d2e1f0",
        "agent-terminal-free",
        None,
        False,
        None,
    ),
    ("ccm_terminal.json", "b6f0d2c4e8a1437f9c5d2e7a1b3c4d5e", "terminal", None, True, None),
    ("ccm_answered.json", "b6f0d2c4e8a1437f9c5d2e7a1b3c4d5e", "answered", None, False, None),
]


@pytest.mark.parametrize(
    ("name", "call_sid", "kind", "status", "terminal", "direction"), FIXTURE_CASES
)
def test_fixture(
    name: str, call_sid: str, kind: str, status: str | None, terminal: bool, direction: str | None
) -> None:
    fields = load(name)
    ev = event_from_fields(fields)
    assert (ev.call_sid, ev.event, ev.status, ev.terminal, ev.direction) == (
        call_sid,
        kind,
        status,
        terminal,
        direction,
    )
    assert ev.fields == fields


def test_every_fixture_file_is_covered() -> None:
    on_disk = {p.name for p in FIXTURES.iterdir() if p.suffix in {".json", ".form", ".query"}}
    assert on_disk == {case[0] for case in FIXTURE_CASES}


def test_passthru_fixture_as_get_query_is_the_same_event() -> None:
    fields = json.loads((FIXTURES / "passthru_completed.json").read_text())
    query = [(k, v) for k, v in fields.items() if isinstance(v, str)]
    ev = event_from_fields(decode_body(None, b"", query))
    assert (ev.event, ev.status, ev.terminal, ev.direction) == (
        "terminal",
        "completed",
        True,
        "inbound",
    )


# --- the terminal table ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "kind", "status", "terminal"),
    [
        # v1 StatusCallback: terminal statuses, with EventType terminal or without one
        ({"Status": "completed"}, "terminal", "completed", True),
        ({"Status": "failed"}, "terminal", "failed", True),
        ({"Status": "busy"}, "terminal", "busy", True),
        ({"Status": "no-answer"}, "terminal", "no-answer", True),
        ({"Status": "canceled"}, "terminal", "canceled", True),
        ({"Status": "cancelled"}, "terminal", "canceled", True),
        ({"Status": "No_Answer"}, "terminal", "no-answer", True),
        ({"Status": " COMPLETED "}, "terminal", "completed", True),
        ({"Status": "completed", "EventType": "terminal"}, "terminal", "completed", True),
        ({"Status": "completed", "EventType": "TERMINAL"}, "terminal", "completed", True),
        ({"Status": "busy", "EventType": ""}, "terminal", "busy", True),
        # v1 answered event
        ({"Status": "in-progress", "EventType": "answered"}, "answered", "in-progress", False),
        ({"Status": "completed", "EventType": "answered"}, "answered", "completed", False),
        ({"Status": "in-progress"}, "in-progress", "in-progress", False),
        # Connect-applet agent passthru
        ({"Status": "busy", "EventType": "Dial"}, "dial", "busy", False),
        ({"Status": "busy", "EventType": "dial"}, "dial", "busy", False),
        ({"Status": "busy", "EventType": "Ringing"}, "ringing", "busy", False),
        ({"Status": "busy", "EventType": "Answered"}, "answered", "busy", False),
        ({"Status": "free", "EventType": "Terminal"}, "agent-terminal-free", None, False),
        ({"Status": "free"}, "agent-line-free", None, False),
        # Passthru
        ({"DialCallStatus": "completed", "CallType": "completed"}, "terminal", "completed", True),
        ({"DialCallStatus": "canceled", "CallType": "client-hangup"}, "terminal", "canceled", True),
        ({"DialCallStatus": "no-answer", "CallType": "incomplete"}, "terminal", "no-answer", True),
        ({"DialCallStatus": "failed", "CallType": "incomplete"}, "terminal", "failed", True),
        ({"CallType": "voicemail"}, "terminal", None, True),
        ({"CallType": "client-hangup"}, "terminal", None, True),
        ({"DialCallStatus": "busy"}, "terminal", "busy", True),
        ({"CallStatus": "completed"}, "terminal", "completed", True),
        ({"CallStatus": "ringing"}, "ringing", "ringing", False),
        ({"CallStatus": "queued"}, "queued", "queued", False),
        ({"CallStatus": "in-progress"}, "in-progress", "in-progress", False),
        ({"CallType": "call-attempt"}, "call-attempt", None, False),
        (
            {"CallType": "call-attempt", "DialCallStatus": "no-answer"},
            "call-attempt",
            "no-answer",
            False,
        ),
        ({"DialCallStatus": "no-answer", "CallStatus": "completed"}, "terminal", "no-answer", True),
        ({"DialCallStatus": "", "CallStatus": "busy"}, "terminal", "busy", True),
        # CCM
        ({"event_type": "terminal"}, "terminal", None, True),
        ({"event_type": "Terminal", "call_state": "terminal"}, "terminal", None, True),
        ({"event_type": "answered", "call_state": "active"}, "answered", None, False),
        ({"event_type": "answered", "call_state": "terminal"}, "answered", None, False),
        ({"call_state": "terminal"}, "terminal", None, True),
        ({"call_state": "active"}, "status", None, False),
        ({"status": "agent_unanswered"}, "terminal", "agent-unanswered", True),
        ({"status": "customer_unanswered"}, "terminal", "customer-unanswered", True),
        ({"status": "agent_cancelled"}, "terminal", "agent-cancelled", True),
        ({"call_status": "failed"}, "terminal", "failed", True),
        ({"status": "from_leg_unanswered"}, "terminal", "from-leg-unanswered", True),
        ({"status": "to_leg_unanswered"}, "terminal", "to-leg-unanswered", True),
        ({"status": "from_leg_cancelled"}, "terminal", "from-leg-cancelled", True),
        ({"status": "to_leg_no_dial"}, "terminal", "to-leg-no-dial", True),
        ({"status": "from_leg_no_dial"}, "terminal", "from-leg-no-dial", True),
        # in doubt: not terminal
        ({}, "status", None, False),
        ({"Status": "exploded"}, "exploded", "exploded", False),
        ({"Status": None}, "status", None, False),
        ({"Status": ["completed"]}, "status", None, False),
        ({"Status": {"a": "completed"}}, "status", None, False),
        ({"Status": 3}, "status", None, False),
        ({"Status": "<script>"}, "status", None, False),
        ({"Status": "completed", "EventType": "hangup"}, "hangup", "completed", False),
        ({"Status": "completed", "EventType": "???"}, "unknown", "completed", False),
        ({"Status": "completed", "EventType": ["terminal"]}, "unknown", "completed", False),
        ({"Status": "x" * 40}, "status", None, False),
        ({"Status": "terminal"}, "status", "terminal", False),
    ],
)
def test_terminal_table(
    fields: dict[str, Any], kind: str, status: str | None, terminal: bool
) -> None:
    ev = event(**fields)
    assert (ev.event, ev.status, ev.terminal) == (kind, status, terminal)


def test_v1_busy_without_event_type_is_terminal_but_dial_busy_is_not() -> None:
    assert event(Status="busy").terminal
    assert not event(Status="busy", EventType="Dial").terminal


def test_first_usable_status_key_wins() -> None:
    assert event(Status="completed", DialCallStatus="no-answer").status == "completed"
    assert event(Status="???", DialCallStatus="no-answer").status == "no-answer"
    assert event(CallStatus="completed", status="failed").status == "completed"


# --- direction -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "direction"),
    [
        ("inbound", "inbound"),
        ("incoming", "inbound"),
        ("Incoming", "inbound"),
        ("outbound-dial", "outbound"),
        ("outbound-api", "outbound"),
        ("outbound_api", "outbound"),
        ("outbound", "outbound"),
        ("sideways", None),
        ("", None),
        (None, None),
        (1, None),
        (["inbound"], None),
    ],
)
def test_direction(value: Any, direction: str | None) -> None:
    assert event(Direction=value).direction == direction


def test_lowercase_direction_key() -> None:
    assert event(direction="outbound").direction == "outbound"


# --- call sid ------------------------------------------------------------------------------


def test_call_sid_keys_in_order() -> None:
    assert event_from_fields({"call_sid": "b"}).call_sid == "b"
    assert event_from_fields({"Sid": "c"}).call_sid == "c"
    assert event_from_fields({"CallSID": "d"}).call_sid == "d"
    assert event_from_fields({"CallSid": "a", "call_sid": "b"}).call_sid == "a"
    assert event_from_fields({"CallSid": None, "call_sid": "b"}).call_sid == "b"


@pytest.mark.parametrize("fields", [{}, {"Status": "completed"}, {"CallSid": None}])
def test_missing_call_sid(fields: dict[str, Any]) -> None:
    with pytest.raises(CallbackError) as info:
        event_from_fields(fields)
    assert str(info.value) == "missing call sid (CallSid or call_sid)"


@pytest.mark.parametrize(
    "sid",
    [
        "../../x",
        "",
        "a" * 65,
        "abc\u00e9",
        "\u0661\u0662",
        "abc\x00",
        "abc\n",
        " abc",
        "a:b",
        "a/b",
        "a.b",
        ["abc"],
        {"a": "b"},
        123,
        True,
        b"abc",
        "x" * 100_000,
    ],
)
def test_malformed_call_sid(sid: Any) -> None:
    with pytest.raises(CallbackError) as info:
        event_from_fields({"CallSid": sid, "Status": "completed"})
    message = str(info.value)
    assert message.startswith("malformed call sid: ")
    assert len(message) <= 20 + 64 + 10
    assert "\n" not in message and "\x00" not in message


def test_malformed_call_sid_is_repr_and_truncated() -> None:
    with pytest.raises(CallbackError) as info:
        event_from_fields({"CallSid": "../../" + "x" * 500})
    assert str(info.value).startswith("malformed call sid: '../../xxx")
    assert len(str(info.value)) < 100


def test_malformed_first_key_is_not_rescued_by_a_later_one() -> None:
    with pytest.raises(CallbackError):
        event_from_fields({"CallSid": "../x", "call_sid": "ok"})


@pytest.mark.parametrize("sid", ["a", "A" * 64, "abc_DEF-123", "0", "-", "_"])
def test_valid_call_sids(sid: str) -> None:
    assert event_from_fields({"CallSid": sid}).call_sid == sid


def test_callback_error_is_a_value_error() -> None:
    assert issubclass(CallbackError, ValueError)


# --- dedupe key, fields --------------------------------------------------------------------


def test_dedupe_key_identifies_call_and_event() -> None:
    terminal = event(Status="completed", EventType="terminal")
    assert terminal.dedupe_key == event(Status="completed", EventType="terminal").dedupe_key
    assert terminal.dedupe_key == f"{SID}:terminal:completed"
    answered = event(Status="in-progress", EventType="answered")
    assert answered.dedupe_key != terminal.dedupe_key
    other_call = event_from_fields({"CallSid": "other", "Status": "completed"})
    assert other_call.dedupe_key != terminal.dedupe_key
    assert event().dedupe_key == f"{SID}:status:-"


def test_dedupe_key_ignores_volatile_fields() -> None:
    first = event(Status="completed", CurrentTime="2022-02-23 12:32:25")
    retry = event(Status="completed", CurrentTime="2022-02-23 12:37:25")
    assert first.dedupe_key == retry.dedupe_key


def test_dial_events_to_different_agents_are_different_events() -> None:
    a = event(Status="busy", EventType="Dial", DialWhomNumber="09999999991")
    b = event(Status="busy", EventType="Dial", DialWhomNumber="09999999992")
    assert a.dedupe_key != b.dedupe_key
    assert (
        a.dedupe_key
        == event(Status="busy", EventType="Dial", DialWhomNumber="09999999991").dedupe_key
    )
    assert a.dedupe_key.endswith(":09999999991")


def test_dedupe_key_is_safe_for_a_redis_key() -> None:
    ev = event(Status="busy", EventType="Dial", DialWhomNumber="+91 99:99\n\x00" + "9" * 100)
    assert ev.dedupe_key == f"{SID}:agent-dial-busy:-:+9199" + "9" * 27
    terminal = event(Status="busy")
    assert terminal.dedupe_key == f"{SID}:terminal:busy"


def test_fields_are_a_copy_of_what_was_received() -> None:
    received: dict[str, Any] = {"CallSid": SID, "Status": "completed", "Legs": [{"a": 1}]}
    ev = event_from_fields(received)
    assert ev.fields == received
    received["Status"] = "changed"
    assert ev.fields["Status"] == "completed"


def test_event_is_frozen() -> None:
    ev = event(Status="completed")
    with pytest.raises(AttributeError):
        ev.status = "busy"  # type: ignore[misc]


def test_parsing_layer_does_not_import_flask() -> None:
    code = (
        "import sys, worker.calls.callbacks, web.payload; "
        "bad = [m for m in sys.modules if m == 'flask' or m.startswith(('flask.', 'werkzeug'))]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[3])


# --- properties ------------------------------------------------------------------------------

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=12,
)
INTERESTING_SIDS = st.one_of(
    st.from_regex(r"[A-Za-z0-9_-]{1,64}", fullmatch=True),
    st.sampled_from(["", "../../x", "a" * 65, "\x00", "abc\n", "é", " x"]),
    JSON_VALUES,
)
KEYS = st.sampled_from(
    [
        "CallSid",
        "call_sid",
        "Sid",
        "CallSID",
        "Status",
        "EventType",
        "event_type",
        "CallType",
        "DialCallStatus",
        "CallStatus",
        "status",
        "call_status",
        "call_state",
        "Direction",
        "DialWhomNumber",
        "Legs",
    ]
) | st.text(max_size=10)
TOKENS = st.sampled_from(
    [
        "completed",
        "busy",
        "no-answer",
        "terminal",
        "Terminal",
        "Dial",
        "answered",
        "free",
        "call-attempt",
        "incomplete",
        "in-progress",
        "inbound",
        "outbound-api",
        "agent_unanswered",
        "",
        " ",
        "???",
    ]
)


def check(fields: dict[str, Any]) -> None:
    try:
        ev = event_from_fields(fields)
    except CallbackError as error:
        assert "\n" not in str(error)
        assert len(str(error)) <= len("malformed call sid: ") + 64
        return
    assert CALL_SID_RE.fullmatch(ev.call_sid)
    assert isinstance(ev.event, str) and ev.event
    assert ev.status is None or isinstance(ev.status, str)
    assert ev.direction in {None, "inbound", "outbound"}
    assert ev.terminal is (ev.event == "terminal")
    assert ev.dedupe_key.startswith(f"{ev.call_sid}:{ev.event}:")
    assert "\n" not in ev.dedupe_key and "\x00" not in ev.dedupe_key


@settings(max_examples=500, deadline=None)
@given(
    fields=st.dictionaries(KEYS, st.one_of(TOKENS, JSON_VALUES), max_size=8),
    sid_key=st.sampled_from(["CallSid", "call_sid", "Sid", "CallSID", None]),
    sid=INTERESTING_SIDS,
)
def test_any_json_object_gives_an_event_or_callback_error(
    fields: dict[str, Any], sid_key: str | None, sid: Any
) -> None:
    if sid_key is not None:
        fields = {**fields, sid_key: sid}
    check(fields)


@settings(max_examples=300, deadline=None)
@given(fields=st.dictionaries(st.text(max_size=12), st.text(max_size=70), max_size=10))
def test_any_form_dict_gives_an_event_or_callback_error(fields: dict[str, str]) -> None:
    check(fields)
