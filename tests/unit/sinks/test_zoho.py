"""Zoho CRM sink against local fakes of Zoho Accounts and the CRM v8 API."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from tests.unit.sinks.fakes import (
    ADITYA_SIP,
    CUSTOMER_E164,
    CUSTOMER_NATIONAL,
    ROOT,
    SANJAY,
    make_record,
)
from tests.unit.sinks.fakes.zoho import FakeZoho
from worker.errors import (
    ConfigFaultError,
    PermanentError,
    RateLimitedError,
    SettingsError,
    TransientError,
)
from worker.settings import Rate, Settings
from worker.sinks.base import CheckFailed, SinkContext
from worker.sinks.registry import build_sink
from worker.sinks.zoho import SCOPES, ZohoSink

SID = "f1ca1057692d586b23b4e7ffcc3216mk"
OWNER_SANJAY = "4150868000000225013"
OWNER_ADITYA = "4150868000000225014"
MakeSink = Callable[..., ZohoSink]


@pytest.fixture
def zoho() -> Iterator[FakeZoho]:
    fake = FakeZoho()
    with fake.running():
        yield fake
    fake.assert_clean()


@pytest.fixture
def make_sink(
    zoho: FakeZoho, settings: Settings, redis_client: redis.Redis, tmp_path: Path
) -> Iterator[MakeSink]:
    agents = tmp_path / "agents.csv"
    agents.write_text(
        f"contact_uri,crm_user_id\n{SANJAY},{OWNER_SANJAY}\n{ADITYA_SIP},{OWNER_ADITYA}\n"
    )
    built: list[ZohoSink] = []

    def make(extra: str = "", url: str | None = None) -> ZohoSink:
        sink = build_sink(
            url or zoho.url(f"&agents={agents}{extra}"),
            SinkContext(settings=settings, redis=redis_client),
        )
        assert isinstance(sink, ZohoSink)
        built.append(sink)
        return sink

    yield make
    for sink in built:
        sink.close()


def only_call(zoho: FakeZoho) -> dict[str, object]:
    assert len(zoho.crm.calls) == 1, zoho.crm.calls
    return next(iter(zoho.crm.calls.values()))


def test_the_url_names_the_data_centre(settings: Settings) -> None:
    sink = build_sink(
        "zoho://accounts.zoho.eu?client_id=a&client_secret=b&refresh_token=c", SinkContext(settings)
    )
    assert isinstance(sink, ZohoSink)
    assert sink.accounts_base == "https://accounts.zoho.eu"
    assert sink.default_api == "https://www.zohoapis.eu"
    assert sink.rate_limit == Rate(2, 1)
    assert "refresh_token=%2A%2A%2A" in sink.display_url or "refresh_token=***" in sink.display_url
    with pytest.raises(SettingsError, match="data centre"):
        build_sink(
            "zoho://example.com?client_id=a&client_secret=b&refresh_token=c", SinkContext(settings)
        )
    with pytest.raises(SettingsError, match="refresh_token"):
        build_sink("zoho://accounts.zoho.com?client_id=a&client_secret=b", SinkContext(settings))


def test_an_answered_call_is_logged_on_the_contact(zoho: FakeZoho, make_sink: MakeSink) -> None:
    contact = zoho.crm.add("Contacts", phone=CUSTOMER_NATIONAL)
    make_sink().deliver(make_record(SID))

    token_request = zoho.accounts.seen("POST", "/oauth/v2/token")[0]
    assert token_request.form["grant_type"] == "refresh_token"
    searches = zoho.crm.seen("GET", "/crm/v8/Contacts/search")
    assert [s.query["phone"] for s in searches] == [CUSTOMER_E164, CUSTOMER_NATIONAL]
    assert all(s.headers["authorization"].startswith("Zoho-oauthtoken 1000.") for s in searches)

    call = only_call(zoho)
    assert call == {
        "id": call["id"],
        "Subject": call["Subject"],
        "Call_Type": "Inbound",
        "Call_Start_Time": "2020-09-15T11:01:20+05:30",
        "Call_Duration": "01:00",
        "Description": call["Description"],
        "Exotel_Call_SID": SID,
        "Owner": {"id": OWNER_SANJAY},
        "Who_Id": {"id": contact},
    }
    assert SID in str(call["Subject"]) and "Aditya Sharma" in str(call["Description"])


def test_a_caller_who_is_a_lead_is_linked_with_se_module(
    zoho: FakeZoho, make_sink: MakeSink
) -> None:
    lead = zoho.crm.add("Leads", mobile=CUSTOMER_E164)
    make_sink().deliver(make_record(SID))
    call = only_call(zoho)
    assert call["What_Id"] == {"id": lead} and call["$se_module"] == "Leads"
    assert "Who_Id" not in call
    # Contacts first (both formats, 204 each), then Leads (found at once).
    assert len(zoho.crm.seen("GET", "/crm/v8/Contacts/search")) == 2
    assert len(zoho.crm.seen("GET", "/crm/v8/Leads/search")) == 1


def test_a_missed_inbound_call_is_missed_and_owned_by_the_first_agent(
    zoho: FakeZoho, make_sink: MakeSink
) -> None:
    make_sink().deliver(make_record(SID, answered=False))
    call = only_call(zoho)
    assert call["Call_Type"] == "Missed"
    assert call["Call_Duration"] == "00:00"
    assert call["Owner"] == {"id": OWNER_ADITYA}
    assert "Who_Id" not in call and "What_Id" not in call


def test_an_outbound_call_is_completed(zoho: FakeZoho, make_sink: MakeSink) -> None:
    make_sink().deliver(make_record(SID, direction="outbound"))
    call = only_call(zoho)
    assert call["Call_Type"] == "Outbound"
    assert call["Outgoing_Call_Status"] == "Completed"
    assert call["Call_Duration"] == "01:45"


def test_a_custom_call_sid_field(zoho: FakeZoho, make_sink: MakeSink) -> None:
    zoho.crm.custom_fields = {"Exotel_Sid__c"}
    sink = make_sink("&call_sid_field=Exotel_Sid__c")
    assert sink.lookup(SID) is False
    sink.deliver(make_record(SID))
    assert only_call(zoho)["Exotel_Sid__c"] == SID
    assert sink.lookup(SID) is True
    assert zoho.crm.seen("GET", "/crm/v8/Calls/search")[0].query == {
        "criteria": f"(Exotel_Sid__c:equals:{SID})"
    }


def test_a_missing_call_sid_field_is_a_configuration_fault(
    zoho: FakeZoho, make_sink: MakeSink
) -> None:
    zoho.crm.custom_fields = set()
    with pytest.raises(ConfigFaultError, match="single-line field Exotel_Call_SID"):
        make_sink().deliver(make_record(SID))


def test_a_duplicate_on_a_unique_sid_field_counts_as_delivered(
    zoho: FakeZoho, make_sink: MakeSink
) -> None:
    zoho.crm.unique_fields = {"Exotel_Call_SID"}
    sink = make_sink()
    sink.deliver(make_record(SID))
    sink.deliver(make_record(SID))  # DUPLICATE_DATA: already there
    assert len(zoho.crm.calls_for(SID)) == 1


def test_invalid_data_is_permanent_with_zohos_details(zoho: FakeZoho, make_sink: MakeSink) -> None:
    zoho.crm.users = set()  # the mapped owner is not a Zoho user
    with pytest.raises(PermanentError, match="INVALID_DATA") as caught:
        make_sink().deliver(make_record(SID))
    assert "Owner" in caught.value.message
    assert caught.value.upstream_code == "INVALID_DATA"


def test_a_missing_mandatory_field_is_permanent(zoho: FakeZoho, make_sink: MakeSink) -> None:
    zoho.crm.fail_next(
        400,
        {
            "data": [
                {
                    "code": "MANDATORY_NOT_FOUND",
                    "details": {"api_name": "Subject"},
                    "message": "required field not found",
                    "status": "error",
                }
            ]
        },
        path="/crm/v8/Calls",
    )
    with pytest.raises(PermanentError, match="MANDATORY_NOT_FOUND"):
        make_sink().deliver(make_record(SID))


def test_an_expired_token_is_minted_again_once(zoho: FakeZoho, make_sink: MakeSink) -> None:
    sink = make_sink()
    sink.deliver(make_record("first"))
    zoho.crm.expire_tokens()  # Zoho now answers 401 INVALID_TOKEN to the cached token
    sink.deliver(make_record("second"))
    assert len(zoho.accounts.minted) == 2
    assert len(zoho.crm.calls) == 2


def test_a_token_refused_after_a_fresh_mint_is_a_configuration_fault(
    zoho: FakeZoho, make_sink: MakeSink
) -> None:
    invalid = {
        "code": "INVALID_TOKEN",
        "details": {},
        "message": "invalid oauth token",
        "status": "error",
    }
    zoho.crm.fail_next(401, invalid, times=2)
    with pytest.raises(ConfigFaultError, match="scopes"):
        make_sink().deliver(make_record(SID))
    assert len(zoho.accounts.minted) == 2  # one re-mint, not a loop


# The scopes the sink documents, as Zoho enforces them per endpoint.
SCOPES_BEFORE_THE_FIX = {
    "ZohoCRM.modules.calls.CREATE",
    "ZohoCRM.modules.calls.READ",
    "ZohoCRM.modules.contacts.READ",
    "ZohoCRM.modules.leads.READ",
}


def test_a_refresh_token_with_the_documented_scopes_logs_a_call_on_a_known_contact(
    zoho: FakeZoho, make_sink: MakeSink
) -> None:
    zoho.accounts.granted = set(SCOPES)  # exactly what the sink (and docs/sinks.md) asks for
    contact = zoho.crm.add("Contacts", phone=CUSTOMER_NATIONAL)
    make_sink().deliver(make_record(SID))
    assert only_call(zoho)["Who_Id"] == {"id": contact}


def test_every_search_needs_the_search_scope(zoho: FakeZoho, make_sink: MakeSink) -> None:
    """Without ZohoSearch.securesearch.READ Zoho answers 401 to the contact search."""
    zoho.accounts.granted = set(SCOPES_BEFORE_THE_FIX)
    zoho.crm.add("Contacts", phone=CUSTOMER_NATIONAL)
    with pytest.raises(ConfigFaultError, match="OAUTH_SCOPE_MISMATCH") as caught:
        make_sink().deliver(make_record(SID))
    said = caught.value.message
    assert "ZohoSearch.securesearch.READ" in said and "Contacts search" in said
    assert ",".join(SCOPES) in said  # the hint lists every scope, the search one included
    assert zoho.crm.calls == {}
    assert len(zoho.accounts.minted) == 1  # a scope error is not an expired token


def test_the_docs_list_every_scope_the_sink_needs() -> None:
    docs = (ROOT / "docs" / "sinks.md").read_text(encoding="utf-8")
    zoho_section = docs.split("## Zoho CRM", 1)[1].split("\n## ", 1)[0]
    for scope in SCOPES:
        assert scope in zoho_section, scope


def test_outbound_call_status_follows_the_orgs_field_name(
    zoho: FakeZoho, make_sink: MakeSink
) -> None:
    zoho.crm.status_field = "Outbound_Call_Status"
    sink = make_sink()
    sink.deliver(make_record(SID, direction="outbound"))
    sink.deliver(make_record("c2" + SID[2:], direction="outbound"))
    assert [c["Outbound_Call_Status"] for c in zoho.crm.calls.values()] == ["Completed"] * 2
    assert all("Outgoing_Call_Status" not in c for c in zoho.crm.calls.values())
    # the metadata is read once and kept
    assert len(zoho.crm.seen("GET", "/crm/v8/settings/fields")) == 1


def test_without_the_fields_scope_the_documented_names_are_written(
    zoho: FakeZoho, make_sink: MakeSink
) -> None:
    zoho.accounts.granted = set(SCOPES) - {"ZohoCRM.settings.fields.READ"}
    make_sink().deliver(make_record(SID, direction="outbound"))
    assert only_call(zoho)["Outgoing_Call_Status"] == "Completed"


def test_a_renamed_field_is_read_again_after_zoho_refuses_it(
    zoho: FakeZoho, make_sink: MakeSink
) -> None:
    sink = make_sink()
    sink.deliver(make_record(SID, direction="outbound"))
    zoho.crm.status_field = "Outbound_Call_Status"  # an admin changed the layout
    with pytest.raises(PermanentError, match="INVALID_DATA"):
        sink.deliver(make_record("c2" + SID[2:], direction="outbound"))
    sink.deliver(make_record("c2" + SID[2:], direction="outbound"))
    assert zoho.crm.calls_for("c2" + SID[2:])[0]["Outbound_Call_Status"] == "Completed"


def test_check_reports_a_missing_scope_and_a_missing_field_with_the_fix(
    zoho: FakeZoho, make_sink: MakeSink
) -> None:
    zoho.accounts.granted = set(SCOPES) - {"ZohoSearch.securesearch.READ"}
    zoho.crm.custom_fields = set()
    with pytest.raises(CheckFailed) as caught:
        make_sink().check()
    problems = caught.value.problems
    assert len(problems) == 3, problems  # both searches, then the field
    *scopes, field = problems
    for module, scope in zip(("Contacts", "Leads"), scopes, strict=True):
        assert f"{module} search" in scope and "ZohoSearch.securesearch.READ" in scope
        assert "generate a grant token with the scopes" in scope
    assert "no field Exotel_Call_SID" in field and "add a single-line field" in field
    assert zoho.crm.calls == {}  # the check writes nothing


def test_check_reports_a_picklist_without_our_value(zoho: FakeZoho, make_sink: MakeSink) -> None:
    from tests.unit.sinks.fakes import zoho as fake_module

    original = fake_module.PICKLISTS["Call_Type"]
    fake_module.PICKLISTS["Call_Type"] = ["Inbound", "Outbound"]
    try:
        with pytest.raises(CheckFailed) as caught:
            make_sink().check()
    finally:
        fake_module.PICKLISTS["Call_Type"] = original
    assert caught.value.problems == [
        "Zoho CRM Calls field Call_Type has no picklist value 'Missed': add it to the "
        "field's picklist"
    ]


@pytest.mark.parametrize(
    ("field", "error"),
    [("refresh_token", "invalid_code"), ("client_id", "invalid_client")],
)
def test_refused_credentials_are_a_configuration_fault(
    zoho: FakeZoho, make_sink: MakeSink, field: str, error: str
) -> None:
    url = zoho.url().replace(getattr(zoho.accounts, field), "1000.wrongwrongwrong")
    with pytest.raises(ConfigFaultError) as caught:
        make_sink(url=url).deliver(make_record(SID))
    assert error in caught.value.message
    for secret in (
        zoho.accounts.client_secret,
        zoho.accounts.refresh_token,
        "1000.wrongwrongwrong",
    ):
        assert secret not in str(caught.value)


def test_token_minting_throttled_by_zoho_is_rate_limited_for_every_worker(
    zoho: FakeZoho, make_sink: MakeSink
) -> None:
    zoho.accounts.limit_per_ten_minutes = 0
    with pytest.raises(RateLimitedError) as caught:
        make_sink().deliver(make_record(SID))
    assert caught.value.retry_after == 600
    # A second worker does not ask the token endpoint again while the block lasts.
    with pytest.raises(RateLimitedError) as again:
        make_sink().deliver(make_record(SID))
    assert again.value.retry_after is not None and 590 < again.value.retry_after <= 600
    assert len(zoho.accounts.seen("POST", "/oauth/v2/token")) == 1


def test_too_many_requests_is_rate_limited(zoho: FakeZoho, make_sink: MakeSink) -> None:
    sink = make_sink()
    sink.lookup("warm-up")  # token minted
    zoho.crm.too_many_requests()
    with pytest.raises(RateLimitedError) as caught:
        sink.deliver(make_record(SID))
    assert caught.value.retry_after == 7
    assert caught.value.upstream_code == "TOO_MANY_REQUESTS"


@pytest.mark.parametrize("status", [500, 503])
def test_server_errors_are_transient(zoho: FakeZoho, make_sink: MakeSink, status: int) -> None:
    zoho.crm.fail_next(
        status,
        {
            "code": "INTERNAL_ERROR",
            "details": {},
            "message": "Internal Server Error",
            "status": "error",
        },
    )
    with pytest.raises(TransientError):
        make_sink().deliver(make_record(SID))


def test_token_endpoint_down_is_transient(zoho: FakeZoho, make_sink: MakeSink) -> None:
    zoho.accounts.fail_next(502, "Bad Gateway")
    with pytest.raises(TransientError):
        make_sink().deliver(make_record(SID))


def test_check_mints_searches_and_reads_the_fields(zoho: FakeZoho, make_sink: MakeSink) -> None:
    said = make_sink().check()
    assert "searchable" in said and "every field" in said
    assert all(secret not in said for secret in zoho.secrets)
    for path in ("Contacts/search", "Leads/search", "Calls/search", "settings/fields"):
        assert zoho.crm.seen("GET", f"/crm/v8/{path}"), path


def test_zoho_url_secrets_are_masked(zoho: FakeZoho, make_sink: MakeSink) -> None:
    sink = make_sink()
    shown = sink.display_url + repr(sink)
    assert zoho.accounts.client_secret not in shown and zoho.accounts.refresh_token not in shown


def test_agents_json_file_is_used(zoho: FakeZoho, make_sink: MakeSink, tmp_path: Path) -> None:
    path = tmp_path / "agents.json"
    path.write_text(json.dumps({"Sanjay Mishra": OWNER_ADITYA}))
    make_sink(url=zoho.url(f"&agents={path}")).deliver(make_record(SID))
    assert only_call(zoho)["Owner"] == {"id": OWNER_ADITYA}  # matched by Exotel user name


@pytest.mark.parametrize(("extra", "shown"), [("", True), ("&recordings=false", False)])
def test_the_recording_link_is_opt_out(
    zoho: FakeZoho, make_sink: MakeSink, extra: str, shown: bool
) -> None:
    make_sink(extra).deliver(make_record(SID, recording_url="https://r.exotel.com/x.mp3"))
    assert ("Recording: https://r.exotel.com/x.mp3" in str(only_call(zoho)["Description"])) is shown
