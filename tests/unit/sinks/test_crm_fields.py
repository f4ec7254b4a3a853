"""Field metadata: which API names a CRM sink writes, and what ``sinks check`` reports."""

from __future__ import annotations

import pytest

from worker.errors import ConfigFaultError, PermanentError, TransientError
from worker.sinks.crm.fields import FieldCache, FieldInfo, FieldSpec, defaults, resolve

SPECS = [
    FieldSpec("status", ("Outgoing_Call_Status", "Outbound_Call_Status"), values=("Completed",)),
    FieldSpec("kind", ("Call_Type",), values=("Inbound", "Missed")),
    FieldSpec("owner", ("Owner",), required=False),
    FieldSpec("sid", ("Exotel_Call_SID",), fix="add a single-line field"),
]


def fields(*infos: FieldInfo) -> dict[str, FieldInfo]:
    return {info.name: info for info in infos}


def test_the_name_the_crm_has_wins_over_the_documented_one() -> None:
    names, problems = resolve(
        SPECS,
        fields(
            FieldInfo("Outbound_Call_Status", options=("Completed", "Scheduled")),
            FieldInfo("Call_Type", options=("Inbound", "Outbound", "Missed")),
            FieldInfo("Owner"),
            FieldInfo("Exotel_Call_SID"),
        ),
        what="Zoho CRM Calls",
    )
    assert problems == []
    assert names.name("status") == "Outbound_Call_Status" and names.from_metadata


def test_each_problem_is_one_line_with_its_fix() -> None:
    names, problems = resolve(
        SPECS,
        fields(
            FieldInfo("Outgoing_Call_Status", writable=False),
            FieldInfo("Call_Type", options=("Inbound", "Outbound")),
        ),
        what="Zoho CRM Calls",
    )
    assert problems == [
        "Zoho CRM Calls field Outgoing_Call_Status is read-only for this user: give the "
        "integration user edit access to it (field-level security)",
        "Zoho CRM Calls field Call_Type has no picklist value 'Missed': add it to the field's "
        "picklist",
        "Zoho CRM Calls has no field Exotel_Call_SID: add a single-line field",
    ]
    assert names.name("owner") is None  # optional and missing: left out
    assert names.name("sid") == "Exotel_Call_SID"  # required and missing: the CRM will say so


def test_without_metadata_the_documented_names_are_used() -> None:
    names = defaults(SPECS)
    assert names.name("status") == "Outgoing_Call_Status" and not names.from_metadata


def test_the_cache_reads_the_metadata_once_and_again_after_forget() -> None:
    reads: list[int] = []

    def load() -> dict[str, FieldInfo]:
        reads.append(1)
        return fields(FieldInfo("Outbound_Call_Status"))

    cache = FieldCache(SPECS, load, what="x")
    assert cache.get().name("status") == "Outbound_Call_Status"
    assert cache.get().name("status") == "Outbound_Call_Status"
    assert len(reads) == 1
    cache.forget()
    cache.get()
    assert len(reads) == 2


@pytest.mark.parametrize("error", [ConfigFaultError("no scope"), PermanentError("old API")])
def test_a_refused_metadata_read_falls_back_to_the_documented_names(error: Exception) -> None:
    def load() -> dict[str, FieldInfo]:
        raise error

    names = FieldCache(SPECS, load, what="x").get()
    assert names.name("status") == "Outgoing_Call_Status" and not names.from_metadata


def test_a_crm_that_is_down_fails_the_delivery() -> None:
    def load() -> dict[str, FieldInfo]:
        raise TransientError("503")

    with pytest.raises(TransientError):
        FieldCache(SPECS, load, what="x").get()
