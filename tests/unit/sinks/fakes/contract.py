"""The CRM sinks' cases for the shared sink contract suite (test_contract.py).

Imported by ``tests/unit/sinks/conftest.py``; each case runs its sink against
the local fake of its CRM, and the fake's own checks (documented request
shapes) must also hold at the end of every contract test.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tests.unit.sinks.conftest import CaseEnv, SinkCase, contract_case
from tests.unit.sinks.fakes import FakeServer
from tests.unit.sinks.fakes.hubspot import FakeHubSpot, hubspot_error
from tests.unit.sinks.fakes.leadsquared import FakeLeadSquared, lsq_error
from tests.unit.sinks.fakes.salesforce import FakeSalesforce, sf_error
from tests.unit.sinks.fakes.zoho import FakeZoho, zoho_error
from worker.sinks.base import Sink


def _start(env: CaseEnv, *fakes: FakeServer) -> None:
    for fake in fakes:
        env.stack.enter_context(fake.running())
        env.stack.callback(fake.assert_clean)  # runs before the server stops


def _fault(
    fake: FakeServer, sink: Sink, status: int, body: Any, path: str = ".*"
) -> Callable[[], Sink]:
    def arrange() -> Sink:
        fake.fail_next(status, body, path=path)
        return sink

    return arrange


def _hubspot(env: CaseEnv, extra: str) -> SinkCase:
    fake = FakeHubSpot()
    _start(env, fake)
    sink = env.build(f"hubspot://?token={fake.token}&base={fake.url}{extra}")
    return SinkCase(
        sink=sink,
        read_back=fake.calls_for,
        faults={
            "transient": _fault(fake, sink, 503, hubspot_error("Service Unavailable", "ERROR")),
            "permanent": _fault(  # the write is refused (metadata reads tolerate refusals)
                fake,
                sink,
                400,
                hubspot_error("Property values were not valid", "VALIDATION_ERROR"),
                path=r"/crm/v3/objects/calls(/batch/upsert)?",
            ),
        },
        secrets=(fake.token,),
        echoes_record=False,
    )


@contract_case("hubspot")
def hubspot_case(env: CaseEnv) -> SinkCase:
    return _hubspot(env, "")


@contract_case("hubspot-upsert")
def hubspot_upsert_case(env: CaseEnv) -> SinkCase:
    return _hubspot(env, "&id_property=exotel_call_sid")


@contract_case("zoho")
def zoho_case(env: CaseEnv) -> SinkCase:
    fake = FakeZoho()
    _start(env, fake.crm, fake.accounts)
    sink = env.build(fake.url())
    invalid = {"data": [zoho_error("INVALID_DATA", "invalid data", api_name="Call_Start_Time")]}
    return SinkCase(
        sink=sink,
        read_back=fake.crm.calls_for,
        faults={
            "transient": _fault(
                fake.crm, sink, 503, zoho_error("INTERNAL_ERROR", "Internal Server Error")
            ),
            "permanent": _fault(fake.crm, sink, 400, invalid, path=r".*/Calls"),
        },
        secrets=(fake.accounts.client_secret, fake.accounts.refresh_token),
        echoes_record=False,
    )


@contract_case("leadsquared")
def leadsquared_case(env: CaseEnv) -> SinkCase:
    fake = FakeLeadSquared()
    _start(env, fake)
    sink = env.build(
        f"leadsquared://{fake.host}?access_key={fake.access_key}&secret_key={fake.secret_key}"
        "&scheme=http"
    )
    return SinkCase(
        sink=sink,
        read_back=fake.logs_for,
        faults={
            "transient": _fault(fake, sink, 503, "Service Unavailable"),
            "permanent": _fault(
                fake, sink, 500, lsq_error("MXInvalidInputException", "Invalid SourceNumber")
            ),
        },
        secrets=(fake.access_key, fake.secret_key),
        echoes_record=False,
        needs_dialable_customer=True,  # a masked caller is not logged (it would create a lead)
    )


def _salesforce(env: CaseEnv, extra: str) -> SinkCase:
    fake = FakeSalesforce()
    _start(env, fake)
    sink = env.build(
        f"salesforce://{fake.host}?client_id={fake.client_id}&client_secret={fake.client_secret}"
        f"&scheme=http{extra}"
    )
    api = r"/services/data/.*"
    return SinkCase(
        sink=sink,
        read_back=fake.tasks_for,
        faults={
            "transient": _fault(fake, sink, 503, sf_error("SERVER_UNAVAILABLE", "Try later"), api),
            "permanent": _fault(
                fake,
                sink,
                400,
                sf_error("FIELD_CUSTOM_VALIDATION_EXCEPTION", "Subject is too vague", ["Subject"]),
                r"/services/data/[^/]+/sobjects/Task(/(?!describe$)[^/]+/.+)?",  # the write
            ),
        },
        secrets=(fake.client_secret,),
        echoes_record=False,
    )


@contract_case("salesforce")
def salesforce_case(env: CaseEnv) -> SinkCase:
    return _salesforce(env, "")


@contract_case("salesforce-upsert")
def salesforce_upsert_case(env: CaseEnv) -> SinkCase:
    return _salesforce(env, "&external_id=Exotel_Call_Sid__c")
