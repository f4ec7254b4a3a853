"""LeadSquared sink against a local fake of the telephony call-log API."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.redis_server import free_port
from tests.unit.sinks.fakes import ADITYA_SIP, SANJAY, Reply, make_record
from tests.unit.sinks.fakes.leadsquared import FakeLeadSquared, lsq_error
from worker.errors import (
    ConfigFaultError,
    PermanentError,
    RateLimitedError,
    SettingsError,
    TransientError,
)
from worker.settings import Rate, Settings
from worker.sinks.base import CheckFailed, SinkContext
from worker.sinks.leadsquared import LeadSquaredSink
from worker.sinks.registry import build_sink

SID = "f1ca1057692d586b23b4e7ffcc3216mk"
USER_SANJAY = "40e06a3d-4787-11e7-b781-023cca4497b9"
USER_ADITYA = "51f17b4e-4787-11e7-b781-023cca4497b9"
MakeSink = Callable[..., LeadSquaredSink]


@pytest.fixture
def lsq() -> Iterator[FakeLeadSquared]:
    fake = FakeLeadSquared()
    with fake.running():
        yield fake
    fake.assert_clean()


@pytest.fixture
def make_sink(lsq: FakeLeadSquared, settings: Settings, tmp_path: Path) -> Iterator[MakeSink]:
    agents = tmp_path / "agents.json"
    agents.write_text(json.dumps({SANJAY: USER_SANJAY, ADITYA_SIP: USER_ADITYA}))
    built: list[LeadSquaredSink] = []

    def make(extra: str = "", *, secret: str | None = None) -> LeadSquaredSink:
        url = (
            f"leadsquared://{lsq.host}?access_key={lsq.access_key}"
            f"&secret_key={secret or lsq.secret_key}&scheme=http&agents={agents}{extra}"
        )
        sink = build_sink(url, SinkContext(settings))
        assert isinstance(sink, LeadSquaredSink)
        built.append(sink)
        return sink

    yield make
    for sink in built:
        sink.close()


def only_log(lsq: FakeLeadSquared) -> dict[str, object]:
    assert len(lsq.logs) == 1, lsq.logs
    return lsq.logs[0]


def test_the_url_and_published_limit(make_sink: MakeSink, lsq: FakeLeadSquared) -> None:
    sink = make_sink()
    assert sink.rate_limit == Rate(2, 1) and sink.native_idempotency is False
    assert lsq.secret_key not in sink.display_url and lsq.access_key not in repr(sink)


def test_an_inbound_call_goes_from_the_customer_to_the_agent(
    lsq: FakeLeadSquared, make_sink: MakeSink
) -> None:
    make_sink().deliver(make_record(SID))
    request = lsq.seen("POST", "/v2/Telephony.svc/LogCall")[0]
    assert request.query == {}  # keys travel in headers, not in the URL
    assert request.headers["x-lsq-accesskey"] == lsq.access_key
    log = only_log(lsq)
    assert log == {
        "SourceNumber": "+91-9812345678",
        "DestinationNumber": "+91-9876543210",
        "DisplayNumber": "+91-8047112233",
        "StartTime": "2020-09-15 05:31:20",
        "EndTime": "2020-09-15 05:32:20",
        "CallDuration": 60,
        "Status": "Answered",
        "Direction": "Inbound",
        "ResourceURL": "https://recordings.exotel.com/exotel/f1ca.mp3",
        "CallSessionId": SID,
        "UserId": USER_SANJAY,
        "ActivityId": log["ActivityId"],
    }


def test_an_outbound_call_goes_from_the_agent_to_the_customer(
    lsq: FakeLeadSquared, make_sink: MakeSink
) -> None:
    make_sink().deliver(make_record(SID, direction="outbound"))
    log = only_log(lsq)
    assert (log["SourceNumber"], log["DestinationNumber"]) == ("+91-9876543210", "+91-9812345678")
    assert log["Direction"] == "Outbound" and log["CallDuration"] == 105


def test_a_missed_call_is_not_answered_and_owned_by_the_first_agent(
    lsq: FakeLeadSquared, make_sink: MakeSink
) -> None:
    make_sink().deliver(make_record(SID, answered=False, recording_url=None))
    log = only_log(lsq)
    assert log["Status"] == "NotAnswered" and log["CallDuration"] == 0
    # Aditya's only contact is a SIP URI: no number is sent, his user id names him.
    assert "DestinationNumber" not in log and log["UserId"] == USER_ADITYA
    assert ADITYA_SIP not in json.dumps(lsq.seen("POST", "/v2/Telephony.svc/LogCall")[0].json)
    assert "ResourceURL" not in log


def test_lookup_cannot_tell(make_sink: MakeSink) -> None:
    assert make_sink().lookup(SID) is None


def test_wrong_keys_are_a_configuration_fault(lsq: FakeLeadSquared, make_sink: MakeSink) -> None:
    with pytest.raises(ConfigFaultError, match="access_key/secret_key") as caught:
        make_sink(secret="not-the-secret-key").deliver(make_record(SID))
    assert "Invalid Access Key" in caught.value.message
    assert "not-the-secret-key" not in str(caught.value) and lsq.access_key not in str(caught.value)


def test_an_error_envelope_is_permanent_with_its_message(
    lsq: FakeLeadSquared, make_sink: MakeSink
) -> None:
    # LeadSquared's own example: a missing attribute, answered with HTTP 500.
    lsq.fail_next(
        500, lsq_error("MXMandatoryAttributeMissingException", "'SourceNumber' is mandatory")
    )
    with pytest.raises(PermanentError, match="'SourceNumber' is mandatory") as caught:
        make_sink().deliver(make_record(SID))
    assert caught.value.upstream_code == "MXMandatoryAttributeMissingException"


def test_an_error_in_a_200_is_permanent(lsq: FakeLeadSquared, make_sink: MakeSink) -> None:
    lsq.fail_next(200, lsq_error("MXInvalidInputException", "Invalid phone number"))
    with pytest.raises(PermanentError, match="Invalid phone number"):
        make_sink().deliver(make_record(SID))


def test_an_unknown_user_is_permanent(lsq: FakeLeadSquared, make_sink: MakeSink) -> None:
    """LeadSquared answers this validation error with HTTP 500: it is still permanent."""
    lsq.users = set()
    with pytest.raises(PermanentError, match="does not exist") as caught:
        make_sink().deliver(make_record(SID))
    assert caught.value.upstream_status == 500
    assert caught.value.upstream_code == "MXInvalidInputException"
    assert not caught.value.retryable


def test_an_unknown_exception_in_a_500_is_a_server_error(
    lsq: FakeLeadSquared, make_sink: MakeSink
) -> None:
    lsq.fail_next(500, lsq_error("MXDBConnectionException", "Database timed out"))
    with pytest.raises(TransientError, match="Database timed out"):
        make_sink().deliver(make_record(SID))


@pytest.mark.parametrize("direction", ["inbound", "outbound"])
@pytest.mark.parametrize("customer", ["0987xxxxxxx", "098XXXXX210", "sip:caller@pbx.example.com"])
def test_a_masked_or_sip_customer_is_never_sent_as_a_number(
    lsq: FakeLeadSquared, make_sink: MakeSink, customer: str, direction: str
) -> None:
    make_sink().deliver(make_record(SID, customer=customer, direction=direction))
    assert lsq.seen("POST", "/v2/Telephony.svc/LogCall") == []  # no junk lead, no 500s
    assert lsq.leads == {} and lsq.logs == []


def test_a_customer_with_a_real_number_gets_a_lead(
    lsq: FakeLeadSquared, make_sink: MakeSink
) -> None:
    make_sink().deliver(make_record(SID))
    assert list(lsq.leads) == ["+91-9812345678"]


def test_a_role_without_api_access_is_a_configuration_fault(
    lsq: FakeLeadSquared, make_sink: MakeSink
) -> None:
    lsq.role = "Sales User"
    with pytest.raises(ConfigFaultError, match="Administrator") as caught:
        make_sink().deliver(make_record(SID))
    assert caught.value.upstream_status == 500


@pytest.mark.parametrize(("header", "expected"), [("12", 12.0), (None, 5.0)])
def test_a_429_is_backed_off(
    lsq: FakeLeadSquared, make_sink: MakeSink, header: str | None, expected: float
) -> None:
    lsq.fail_next(
        429,
        lsq_error("MXAPIRateLimitExceededException", "API rate limit exceeded"),
        headers={"Retry-After": header} if header else {},
    )
    with pytest.raises(RateLimitedError) as caught:
        make_sink().deliver(make_record(SID))
    assert caught.value.retry_after == expected


@pytest.mark.parametrize("status", [500, 502, 503])
def test_server_errors_are_transient(
    lsq: FakeLeadSquared, make_sink: MakeSink, status: int
) -> None:
    lsq.fail_next(status, "<html>Service Unavailable</html>")
    with pytest.raises(TransientError):
        make_sink().deliver(make_record(SID))
    assert lsq.logs == []


def test_a_slow_leadsquared_is_transient(lsq: FakeLeadSquared, make_sink: MakeSink) -> None:
    sink = make_sink()
    sink.http.timeout = (1.0, 0.2)
    lsq.script(Reply(200, {"Status": "Success"}, delay=0.5))
    with pytest.raises(TransientError, match="no answer within"):
        sink.deliver(make_record(SID))


def test_unreachable_is_transient(settings: Settings) -> None:
    sink = build_sink(
        f"leadsquared://127.0.0.1:{free_port()}?access_key=a&secret_key=bbbb&scheme=http",
        SinkContext(settings),
    )
    with pytest.raises(TransientError, match="cannot connect"):
        sink.deliver(make_record(SID))


def test_bad_urls_are_settings_errors(settings: Settings) -> None:
    with pytest.raises(SettingsError, match="secret_key"):
        build_sink("leadsquared://api-in21.leadsquared.com?access_key=a", SinkContext(settings))
    with pytest.raises(SettingsError, match="scheme"):
        build_sink(
            "leadsquared://api-in21.leadsquared.com?access_key=a&secret_key=b&scheme=ftp",
            SinkContext(settings),
        )


def test_check_reads_activity_types_and_probes_the_call_log(
    make_sink: MakeSink, lsq: FakeLeadSquared
) -> None:
    said = make_sink().check()
    assert lsq.host in said and "phone call activity types exist" in said
    assert lsq.secret_key not in said
    assert lsq.seen("GET", "/v2/ProspectActivity.svc/ActivityTypes.Get")
    assert lsq.seen("POST", "/v2/Telephony.svc/LogCall")[0].json == {}
    assert lsq.logs == [] and lsq.leads == {}  # nothing was written


def test_check_reports_a_missing_permission_and_a_missing_activity_type(
    make_sink: MakeSink, lsq: FakeLeadSquared
) -> None:
    sink = make_sink()
    lsq.activity_types = [t for t in lsq.activity_types if "Outbound" not in t["DisplayName"]]
    with pytest.raises(CheckFailed) as caught:
        sink.check()
    assert caught.value.problems == [
        f"LeadSquared at {lsq.host} has no 'Outbound Phone Call Activity' activity type: "
        "install and configure the LeadSquared Generic Telephony Connector (Apps > Apps "
        "Marketplace > Telephony) so call logs have an activity to become"
    ]
    lsq.role = "Sales User"
    with pytest.raises(CheckFailed) as caught:
        sink.check()
    activity_types, call_log = caught.value.problems  # one line per endpoint family
    assert "activity types" in activity_types and "call log" in call_log
    for problem in (activity_types, call_log):
        assert "MXUnAuthorizedAccessException" in problem and "Administrator" in problem


def test_check_reports_wrong_keys(
    make_sink: MakeSink, lsq: FakeLeadSquared, settings: Settings
) -> None:
    bad = LeadSquaredSink(
        f"leadsquared://{lsq.host}?access_key=wrong&secret_key=wrong&scheme=http",
        SinkContext(settings),
    )
    with pytest.raises(ConfigFaultError, match="access_key/secret_key"):
        bad.check()


def test_check_tolerates_a_host_without_the_activity_types_api(
    make_sink: MakeSink, lsq: FakeLeadSquared
) -> None:
    lsq.fail_next(
        404,
        lsq_error("MXAPINotFoundException", "The API could not be found."),
        path=r".*/ActivityTypes\.Get",
    )
    said = make_sink().check()
    assert "not confirmed" in said
