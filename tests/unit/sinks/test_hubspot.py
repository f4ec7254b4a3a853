"""HubSpot sink against a local fake of the CRM v3 API (tests/unit/sinks/fakes/hubspot.py)."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from tests.support.redis_server import free_port
from tests.unit.sinks.fakes import ADITYA_SIP, CUSTOMER_E164, ROOT, SANJAY, make_record
from tests.unit.sinks.fakes.hubspot import FakeHubSpot
from worker.errors import ConfigFaultError, PermanentError, RateLimitedError, TransientError
from worker.settings import Rate, Settings
from worker.sinks.base import CheckFailed, SinkContext
from worker.sinks.crm import (
    HUBSPOT_BUSY,
    HUBSPOT_CONNECTED,
    HUBSPOT_NO_ANSWER,
    seconds_until_utc_midnight,
)
from worker.sinks.hubspot import SCOPES, HubSpotSink
from worker.sinks.registry import build_sink

SID = "f1ca1057692d586b23b4e7ffcc3216mk"
MakeSink = Callable[..., HubSpotSink]


@pytest.fixture
def fake() -> Iterator[FakeHubSpot]:
    server = FakeHubSpot()
    with server.running():
        yield server
    server.assert_clean()


@pytest.fixture
def agents_file(tmp_path: Path) -> Path:
    path = tmp_path / "agents.json"
    path.write_text(json.dumps({SANJAY: "111", ADITYA_SIP: "222"}))
    return path


@pytest.fixture
def make_sink(
    fake: FakeHubSpot, settings: Settings, redis_client: redis.Redis, agents_file: Path
) -> Iterator[MakeSink]:
    built: list[HubSpotSink] = []

    def make(extra: str = "", *, token: str | None = None) -> HubSpotSink:
        url = f"hubspot://?token={token or fake.token}&base={fake.url}&agents={agents_file}{extra}"
        sink = build_sink(url, SinkContext(settings=settings, redis=redis_client))
        assert isinstance(sink, HubSpotSink)
        built.append(sink)
        return sink

    yield make
    for sink in built:
        sink.close()


def only_call(fake: FakeHubSpot) -> dict[str, object]:
    assert len(fake.calls) == 1, fake.calls
    return next(iter(fake.calls.values()))


def test_the_url_builds_a_hubspot_sink_with_the_published_limit(make_sink: MakeSink) -> None:
    sink = make_sink()
    assert sink.scheme == "hubspot" and sink.rate_limit == Rate(3, 1)
    assert sink.native_idempotency is False
    assert "pat-na1" not in sink.display_url and "pat-na1" not in repr(sink)


def test_an_answered_inbound_call_is_logged_on_the_callers_contact(
    fake: FakeHubSpot, make_sink: MakeSink
) -> None:
    contact = fake.add_contact(phone="9812345678")
    make_sink().deliver(make_record(SID))

    search = fake.seen("POST", "/crm/v3/objects/contacts/search")[0].json
    groups = {g["filters"][0]["propertyName"]: g["filters"][0] for g in search["filterGroups"]}
    assert set(groups) == {"phone", "mobilephone"}
    assert groups["phone"]["operator"] == "IN"
    assert groups["phone"]["values"] == [CUSTOMER_E164, "9812345678", "09812345678", "919812345678"]

    call = only_call(fake)
    props = call["properties"]
    assert props == {
        "hs_timestamp": "2020-09-15T05:31:20Z",
        "hs_call_title": props["hs_call_title"],
        "hs_call_body": props["hs_call_body"],
        "hs_call_direction": "INBOUND",
        "hs_call_status": "COMPLETED",
        "hs_call_disposition": HUBSPOT_CONNECTED,
        "hs_call_duration": "60000",
        "hs_call_from_number": CUSTOMER_E164,
        "hs_call_to_number": SANJAY,
        "hs_call_recording_url": "https://recordings.exotel.com/exotel/f1ca.mp3",
        "hubspot_owner_id": "111",
    }
    assert SID in props["hs_call_title"].split()
    assert "answered by Sanjay Mishra" in props["hs_call_title"]
    assert "Aditya Sharma" in props["hs_call_body"] and "no-answer" in props["hs_call_body"]
    assert call["contacts"] == [contact]


def test_a_missed_call_is_owned_by_the_first_agent_dialled(
    fake: FakeHubSpot, make_sink: MakeSink
) -> None:
    make_sink().deliver(make_record(SID, answered=False))
    props = only_call(fake)["properties"]
    assert props["hs_call_status"] == "NO_ANSWER"
    assert props["hs_call_disposition"] == HUBSPOT_NO_ANSWER
    assert props["hs_call_duration"] == "0"
    assert props["hubspot_owner_id"] == "222"
    assert "no answer" in props["hs_call_title"]


def test_busy_and_failed_calls(fake: FakeHubSpot, make_sink: MakeSink) -> None:
    sink = make_sink()
    sink.deliver(make_record("busy1", answered=False, status="busy"))
    sink.deliver(make_record("failed1", answered=False, status="failed"))
    busy = fake.calls_for("busy1")[0]["properties"]
    failed = fake.calls_for("failed1")[0]["properties"]
    assert (busy["hs_call_status"], busy["hs_call_disposition"]) == ("BUSY", HUBSPOT_BUSY)
    assert failed["hs_call_status"] == "FAILED" and "hs_call_disposition" not in failed


def test_an_outbound_call_goes_from_the_agent_to_the_customer(
    fake: FakeHubSpot, make_sink: MakeSink
) -> None:
    make_sink().deliver(make_record(SID, direction="outbound"))
    props = only_call(fake)["properties"]
    assert props["hs_call_direction"] == "OUTBOUND"
    assert (props["hs_call_from_number"], props["hs_call_to_number"]) == (SANJAY, CUSTOMER_E164)
    assert props["hs_call_duration"] == "105000"  # the customer's leg: the conversation
    assert props["hubspot_owner_id"] == "111"


@pytest.mark.parametrize(
    ("url", "extra", "sent"),
    [
        ("https://r.exotel.com/a.mp3", "", True),
        ("https://r.exotel.com/a.WAV?sig=1", "", True),
        ("http://r.exotel.com/a.mp3", "", False),
        ("https://r.exotel.com/a.ogg", "", False),
        ("https://r.exotel.com/a.mp3", "&recordings=false", False),
    ],
)
def test_only_playable_recordings_are_linked(
    fake: FakeHubSpot, make_sink: MakeSink, url: str, extra: str, sent: bool
) -> None:
    make_sink(extra).deliver(make_record(SID, recording_url=url))
    props = only_call(fake)["properties"]
    assert ("hs_call_recording_url" in props) is sent
    # recordings=false: no link; a plain-http link never reaches the record (enrich.py)
    assert ("Recording:" in props["hs_call_body"]) is (not extra and url.startswith("https:"))


def test_an_unknown_or_masked_caller_is_not_searched_for(
    fake: FakeHubSpot, make_sink: MakeSink
) -> None:
    make_sink().deliver(make_record(SID, customer="0987xxxxxxx"))
    assert fake.seen("POST", "/crm/v3/objects/contacts/search") == []
    assert only_call(fake)["contacts"] == []


def test_without_agents_file_no_owner_is_set(fake: FakeHubSpot, settings: Settings) -> None:
    sink = build_sink(f"hubspot://?token={fake.token}&base={fake.url}", SinkContext(settings))
    sink.deliver(make_record(SID))
    assert "hubspot_owner_id" not in only_call(fake)["properties"]


def test_upsert_on_a_unique_property_keeps_one_call(fake: FakeHubSpot, make_sink: MakeSink) -> None:
    contact = fake.add_contact(mobilephone=CUSTOMER_E164)
    sink = make_sink("&id_property=exotel_call_sid")
    assert sink.native_idempotency is True
    assert sink.lookup(SID) is None  # nothing to look up: a repeat is an update

    sink.deliver(make_record(SID))
    sink.deliver(make_record(SID))

    upserts = fake.seen("POST", "/crm/v3/objects/calls/batch/upsert")
    assert len(upserts) == 2
    assert upserts[0].json["inputs"][0]["idProperty"] == "exotel_call_sid"
    assert upserts[0].json["inputs"][0]["id"] == SID
    call = only_call(fake)
    assert call["properties"]["exotel_call_sid"] == SID
    assert call["contacts"] == [contact]
    assert len(fake.seen("PUT", r"/crm/v3/objects/calls/\d+/associations/contact/\d+/194")) == 2


def test_an_id_property_that_is_not_unique_is_a_configuration_fault(
    fake: FakeHubSpot, make_sink: MakeSink
) -> None:
    with pytest.raises(ConfigFaultError) as caught:
        make_sink("&id_property=hs_call_title").deliver(make_record(SID))
    assert "hasUniqueValue" in caught.value.message


def test_lookup_finds_a_call_by_the_sid_in_its_title(
    fake: FakeHubSpot, make_sink: MakeSink
) -> None:
    sink = make_sink()
    assert sink.lookup(SID) is False
    sink.deliver(make_record(SID))
    assert sink.lookup(SID) is True
    body = fake.seen("POST", "/crm/v3/objects/calls/search")[0].json
    assert body["filterGroups"][0]["filters"][0] == {
        "propertyName": "hs_call_title",
        "operator": "CONTAINS_TOKEN",
        "value": SID,
    }


@pytest.mark.parametrize(
    ("policy", "header", "expected"),
    [
        ("TEN_SECONDLY_ROLLING", 3, 3.0),
        ("TEN_SECONDLY_ROLLING", None, 10.0),
        ("SECONDLY", None, 1.0),
    ],
)
def test_a_burst_429_waits_for_its_window(
    fake: FakeHubSpot, make_sink: MakeSink, policy: str, header: int | None, expected: float
) -> None:
    fake.rate_limited(policy, retry_after=header)
    with pytest.raises(RateLimitedError) as caught:
        make_sink().deliver(make_record(SID))
    assert caught.value.retry_after == expected
    assert caught.value.upstream_status == 429
    assert fake.calls == {}


def test_the_daily_limit_parks_deliveries_until_utc_midnight(
    fake: FakeHubSpot, make_sink: MakeSink
) -> None:
    fake.rate_limited("DAILY")
    with pytest.raises(RateLimitedError) as caught:
        make_sink().deliver(make_record(SID))
    assert caught.value.retry_after is not None
    assert abs(caught.value.retry_after - seconds_until_utc_midnight()) < 5
    assert "daily" in caught.value.message


def test_a_rejected_token_is_a_configuration_fault_that_hides_it(
    fake: FakeHubSpot, make_sink: MakeSink
) -> None:
    wrong = "pat-na1-00000000-dead-beef-0000-000000000000"
    with pytest.raises(ConfigFaultError) as caught:
        make_sink(token=wrong).deliver(make_record(SID))
    assert caught.value.message.startswith("HubSpot rejected the private-app token")
    assert wrong not in str(caught.value) and fake.token not in str(caught.value)
    assert not caught.value.retryable


def docs_scopes() -> set[str]:
    """The scopes docs/sinks.md tells a HubSpot user to give the private app."""
    section = (ROOT / "docs" / "sinks.md").read_text(encoding="utf-8").split("## HubSpot", 1)[1]
    token_row = next(line for line in section.splitlines() if line.startswith("| `token=`"))
    return set(re.findall(r"`(crm\.[a-z.]+)`", token_row))


def test_a_private_app_set_up_from_the_docs_can_log_a_call(
    fake: FakeHubSpot, make_sink: MakeSink
) -> None:
    fake.granted = docs_scopes()
    assert fake.granted == set(SCOPES)  # exactly as HubSpot's calls guide lists them
    contact = fake.add_contact(phone=CUSTOMER_E164)
    make_sink().deliver(make_record(SID))
    assert fake.calls_for(SID)[0]["contacts"] == [contact]


def test_a_missing_write_scope_is_a_configuration_fault_naming_it(
    fake: FakeHubSpot, make_sink: MakeSink
) -> None:
    fake.granted = {"crm.objects.contacts.read"}
    with pytest.raises(ConfigFaultError, match="MISSING_SCOPES") as caught:
        make_sink().deliver(make_record(SID))
    said = caught.value.message
    assert "lacks the scope crm.objects.contacts.write" in said and "Private Apps" in said
    assert fake.calls == {}


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_server_errors_are_transient(fake: FakeHubSpot, make_sink: MakeSink, status: int) -> None:
    fake.fail_next(status, {"status": "error", "message": "internal error", "category": "ERROR"})
    with pytest.raises(TransientError) as caught:
        make_sink().deliver(make_record(SID))
    assert caught.value.retryable and not isinstance(caught.value, RateLimitedError)


def test_a_validation_error_is_permanent_with_hubspots_message(
    fake: FakeHubSpot, make_sink: MakeSink
) -> None:
    fake.fail_next(
        400,
        {
            "status": "error",
            "message": "Property values were not valid: hs_call_body too long",
            "correlationId": "aa",
            "category": "VALIDATION_ERROR",
        },
        method="POST",
        path="/crm/v3/objects/calls",
    )
    with pytest.raises(PermanentError, match="hs_call_body too long") as caught:
        make_sink().deliver(make_record(SID))
    assert caught.value.upstream_code == "VALIDATION_ERROR"


def test_hubspot_unreachable_is_transient(settings: Settings) -> None:
    sink = build_sink(
        f"hubspot://?token=pat-na1-x&base=http://127.0.0.1:{free_port()}", SinkContext(settings)
    )
    with pytest.raises(TransientError, match="cannot connect"):
        sink.deliver(make_record(SID))


def test_check_reads_scopes_calls_contacts_and_properties(
    fake: FakeHubSpot, make_sink: MakeSink
) -> None:
    said = make_sink("&id_property=exotel_call_sid").check()
    assert "crm.objects.contacts.write" in said and fake.token not in said
    for method, path in (
        ("POST", "/oauth/v2/private-apps/get/access-token-info"),
        ("GET", "/crm/v3/objects/calls"),
        ("POST", "/crm/v3/objects/contacts/search"),
        ("GET", "/crm/v3/properties/calls"),
    ):
        assert fake.seen(method, path), path
    assert fake.calls == {}


def test_check_reports_a_missing_scope_and_a_missing_property_with_the_fix(
    fake: FakeHubSpot, make_sink: MakeSink
) -> None:
    fake.granted = {"crm.objects.contacts.read"}
    fake.unique_properties = set()
    with pytest.raises(CheckFailed) as caught:
        make_sink("&id_property=exotel_call_sid").check()
    scope, field = caught.value.problems
    assert "lacks the scope crm.objects.contacts.write" in scope and "tick it" in scope
    assert "HubSpot calls has no field exotel_call_sid" in field
    assert "requires unique values" in field


def test_check_reports_a_property_that_is_not_unique(
    fake: FakeHubSpot, make_sink: MakeSink
) -> None:
    with pytest.raises(CheckFailed) as caught:
        make_sink("&id_property=hs_call_title").check()
    (problem,) = caught.value.problems
    assert "hs_call_title does not require unique values" in problem


def test_a_sip_agent_is_never_sent_as_a_number(fake: FakeHubSpot, make_sink: MakeSink) -> None:
    make_sink().deliver(make_record(SID, answered=False))  # Aditya (SIP) was dialled first
    props = fake.calls_for(SID)[0]["properties"]
    assert "hs_call_to_number" not in props
    assert "sip:" not in json.dumps(props.get("hs_call_from_number"))


def test_a_portal_without_an_optional_property_gets_the_call_without_it(
    fake: FakeHubSpot, make_sink: MakeSink
) -> None:
    fake.properties.discard("hs_call_recording_url")
    make_sink().deliver(make_record(SID))
    assert "hs_call_recording_url" not in fake.calls_for(SID)[0]["properties"]


def test_a_batch_partial_failure_207_is_permanent_and_rereads_the_properties(
    fake: FakeHubSpot, make_sink: MakeSink
) -> None:
    sink = make_sink("&id_property=exotel_call_sid")
    sink.deliver(make_record(SID))
    fake.properties.discard("hs_call_disposition")  # deleted after the sink read them
    other = "c2" + SID[2:]
    with pytest.raises(PermanentError, match="hs_call_disposition"):
        sink.deliver(make_record(other))
    upserts = fake.seen("POST", "/crm/v3/objects/calls/batch/upsert")
    assert upserts[-1].json["inputs"][0]["objectWriteTraceId"] == other  # asks for 207s
    sink.deliver(make_record(other))  # properties read again: delivered without it
    assert "hs_call_disposition" not in fake.calls_for(other)[0]["properties"]
