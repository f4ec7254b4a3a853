"""Phone numbers for the CRM sinks: lookup formats, and what may be sent as a number.

Masked numbers (``0987xxxxxxx``), SIP URIs and anything else that is not a
dialable number are never sent to a CRM as a phone number.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

import phonenumbers

from worker.calls.enrich import to_e164
from worker.sinks.base import CallRecord
from worker.sinks.crm.calls import call_direction


@dataclass(frozen=True)
class PhoneFormats:
    """One number written the ways CRM users type it (phone fields are free text)."""

    e164: str  # +919876543210
    national: str  # 9876543210
    trunk: str  # 09876543210 (national with the trunk prefix, where the country has one)
    digits: str  # 919876543210
    country_code: int

    def variants(self) -> list[str]:
        """Every distinct form, most specific first."""
        out: list[str] = []
        for value in (self.e164, self.national, self.trunk, self.digits):
            if value and value not in out:
                out.append(value)
        return out

    @property
    def dashed(self) -> str:
        """``+91-9876543210``: the form LeadSquared documents and stores."""
        return f"+{self.country_code}-{self.national}"


def phone_formats(text: str | None, default_country: str) -> PhoneFormats | None:
    e164 = to_e164(text, default_country)
    if e164 is None:
        return None
    number = phonenumbers.parse(e164, None)
    national = str(phonenumbers.national_significant_number(number))
    in_national_format = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.NATIONAL)
    trunk = re.sub(r"\D", "", in_national_format)
    return PhoneFormats(
        e164=e164,
        national=national,
        trunk=trunk,
        digits=e164.lstrip("+"),
        country_code=int(number.country_code or 0),
    )


def customer_phone(record: CallRecord, default_country: str) -> PhoneFormats | None:
    """The customer's number in lookup formats; None for SIP or masked numbers."""
    customer = record.get("customer")
    if not isinstance(customer, Mapping):
        return None
    for value in (customer.get("phone_e164"), customer.get("contact_uri")):
        if isinstance(value, str):
            formats = phone_formats(value, default_country)
            if formats is not None:
                return formats
    return None


def display_number(record: CallRecord) -> str | None:
    """The ExoPhone the call used, from the callback, when it says."""
    callback = record.get("callback")
    if not isinstance(callback, Mapping):
        return None
    direction = call_direction(record)
    names = (
        ("CallTo", "To", "PhoneNumberSid", "virtual_number")
        if direction == "inbound"
        else ("PhoneNumberSid", "CallerId", "virtual_number", "From")
    )
    for name in names:
        value = callback.get(name)
        if isinstance(value, str) and value.strip() and value.strip().lower() != "null":
            return value.strip()
    return None


def dialable(value: object, default_country: str) -> str | None:
    """E.164 for a number a CRM may be given as a phone number, else None.

    Masked numbers (``0987xxxxxxx``), SIP URIs (``sip:asha@acme…``, even with
    digits in the user part) and anything that is not a valid number are not
    dialable: no CRM gets them as a phone number, and no contact is searched
    for with them.
    """
    if not isinstance(value, str):
        return None
    return to_e164(value, default_country)


def agent_phone(record: CallRecord, default_country: str) -> str | None:
    """The dialable number of the agent who answered, else of the first agent dialled."""
    agent = record.get("answered_by") or next(iter(record.get("agents") or []), None)
    if not isinstance(agent, Mapping):
        return None
    for leg in [*(record.get("from") or []), *(record.get("to") or [])]:
        if isinstance(leg, Mapping) and leg.get("contact_uri") == agent.get("contact_uri"):
            return dialable(leg.get("phone_e164"), default_country) or dialable(
                leg.get("contact_uri"), default_country
            )
    return dialable(agent.get("contact_uri"), default_country)
