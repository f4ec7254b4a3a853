"""Salesforce sink against a local fake org (tests/unit/sinks/fakes/salesforce.py)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.unit.sinks.fakes import ADITYA_SIP, CUSTOMER_NATIONAL, SANJAY, make_record
from tests.unit.sinks.fakes.salesforce import FakeSalesforce, sf_error
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
from worker.sinks.salesforce import SalesforceSink

SID = "f1ca1057692d586b23b4e7ffcc3216mk"
USER_SANJAY = "0055g00000AbCdEAAA"
USER_ADITYA = "0055g00000AbCdFAAA"
MakeSink = Callable[..., SalesforceSink]


@pytest.fixture
def org() -> Iterator[FakeSalesforce]:
    fake = FakeSalesforce()
    with fake.running():
        yield fake
    fake.assert_clean()


@pytest.fixture
def make_sink(
    org: FakeSalesforce, settings: Settings, redis_client: redis.Redis, tmp_path: Path
) -> Iterator[MakeSink]:
    agents = tmp_path / "agents.json"
    agents.write_text(json.dumps({SANJAY: USER_SANJAY, ADITYA_SIP: USER_ADITYA}))
    built: list[SalesforceSink] = []

    def make(extra: str = "", *, auth: str | None = None) -> SalesforceSink:
        login = auth if auth is not None else f"&client_secret={org.client_secret}"
        url = (
            f"salesforce://{org.host}?client_id={org.client_id}{login}"
            f"&scheme=http&agents={agents}{extra}"
        )
        sink = build_sink(url, SinkContext(settings=settings, redis=redis_client))
        assert isinstance(sink, SalesforceSink)
        built.append(sink)
        return sink

    yield make
    for sink in built:
        sink.close()


def only_task(org: FakeSalesforce) -> dict[str, object]:
    assert len(org.tasks) == 1, org.tasks
    return next(iter(org.tasks.values()))


def test_the_url_and_published_limit(make_sink: MakeSink, org: FakeSalesforce) -> None:
    sink = make_sink()
    assert sink.rate_limit == Rate(2, 1) and sink.mode == "client_credentials"
    assert sink.native_idempotency is False
    assert org.client_secret not in sink.display_url + repr(sink)


def test_an_answered_call_is_a_completed_task_on_the_contact(
    org: FakeSalesforce, make_sink: MakeSink
) -> None:
    org.add("Lead", "+91 98123 45678")
    contact = org.add("Contact", "(0) 98123-45678")
    make_sink().deliver(make_record(SID))

    sign_in = org.seen("POST", "/services/oauth2/token")[0].form
    assert sign_in == {
        "grant_type": "client_credentials",
        "client_id": org.client_id,
        "client_secret": org.client_secret,
    }
    search = org.seen("GET", "/services/data/v61.0/search")[0]
    assert search.query["q"] == (
        f"FIND {{{CUSTOMER_NATIONAL} OR 91{CUSTOMER_NATIONAL}}} IN PHONE FIELDS "
        "RETURNING Contact(Id), Lead(Id)"
    )
    task = only_task(org)
    assert task == {
        "Id": task["Id"],
        "Subject": task["Subject"],
        "TaskSubtype": "Call",
        "Status": "Completed",
        "ActivityDate": "2020-09-15",
        "CallType": "Inbound",
        "CallDurationInSeconds": 60,
        "CallObject": SID,
        "CallDisposition": "Connected",
        "Description": task["Description"],
        "WhoId": contact,  # a contact wins over a lead
        "OwnerId": USER_SANJAY,
    }
    assert "Priya Nair" in str(task["Description"])


def test_a_lead_when_there_is_no_contact(org: FakeSalesforce, make_sink: MakeSink) -> None:
    lead = org.add("Lead", CUSTOMER_NATIONAL)
    make_sink().deliver(make_record(SID, answered=False))
    task = only_task(org)
    assert task["WhoId"] == lead
    assert task["CallDisposition"] == "No answer" and task["CallDurationInSeconds"] == 0
    assert task["OwnerId"] == USER_ADITYA


def test_an_outbound_call(org: FakeSalesforce, make_sink: MakeSink) -> None:
    make_sink().deliver(make_record(SID, direction="outbound"))
    task = only_task(org)
    assert task["CallType"] == "Outbound" and task["CallDurationInSeconds"] == 105
    assert "WhoId" not in task


def test_lookup_queries_tasks_by_call_object(org: FakeSalesforce, make_sink: MakeSink) -> None:
    sink = make_sink()
    assert sink.lookup(SID) is False
    sink.deliver(make_record(SID))
    assert sink.lookup(SID) is True
    assert sink.lookup("it's") is False  # quotes are escaped, not injected
    queries = [s.query["q"] for s in org.seen("GET", "/services/data/v61.0/query")]
    assert queries[0] == f"SELECT Id FROM Task WHERE CallObject = '{SID}' LIMIT 1"
    assert queries[-1] == "SELECT Id FROM Task WHERE CallObject = 'it\\'s' LIMIT 1"


def test_upsert_by_external_id_keeps_one_task(org: FakeSalesforce, make_sink: MakeSink) -> None:
    sink = make_sink("&external_id=Exotel_Call_Sid__c")
    assert sink.native_idempotency is True and sink.lookup(SID) is None
    sink.deliver(make_record(SID))
    sink.deliver(make_record(SID))  # the second is an update: TaskSubtype is create-only
    task = only_task(org)
    assert task["Exotel_Call_Sid__c"] == SID and task["TaskSubtype"] == "Call"
    patches = org.seen("PATCH", rf"/services/data/v61.0/sobjects/Task/Exotel_Call_Sid__c/{SID}")
    assert len(patches) == 3  # create, refused update with TaskSubtype, update without it
    assert "TaskSubtype" not in patches[2].json


def test_several_tasks_with_one_external_id_is_permanent(
    org: FakeSalesforce, make_sink: MakeSink
) -> None:
    org.tasks = {
        "00T1": {"Id": "00T1", "Exotel_Call_Sid__c": SID},
        "00T2": {"Id": "00T2", "Exotel_Call_Sid__c": SID},
    }
    with pytest.raises(PermanentError, match="several Tasks"):
        make_sink("&external_id=Exotel_Call_Sid__c").deliver(make_record(SID))


def test_an_unknown_external_id_field_is_a_configuration_fault(
    org: FakeSalesforce, make_sink: MakeSink
) -> None:
    with pytest.raises(ConfigFaultError, match="Provided external ID field does not exist"):
        make_sink("&external_id=Nope__c").deliver(make_record(SID))


def test_an_expired_session_signs_in_again_once(org: FakeSalesforce, make_sink: MakeSink) -> None:
    sink = make_sink()
    sink.deliver(make_record("first"))
    org.expire_sessions()
    sink.deliver(make_record("second"))
    assert org.sign_ins == ["client_credentials", "client_credentials"]
    assert len(org.tasks) == 2


def test_a_session_refused_twice_is_a_configuration_fault(
    org: FakeSalesforce, make_sink: MakeSink
) -> None:
    org.fail_next(
        401,
        sf_error("INVALID_SESSION_ID", "Session expired or invalid"),
        path=r"/services/data/.*",
        times=2,
    )
    with pytest.raises(ConfigFaultError, match="freshly minted session"):
        make_sink().deliver(make_record(SID))
    assert len(org.sign_ins) == 2


def test_the_session_is_shared_by_workers_through_redis(
    org: FakeSalesforce, make_sink: MakeSink
) -> None:
    make_sink().deliver(make_record("one"))
    make_sink().deliver(make_record("two"))  # another worker: same credentials, same cache
    assert org.sign_ins == ["client_credentials"]


def test_the_api_allocation_running_out_parks_deliveries(
    org: FakeSalesforce, make_sink: MakeSink
) -> None:
    sink = make_sink()
    sink.lookup("warm-up")
    org.limit_exceeded()
    with pytest.raises(RateLimitedError) as caught:
        sink.deliver(make_record(SID))
    assert caught.value.retry_after == 900
    assert "api-usage=15001/15000" in caught.value.message


def test_a_refused_sign_in_is_a_configuration_fault(
    org: FakeSalesforce, make_sink: MakeSink
) -> None:
    with pytest.raises(ConfigFaultError, match="invalid_grant") as caught:
        make_sink(auth="&client_secret=WRONGSECRET0000").deliver(make_record(SID))
    assert "WRONGSECRET0000" not in str(caught.value) and org.client_secret not in str(caught.value)


def test_refresh_token_sign_in(org: FakeSalesforce, make_sink: MakeSink) -> None:
    sink = make_sink(auth=f"&refresh_token={org.refresh_token}")
    assert sink.mode == "refresh_token"
    sink.deliver(make_record(SID))
    form = org.seen("POST", "/services/oauth2/token")[0].form
    assert form == {
        "grant_type": "refresh_token",
        "client_id": org.client_id,
        "refresh_token": org.refresh_token,
    }


def test_jwt_bearer_sign_in(org: FakeSalesforce, make_sink: MakeSink, tmp_path: Path) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    org.public_key = key.public_key()
    pem = tmp_path / "server.key"
    pem.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    sink = make_sink(auth=f"&username={org.username}&private_key_file={pem}")
    assert sink.mode == "jwt"
    sink.deliver(make_record(SID))
    assert org.sign_ins == ["urn:ietf:params:oauth:grant-type:jwt-bearer"]
    assert len(org.tasks) == 1

    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    org.public_key = other.public_key()  # the certificate on the app no longer matches
    org.expire_sessions()
    with pytest.raises(ConfigFaultError, match="certificate"):
        sink.deliver(make_record("second"))


def test_bad_key_files_are_settings_errors(
    make_sink: MakeSink, tmp_path: Path, org: FakeSalesforce
) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n")
    with pytest.raises(SettingsError, match="PEM private key"):
        make_sink(auth=f"&username=u&private_key_file={garbage}")
    with pytest.raises(SettingsError, match="cannot be read"):
        make_sink(auth=f"&username=u&private_key_file={tmp_path / 'missing.pem'}")
    with pytest.raises(SettingsError, match="client_secret"):
        make_sink(auth="")


def test_an_unknown_owner_is_permanent(org: FakeSalesforce, make_sink: MakeSink) -> None:
    org.users = set()
    with pytest.raises(PermanentError, match="INVALID_CROSS_REFERENCE_KEY") as caught:
        make_sink().deliver(make_record(SID))
    assert "OwnerId" in caught.value.message


def test_call_fields_the_user_cannot_write_are_a_configuration_fault(
    org: FakeSalesforce, make_sink: MakeSink
) -> None:
    org.fail_next(
        400,
        sf_error(
            "INVALID_FIELD", "No such column 'CallObject' on sobject of type Task", ["CallObject"]
        ),
        method="POST",
        path=r".*/sobjects/Task",
    )
    with pytest.raises(ConfigFaultError, match="CallObject"):
        make_sink().deliver(make_record(SID))


@pytest.mark.parametrize("status", [500, 503])
def test_server_errors_are_transient(org: FakeSalesforce, make_sink: MakeSink, status: int) -> None:
    org.fail_next(
        status,
        sf_error("SERVER_UNAVAILABLE", "Server temporarily unavailable"),
        path=r"/services/data/.*",
    )
    with pytest.raises(TransientError):
        make_sink().deliver(make_record(SID))


def test_check_describes_task_and_probes_each_endpoint(
    org: FakeSalesforce, make_sink: MakeSink
) -> None:
    assert "call fields" in make_sink("&external_id=Exotel_Call_Sid__c").check()
    assert org.seen("GET", r".*/search") and org.seen("GET", r".*/query")
    assert org.seen("GET", r".*/sobjects/Task/describe") and org.tasks == {}


def test_check_reports_a_missing_permission_and_a_missing_field_with_the_fix(
    org: FakeSalesforce, make_sink: MakeSink
) -> None:
    org.readable = {"Contact", "Task"}  # the profile cannot read Leads
    org.hidden_fields = {"CallObject"}  # field-level security hides it
    with pytest.raises(CheckFailed) as caught:
        make_sink("&external_id=Other__c").check()
    search, field, external = caught.value.problems
    assert "INVALID_TYPE" in search and "Read on Contacts and Leads" in search
    assert "Salesforce Task has no field CallObject" in field and "edit access" in field
    assert "no field Other__c" in external and "External ID and Unique" in external


def test_check_reports_a_connected_app_without_the_api_scope(
    org: FakeSalesforce, make_sink: MakeSink
) -> None:
    org.oauth_scopes = "id refresh_token"
    with pytest.raises(CheckFailed) as caught:
        make_sink().check()
    assert "add 'Manage user data via APIs (api)'" in caught.value.problems[0]


def test_a_profile_without_task_create_is_reported(
    org: FakeSalesforce, make_sink: MakeSink
) -> None:
    org.task_createable = False
    with pytest.raises(CheckFailed) as caught:
        make_sink().check()
    assert caught.value.problems == [
        "the Salesforce integration user cannot create Tasks: give its profile "
        "(or a permission set) Create on Tasks"
    ]


def test_fields_the_user_cannot_see_are_left_out(org: FakeSalesforce, make_sink: MakeSink) -> None:
    org.hidden_fields = {"OwnerId", "Description"}
    make_sink().deliver(make_record(SID))
    (task,) = org.tasks_for(SID)
    assert "OwnerId" not in task and "Description" not in task
    assert len(org.seen("GET", r".*/sobjects/Task/describe")) == 1


def test_a_duplicate_value_on_the_external_id_means_the_task_is_there(
    org: FakeSalesforce, make_sink: MakeSink
) -> None:
    sink = make_sink("&external_id=Exotel_Call_Sid__c")
    sink.deliver(make_record(SID))
    org.duplicate_value()  # a racing upsert of the same call won
    sink.deliver(make_record(SID))
    assert len(org.tasks_for(SID)) == 1


def test_a_duplicate_value_on_another_field_is_permanent(
    org: FakeSalesforce, make_sink: MakeSink
) -> None:
    org.duplicate_value("Some_Unique__c")
    with pytest.raises(PermanentError, match="DUPLICATE_VALUE"):
        make_sink("&external_id=Exotel_Call_Sid__c").deliver(make_record(SID))


def test_a_masked_caller_is_not_searched_for(org: FakeSalesforce, make_sink: MakeSink) -> None:
    make_sink().deliver(make_record(SID, customer="0987xxxxxxx"))
    assert org.seen("GET", r".*/search") == []
    (task,) = org.tasks_for(SID)
    assert "WhoId" not in task
