"""``exolegs sinks check`` against each CRM's fake: one row per problem, each with its fix."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from tests.unit.sinks.fakes.hubspot import FakeHubSpot
from tests.unit.sinks.fakes.leadsquared import FakeLeadSquared
from tests.unit.sinks.fakes.salesforce import FakeSalesforce
from tests.unit.sinks.fakes.zoho import FakeZoho
from worker.cli.sinks import check_sinks
from worker.settings import Settings
from worker.sinks.crm import forget_local_tokens


class Fakes:
    def __init__(self) -> None:
        self.hubspot = FakeHubSpot()
        self.zoho = FakeZoho()
        self.salesforce = FakeSalesforce()
        self.leadsquared = FakeLeadSquared()

    def urls(self) -> list[str]:
        lsq, sf = self.leadsquared, self.salesforce
        return [
            f"hubspot://?token={self.hubspot.token}&base={self.hubspot.url}"
            "&id_property=exotel_call_sid",
            self.zoho.url(),
            f"salesforce://{sf.host}?client_id={sf.client_id}&client_secret={sf.client_secret}"
            "&scheme=http",
            f"leadsquared://{lsq.host}?access_key={lsq.access_key}&secret_key={lsq.secret_key}"
            "&scheme=http",
        ]

    def secrets(self) -> list[str]:
        return [
            self.hubspot.token,
            *self.zoho.secrets,
            self.salesforce.client_secret,
            self.leadsquared.access_key,
            self.leadsquared.secret_key,
        ]


@pytest.fixture
def fakes() -> Iterator[Fakes]:
    forget_local_tokens()
    crm = Fakes()
    servers = [crm.hubspot, crm.zoho.crm, crm.zoho.accounts, crm.salesforce, crm.leadsquared]
    for server in servers:
        server.start()
    yield crm
    for server in servers:
        server.stop()
        server.assert_clean()


def run_check(fakes: Fakes, redis_client: redis.Redis) -> dict[str, list[tuple[bool, str]]]:
    settings = Settings.from_env({"SINKS": " ".join(fakes.urls())}, dotenv=False)
    rows = check_sinks(settings, redis_client)
    for secret in fakes.secrets():
        assert secret not in repr(rows)
    by_sink: dict[str, list[tuple[bool, str]]] = {}
    for name, ok, message in rows:
        by_sink.setdefault(name, []).append((ok, message))
    return by_sink


def test_healthy_crms_pass_the_check(fakes: Fakes, redis_client: redis.Redis) -> None:
    result = run_check(fakes, redis_client)
    assert {name: [ok for ok, _ in rows] for name, rows in result.items()} == {
        "hubspot": [True],
        "zoho": [True],
        "salesforce": [True],
        "leadsquared": [True],
    }
    assert fakes.hubspot.calls == {} and fakes.zoho.crm.calls == {}
    assert fakes.salesforce.tasks == {} and fakes.leadsquared.logs == []


def test_each_crm_reports_a_missing_scope_and_a_missing_field_with_the_fix(
    fakes: Fakes, redis_client: redis.Redis
) -> None:
    fakes.hubspot.granted = {"crm.objects.contacts.read"}
    fakes.hubspot.unique_properties = set()
    fakes.zoho.accounts.granted.discard("ZohoSearch.securesearch.READ")
    fakes.zoho.crm.custom_fields = set()
    fakes.salesforce.readable = {"Contact", "Task"}
    fakes.salesforce.hidden_fields = {"CallDisposition"}
    fakes.leadsquared.role = "Sales User"

    result = run_check(fakes, redis_client)

    assert all(not ok for rows in result.values() for ok, _ in rows)
    text = {name: "\n".join(message for _, message in rows) for name, rows in result.items()}
    # HubSpot: the write scope the calls guide lists, and the unique property.
    assert "lacks the scope crm.objects.contacts.write" in text["hubspot"]
    assert "in HubSpot Settings > Integrations > Private Apps" in text["hubspot"]
    assert "no field exotel_call_sid" in text["hubspot"]
    assert "requires unique values" in text["hubspot"]
    # Zoho: the search scope, and the call sid field.
    assert "ZohoSearch.securesearch.READ" in text["zoho"]
    assert "generate a grant token with the scopes" in text["zoho"]
    assert "no field Exotel_Call_SID" in text["zoho"]
    assert "add a single-line field" in text["zoho"]
    # Salesforce: Lead read on the profile, and a call field hidden by field security.
    assert "Read on Contacts and Leads" in text["salesforce"]
    assert "no field CallDisposition" in text["salesforce"]
    assert "edit access" in text["salesforce"]
    # LeadSquared: the keys' role may not use the API.
    assert "MXUnAuthorizedAccessException" in text["leadsquared"]
    assert "Administrator" in text["leadsquared"]
    assert len(result["zoho"]) == 3 and len(result["hubspot"]) == 2


def test_leadsquared_without_the_telephony_connector(
    fakes: Fakes, redis_client: redis.Redis
) -> None:
    fakes.leadsquared.activity_types = []
    rows = run_check(fakes, redis_client)["leadsquared"]
    assert [ok for ok, _ in rows] == [False, False]
    assert all("Generic Telephony Connector" in message for _, message in rows)
