"""decode_body: every shape Exotel sends decodes, every odd input is a clean 4xx."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from web import payload as payload_module
from web.payload import MAX_BODY_BYTES, MAX_FIELDS, PayloadError, decode_body

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "callbacks"
FORM = "application/x-www-form-urlencoded"
JSON = "application/json"


def fixture_text(name: str) -> str:
    return (FIXTURES / name).read_text(encoding="utf-8").strip()


def fixture_json(name: str) -> dict[str, Any]:
    value = json.loads(fixture_text(name))
    assert isinstance(value, dict)
    return value


def stringify(value: Any) -> Any:
    """What a form-encoded copy of a JSON payload decodes to: every scalar a string."""
    if isinstance(value, dict):
        return {key: stringify(item) for key, item in value.items()}
    if isinstance(value, list):
        return [stringify(item) for item in value]
    return str(value)


def flatten(value: Any, prefix: str = "") -> list[tuple[str, str]]:
    """The inverse of the nesting rule: {"Legs": [{"Status": x}]} -> Legs[0][Status]=x."""
    if isinstance(value, dict):
        items: list[tuple[str, Any]] = list(value.items())
    elif isinstance(value, list):
        items = [(str(i), item) for i, item in enumerate(value)]
    else:
        return [(prefix, str(value))]
    pairs: list[tuple[str, str]] = []
    for key, item in items:
        pairs += flatten(item, f"{prefix}[{key}]" if prefix else key)
    return pairs


def multipart(pairs: list[tuple[str, str]], boundary: str = "----exolegs7MA4YWxk") -> bytes:
    out = b""
    for name, value in pairs:
        out += f"--{boundary}\r\n".encode()
        out += f'Content-Disposition: form-data; name="{name}"\r\n\r\n'.encode()
        out += value.encode() + b"\r\n"
    return out + f"--{boundary}--\r\n".encode()


def refused(
    content_type: str | None, body: bytes, query: list[tuple[str, str]] | None = None
) -> PayloadError:
    with pytest.raises(PayloadError) as info:
        decode_body(content_type, body, query or [])
    return info.value


# --- every example in docs/exotel.md and tests/fixtures/callbacks ---------------------


def test_v1_json_example_verbatim() -> None:
    body = (FIXTURES / "v1_terminal.json").read_bytes()
    assert decode_body(JSON, body, []) == fixture_json("v1_terminal.json")


def test_v1_form_flattened_legs_equals_the_json_example() -> None:
    fields = decode_body(FORM, fixture_text("v1_terminal.form").encode(), [])
    assert fields == stringify(fixture_json("v1_terminal.json"))
    assert fields["Legs"][0]["Status"] == "completed"
    assert fields["Legs"][1]["OnCallDuration"] == "320"


def test_v1_multipart_is_the_default_content_type_and_decodes_the_same() -> None:
    pairs = parse_qsl(fixture_text("v1_terminal.form"), keep_blank_values=True)
    body = multipart(pairs)
    fields = decode_body("multipart/form-data; boundary=----exolegs7MA4YWxk", body, [])
    assert fields == stringify(fixture_json("v1_terminal.json"))


def test_answered_form_keeps_empty_leg_status() -> None:
    fields = decode_body(FORM, fixture_text("v1_answered.form").encode(), [])
    assert fields["Status"] == "in-progress"
    assert fields["Legs"][1]["Status"] == ""


def test_fastglue_insights_form() -> None:
    fields = decode_body(FORM, fixture_text("insights.form").encode(), [])
    assert fields["Legs"] == [
        {},
        {"Insights": {"DetailedStatus": "CALL_COMPLETED", "RingingDuration": "4.39"}},
    ]
    assert fields["Insights"] == {"DialCallStatus": "completed"}


def test_passthru_get_fixture_round_trips_through_a_query_string() -> None:
    expected = fixture_json("passthru_completed.json")
    query = parse_qsl(urlencode(flatten(expected)), keep_blank_values=True)
    assert decode_body(None, b"", query) == expected


@pytest.mark.parametrize("name", ["passthru_canceled.query", "passthru_no_answer.query"])
def test_passthru_variants_from_query(name: str) -> None:
    query = parse_qsl(fixture_text(name), keep_blank_values=True)
    fields = decode_body(None, b"", query)
    assert fields["Direction"] == "incoming"
    assert fields["CallType"] in {"client-hangup", "incomplete"}


def test_passthru_canceled_legs_nested() -> None:
    query = parse_qsl(fixture_text("passthru_canceled.query"), keep_blank_values=True)
    fields = decode_body(None, b"", query)
    assert fields["Legs"][0]["CauseCode"] == "RING_TIMEOUT"
    assert fields["Legs"][0]["Cause"] == "1003"


@pytest.mark.parametrize("name", ["connect_dial.json", "ccm_terminal.json", "ccm_answered.json"])
def test_json_fixtures_decode_verbatim(name: str) -> None:
    assert decode_body(JSON, (FIXTURES / name).read_bytes(), []) == fixture_json(name)


# --- query merging, repeated keys -----------------------------------------------------


def test_query_is_merged_and_body_wins() -> None:
    fields = decode_body(FORM, b"Status=completed&a=body", [("a", "query"), ("q", "1")])
    assert fields == {"a": "body", "q": "1", "Status": "completed"}


def test_json_body_replaces_query_keys_at_top_level() -> None:
    query = [("Legs[0][Status]", "busy"), ("q", "1")]
    fields = decode_body(JSON, b'{"Legs": [{"Status": "completed"}]}', query)
    assert fields == {"Legs": [{"Status": "completed"}], "q": "1"}


def test_form_body_merges_with_query_per_flat_key() -> None:
    fields = decode_body(FORM, b"Legs[1][Status]=busy", [("Legs[0][Status]", "completed")])
    assert fields == {"Legs": [{"Status": "completed"}, {"Status": "busy"}]}


def test_repeated_keys_last_wins_everywhere() -> None:
    assert decode_body(FORM, b"a=1&a=2", []) == {"a": "2"}
    assert decode_body(None, b"", [("a", "1"), ("a", "2")]) == {"a": "2"}
    assert decode_body(JSON, b'{"a": 1, "a": 2}', []) == {"a": 2}
    body = multipart([("a", "1"), ("a", "2")], "b")
    assert decode_body("multipart/form-data; boundary=b", body, []) == {"a": "2"}
    assert decode_body(FORM, b"L[0][S]=x&L[0][S]=y", []) == {"L": [{"S": "y"}]}


def test_query_only_get() -> None:
    assert decode_body(None, b"", [("CallSid", "abc")]) == {"CallSid": "abc"}
    assert decode_body(None, b"", []) == {}


# --- content types --------------------------------------------------------------------


@pytest.mark.parametrize(
    "content_type",
    [
        "application/x-www-form-urlencoded; charset=UTF-8",
        "Application/X-WWW-Form-Urlencoded",
        "application/x-www-form-urlencoded;charset=iso-8859-1",
    ],
)
def test_form_content_type_variants(content_type: str) -> None:
    assert decode_body(content_type, b"a=%E2%82%B9", []) == {"a": "\u20b9"}


@pytest.mark.parametrize(
    "content_type",
    ["application/json; charset=utf-8", "APPLICATION/JSON", "application/vnd.x+json"],
)
def test_json_content_type_variants(content_type: str) -> None:
    assert decode_body(content_type, b'{"a": "b"}', []) == {"a": "b"}


@pytest.mark.parametrize("content_type", [None, "", "text/plain", "image/png", JSON, FORM])
@pytest.mark.parametrize("body", [b"", b"  \r\n"])
def test_empty_body_is_fine_with_any_type(content_type: str | None, body: bytes) -> None:
    assert decode_body(content_type, body, [("a", "1")]) == {"a": "1"}


@pytest.mark.parametrize(
    "content_type", [None, "", "text/plain", "text/plain; charset=utf-8", "image/png", "text/xml"]
)
def test_unsupported_type_with_a_body_is_415(content_type: str | None) -> None:
    assert refused(content_type, b"CallSid=abc").status == 415


def test_json_bom_tolerated() -> None:
    assert decode_body(JSON, '\ufeff{"a": 1}'.encode(), []) == {"a": 1}


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        (FORM, b"a=\xff"),
        (FORM, b"a=%FF"),
        (JSON, b'{"a": "\xc3"}'),
        (
            "multipart/form-data; boundary=b",
            b'--b\r\nContent-Disposition: form-data; name="a"\r\n\r\n\xff\r\n--b--\r\n',
        ),
    ],
)
def test_non_utf8_is_400(content_type: str, body: bytes) -> None:
    error = refused(content_type, body)
    assert (error.status, str(error)) == (400, "body is not valid UTF-8")


# --- size -----------------------------------------------------------------------------


def test_body_over_limit_is_413() -> None:
    body = b"a=" + b"x" * (MAX_BODY_BYTES - 1)
    assert refused(FORM, body).status == 413
    assert refused("image/png", body).status == 413


def test_body_at_limit_is_accepted() -> None:
    body = b"a=" + b"x" * (MAX_BODY_BYTES - 2)
    assert decode_body(FORM, body, [])["a"] == "x" * (MAX_BODY_BYTES - 2)


# --- JSON -----------------------------------------------------------------------------


@pytest.mark.parametrize("body", [b"[]", b"[1]", b'"x"', b"1", b"null", b"true"])
def test_json_must_be_an_object(body: bytes) -> None:
    error = refused(JSON, body)
    assert (error.status, str(error)) == (400, "JSON body must be an object")


@pytest.mark.parametrize("body", [b"{", b"{'a': 1}", b'{"a": 1} x', b'{"a": "\x01"}', b"\x00"])
def test_invalid_json_is_400(body: bytes) -> None:
    assert refused(JSON, body).status == 400


def nested(depth: int) -> bytes:
    """An object nested ``depth`` levels deep (the top level counts as 1)."""
    return b'{"a": ' * (depth - 1) + b"{}" + b"}" * (depth - 1)


def test_json_depth_limit() -> None:
    assert decode_body(JSON, nested(32), [])
    assert refused(JSON, nested(33)).status == 400
    list_nested = b'{"a": ' + b"[" * 31 + b"]" * 31 + b"}"
    assert decode_body(JSON, list_nested, [])
    assert refused(JSON, b'{"a": ' + b"[" * 32 + b"]" * 32 + b"}").status == 400


@pytest.mark.parametrize("open_", [b"[", b'{"a":'])
def test_json_nesting_bomb_is_400_not_recursion_error(open_: bytes) -> None:
    count = (MAX_BODY_BYTES - 2) // (len(open_) + 1)
    close = b"]" if open_ == b"[" else b"}"
    body = b'{"a":' + open_ * count + close * count + b"}"
    body = body[:MAX_BODY_BYTES] if len(body) > MAX_BODY_BYTES else body
    assert refused(JSON, body).status == 400


def test_brackets_inside_strings_do_not_count_as_depth() -> None:
    body = json.dumps({"a": "[" * 100 + "{" * 100}).encode()
    assert decode_body(JSON, body, []) == {"a": "[" * 100 + "{" * 100}


@pytest.mark.parametrize(
    "body", [b'{"a": NaN}', b'{"a": Infinity}', b'{"a": -Infinity}', b'{"a": 1e999}']
)
def test_nan_and_infinity_are_400(body: bytes) -> None:
    assert refused(JSON, body).status == 400


def test_huge_numbers_never_crash() -> None:
    assert refused(JSON, b'{"a": ' + b"9" * 5000 + b"}").status == 400
    assert decode_body(JSON, b'{"a": ' + b"9" * 1000 + b"}", [])["a"] == int("9" * 1000)
    assert decode_body(JSON, b'{"a": 1e308}', [])["a"] == 1e308


def test_json_nul_escape_is_400_but_escaped_backslash_is_not() -> None:
    assert refused(JSON, b'{"a": "x\\u0000"}').status == 400
    assert refused(JSON, b'{"a\\u0000": "x"}').status == 400
    assert refused(JSON, b'{"a": [{"b": "\\u0000"}]}').status == 400
    assert decode_body(JSON, b'{"a": "\\\\u0000"}', []) == {"a": "\\u0000"}


def test_json_keys_are_not_expanded() -> None:
    assert decode_body(JSON, b'{"Legs[0][Status]": "x"}', []) == {"Legs[0][Status]": "x"}


# --- NUL, field counts ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "query"),
    [
        (b"a=%00", []),
        (b"a%00=1", []),
        (b"", [("a", "\x00")]),
        (b"", [("a\x00", "1")]),
    ],
)
def test_nul_is_400(body: bytes, query: list[tuple[str, str]]) -> None:
    assert refused(FORM, body, query).status == 400


def test_raw_nul_in_form_body_is_400() -> None:
    assert refused(FORM, b"a=\x00").status == 400


def test_too_many_fields_is_400() -> None:
    body = "&".join(f"k{i}=v" for i in range(MAX_FIELDS + 1)).encode()
    assert refused(FORM, body).status == 400
    query = [(f"k{i}", "v") for i in range(MAX_FIELDS + 1)]
    assert refused(None, b"", query).status == 400
    half = [(f"q{i}", "v") for i in range(MAX_FIELDS // 2 + 1)]
    body = "&".join(f"k{i}=v" for i in range(MAX_FIELDS // 2 + 1)).encode()
    assert refused(FORM, body, half).status == 400


# --- nested keys -------------------------------------------------------------------------


def form(body: str) -> dict[str, Any]:
    return decode_body(FORM, body.encode(), [])


def test_sparse_indices_are_filled_with_empty_dicts() -> None:
    assert form("Legs[2][Status]=busy") == {"Legs": [{}, {}, {"Status": "busy"}]}
    assert form("E[1]=answered&E[0]=terminal") == {"E": ["terminal", "answered"]}


def test_status_callback_events_list() -> None:
    fields = form("StatusCallbackEvents[0]=terminal&StatusCallbackEvents[1]=answered")
    assert fields == {"StatusCallbackEvents": ["terminal", "answered"]}


def test_empty_brackets_append() -> None:
    assert form("a[]=1&a[]=2&a[]=3") == {"a": ["1", "2", "3"]}


def test_index_cap() -> None:
    assert len(form("&".join(f"a[{i}]=x" for i in range(50, 101)))["a"]) == 101
    error = refused(FORM, b"a[101]=x")
    assert error.status == 400 and "index" in str(error)
    assert refused(FORM, b"a[99999999999999999999]=x").status == 400


def test_list_padding_is_bounded() -> None:
    """a[100][100] used to store 10,000 {} for 11 bytes; gaps must be paid for by items."""
    assert refused(FORM, b"a[100]=x").status == 400
    assert "gaps" in str(refused(FORM, b"CallSid=x&a[0][100]=1"))
    assert form("Legs[8][Status]=busy")["Legs"][8] == {"Status": "busy"}  # FREE_GAPS
    keys = "&".join(f"l{k}[{i}]=x" for k in range(3) for i in range(100)).encode()
    error = refused(FORM, keys)
    assert error.status == 400 and "over 256 list items" in str(error)


def test_control_characters_are_400() -> None:
    for raw in (b"x=\x01", b"x\x1b=1", b"x=a\x7fb", b"x=%01"):
        error = refused(FORM, b"CallSid=c&" + raw)
        assert error.status == 400 and "control character" in str(error), raw
    assert form("x=a%09b%0Ac%0Dd")["x"] == "a\tb\nc\rd"


def test_depth_cap_is_400() -> None:
    ok = "a" + "[b]" * 8
    assert form(f"{ok}=1")
    error = refused(FORM, ("a" + "[b]" * 9 + "=1").encode())
    assert error.status == 400 and "too deeply nested" in str(error)


@pytest.mark.parametrize(
    "body",
    [
        "a=1&a[b]=2",
        "a[b]=2&a=1",
        "a[0]=1&a[b]=2",
        "a[b]=1&a[0]=2",
        "a[0]=1&a[0][b]=2",
        "a[0][b]=2&a[0]=1",
        "a[]=1&a=2",
    ],
)
def test_conflicting_shapes_are_400(body: str) -> None:
    error = refused(FORM, body.encode())
    assert error.status == 400 and "both" in str(error)


@pytest.mark.parametrize("key", ["a[b", "a]b", "[x]", "a[b]c", "a[b][", "[]", "a[[b]]"])
def test_keys_that_are_not_bracket_paths_stay_flat(key: str) -> None:
    assert decode_body(None, b"", [(key, "v")]) == {key: "v"}


def test_non_canonical_indices_are_dict_keys() -> None:
    assert form("a[01]=x&a[-1]=y") == {"a": {"01": "x", "-1": "y"}}


def test_nested_values_are_strings_and_blank_values_kept() -> None:
    assert form("a[x]=&b=") == {"a": {"x": ""}, "b": ""}


# --- multipart -------------------------------------------------------------------------


def test_multipart_quoted_boundary_preamble_and_epilogue() -> None:
    body = b"preamble\r\n" + multipart([("CallSid", "abc")], "a b:c") + b"epilogue"
    fields = decode_body('multipart/form-data; boundary="a b:c"; charset=utf-8', body, [])
    assert fields == {"CallSid": "abc"}


def test_multipart_file_parts_are_ignored() -> None:
    body = (
        b'--b\r\nContent-Disposition: form-data; name="f"; filename="x.bin"\r\n'
        b"Content-Type: application/octet-stream\r\n\r\n\x00\xff\x00\r\n"
        b'--b\r\nContent-Disposition: form-data; name="CallSid"\r\n'
        b"Content-Type: text/plain; charset=utf-8\r\n\r\nabc\r\n--b--\r\n"
    )
    assert decode_body("multipart/form-data; boundary=b", body, []) == {"CallSid": "abc"}


def test_multipart_value_may_contain_crlf_and_dashes() -> None:
    body = multipart([("a", "line1\r\n--not-the-boundary\r\nline3")], "XYZ")
    fields = decode_body("multipart/form-data; boundary=XYZ", body, [])
    assert fields == {"a": "line1\r\n--not-the-boundary\r\nline3"}


def test_multipart_nested_names_and_escaped_quotes() -> None:
    body = (
        b'--b\r\nContent-Disposition: form-data; name="Legs[0][Status]"\r\n\r\nbusy\r\n'
        b'--b\r\ncontent-disposition: form-data; name="q\\"x"\r\n\r\n1\r\n--b--\r\n'
    )
    fields = decode_body("multipart/form-data; boundary=b", body, [])
    assert fields == {"Legs": [{"Status": "busy"}], 'q"x': "1"}


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("multipart/form-data", multipart([("a", "1")], "b")),
        ("multipart/form-data; boundary=", multipart([("a", "1")], "b")),
        ('multipart/form-data; boundary="bad\x00"', b"x"),
        ("multipart/form-data; boundary=" + "x" * 71, b"x"),
        ("multipart/form-data; boundary=other", multipart([("a", "1")], "b")),
        ("multipart/form-data; boundary=b", b"--b\r\nContent-Disposition: form-data; name=a\r\n"),
        (
            "multipart/form-data; boundary=b",
            b'--b\r\nContent-Disposition: form-data; name="a"\r\n\r\nno close delimiter',
        ),
        (
            "multipart/form-data; boundary=b",
            b"--b\r\nContent-Disposition: form-data\r\n\r\nx\r\n--b--",
        ),
        (
            "multipart/form-data; boundary=b",
            b'--b\r\nContent-Disposition: attachment; name="a"\r\n\r\nx\r\n--b--',
        ),
        ("multipart/form-data; boundary=b", b"--b\r\n\r\nx\r\n--b--"),
        ("multipart/form-data; boundary=b", b"--bjunk\r\n\r\nx\r\n--b--"),
        ("multipart/form-data; boundary=b", b"--b\r\nno colon here\r\n\r\nx\r\n--b--"),
        (
            "multipart/form-data; boundary=b",
            b'--b\r\nContent-Disposition: form-data; name="a\x00"\r\n\r\nx\r\n--b--',
        ),
    ],
)
def test_bad_multipart_is_400(content_type: str, body: bytes) -> None:
    assert refused(content_type, body).status == 400


def test_multipart_too_many_parts() -> None:
    body = multipart([(f"k{i}", "v") for i in range(MAX_FIELDS + 1)], "b")
    assert refused("multipart/form-data; boundary=b", body).status == 400


# --- the error type ----------------------------------------------------------------------


def test_payload_error_is_one_line_with_status() -> None:
    error = PayloadError(400, "two\nlines")
    assert (error.status, str(error)) == (400, "two lines")
    assert isinstance(error, ValueError)


# --- properties ----------------------------------------------------------------------------

CONTENT_TYPES = st.one_of(
    st.none(),
    st.sampled_from(
        [
            FORM,
            JSON,
            "multipart/form-data",
            "multipart/form-data; boundary=b",
            'multipart/form-data; boundary="b"',
            "text/plain",
            "application/vnd.a+json; charset=latin-1",
            "",
        ]
    ),
    st.text(max_size=80),
)
KEY_CHARS = st.sampled_from(list("ab0123[]-_%\x00é"))
FORMISH = st.lists(
    st.tuples(st.text(KEY_CHARS, max_size=20), st.text(max_size=10)), max_size=20
).map(lambda pairs: urlencode(pairs).encode())
JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=5), children)
    ),
    max_leaves=20,
).map(lambda value: json.dumps(value).encode())
MULTIPARTISH = st.lists(st.tuples(st.text(KEY_CHARS, max_size=8), st.text(max_size=8))).map(
    lambda pairs: multipart(pairs, "b")
)
BODIES = st.one_of(st.binary(max_size=300), FORMISH, JSONISH, MULTIPARTISH)
QUERIES = st.lists(st.tuples(st.text(KEY_CHARS, max_size=12), st.text(max_size=8)), max_size=8)


def assert_json_serialisable(fields: dict[str, Any]) -> None:
    json.dumps(fields, allow_nan=False)


@settings(max_examples=500, deadline=None)
@given(content_type=CONTENT_TYPES, body=BODIES, query=QUERIES)
def test_decode_body_returns_a_dict_or_raises_payload_error(
    content_type: str | None, body: bytes, query: list[tuple[str, str]]
) -> None:
    try:
        fields = decode_body(content_type, body, query)
    except PayloadError as error:
        assert error.status in {400, 413, 415}
        assert "\n" not in str(error)
    else:
        assert isinstance(fields, dict)
        assert_json_serialisable(fields)


#: Control characters other than tab, CR and LF are refused (400).
CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
FLAT_KEYS = st.text(min_size=1, max_size=12).filter(
    lambda k: "[" not in k and "]" not in k and not CONTROL.search(k)
)
NO_NUL = st.text(max_size=12).filter(lambda v: not CONTROL.search(v))


@settings(max_examples=200, deadline=None)
@given(fields=st.dictionaries(FLAT_KEYS, NO_NUL, max_size=12))
def test_flat_form_round_trips(fields: dict[str, str]) -> None:
    assert decode_body(FORM, urlencode(list(fields.items())).encode(), []) == fields
    assert decode_body(None, b"", list(fields.items())) == fields


@settings(max_examples=200, deadline=None)
@given(
    fields=st.dictionaries(
        st.from_regex(r"[A-Za-z0-9_ .-]{1,12}", fullmatch=True), NO_NUL, max_size=12
    )
)
def test_flat_multipart_round_trips(fields: dict[str, str]) -> None:
    boundary = "exolegs-b0undary"
    body = multipart(list(fields.items()), boundary)
    assert decode_body(f"multipart/form-data; boundary={boundary}", body, []) == fields


def depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max(map(depth, value.values()), default=0)
    if isinstance(value, list):
        return 1 + max(map(depth, value), default=0)
    return 0


@settings(max_examples=200, deadline=None)
@given(
    value=st.dictionaries(
        st.from_regex(r"[A-Za-z]{1,6}", fullmatch=True),
        st.recursive(
            st.text(max_size=6).filter(lambda s: not CONTROL.search(s)),
            lambda children: (
                st.lists(children, min_size=1, max_size=3)
                | st.dictionaries(
                    st.from_regex(r"[A-Za-z]{1,6}", fullmatch=True),
                    children,
                    min_size=1,
                    max_size=3,
                )
            ),
            max_leaves=10,
        ),
        max_size=5,
    ).filter(lambda value: depth(value) <= 9)
)
def test_nested_json_round_trips_through_flattened_form(value: dict[str, Any]) -> None:
    body = urlencode(flatten(value)).encode()
    assert decode_body(FORM, body, []) == value


FORM_PIECES = st.lists(
    st.sampled_from(
        [
            "a",
            "Legs",
            "[0]",
            "%5B",
            "%5d",
            "=",
            "&",
            "+",
            "%",
            "%2",
            "%zz",
            "%26",
            "%3D",
            "%41",
            "%25",
            "%C3",
            "%A9",
            "%C3%A9",
            "%E2%82%AC",
            "%FF",
            "\u00e9",
            "\u20ac",
            " ",
            "x",
        ]
    ),
    max_size=24,
).map("".join)


@settings(max_examples=400, deadline=None)
@given(texts=st.lists(FORM_PIECES, min_size=1, max_size=3))
def test_form_decoding_is_parse_qsl_strict(texts: list[str]) -> None:
    # The same names again (remembered from the first body) must decode the same way.
    for text in [*texts, *texts]:
        body = text.encode()
        try:
            expected = parse_qsl(text, keep_blank_values=True, errors="strict")
        except UnicodeDecodeError:
            with pytest.raises(PayloadError, match="not valid UTF-8"):
                payload_module._parse_form(body)
        else:
            assert payload_module._parse_form(body) == expected
