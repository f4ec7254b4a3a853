"""LeadSquared: one phone-call activity per Exotel call, via the telephony call-log API.

URL: ``leadsquared://api-in21.leadsquared.com?access_key=…&secret_key=…
[&agents=/path/agents.json][&recordings=false][&scheme=http]``. The host is the
account's regional API host (Settings > API and Webhooks); ``scheme=http`` is
for tests only.

- ``POST https://{host}/v2/Telephony.svc/LogCall`` (Generic Telephony
  Connector call log). The access and secret keys go in the
  ``x-LSQ-AccessKey``/``x-LSQ-SecretKey`` headers, which LeadSquared's
  authentication docs recommend over the ``?accessKey=&secretKey=`` query
  form, so they never sit in a URL (proxy logs, exception messages).
- Numbers: inbound calls go from the customer (``SourceNumber``) to the
  agent (``DestinationNumber``), outbound the other way, as LeadSquared
  documents; phones are sent as ``+91-9876543210``. ``DisplayNumber`` is the
  ExoPhone when the callback names it. ``UserId`` is the answering (else the
  first) agent's LeadSquared user id from the agents file. Without a LeadId,
  LeadSquared finds the lead by phone and may create one.
- Idempotency: ``CallSessionId`` is the call sid; whether LeadSquared dedupes
  on it is undocumented, so the delivery ledger is what keeps one copy, and
  :meth:`LeadSquaredSink.lookup` cannot tell (there is no call-log query API).
- Limits: about 10 calls per 5 s (secondary source), no documented 429; any
  429 is backed off as a rate limit, 5xx as transient. Errors are
  ``{"Status": "Error", "ExceptionType": …, "ExceptionMessage": …}``.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar
from urllib.parse import urlsplit

from worker.errors import (
    ConfigFaultError,
    PermanentError,
    RateLimitedError,
    SettingsError,
    TransientError,
)
from worker.settings import Rate
from worker.sinks.base import CallRecord, SinkContext
from worker.sinks.crm import (
    CrmSink,
    call_direction,
    call_end,
    call_outcome,
    call_start,
    customer_phone,
    display_number,
    parse_retry_after,
    phone_formats,
    response_json,
    talk_seconds,
    utc_text,
)

METADATA_PATH = "/v2/LeadManagement.svc/LeadsMetaData.Get"
LOG_CALL_PATH = "/v2/Telephony.svc/LogCall"
DEFAULT_RETRY_AFTER = 5.0  # the documented window is 5 s


class LeadSquaredSink(CrmSink):
    scheme = "leadsquared"
    crm = "LeadSquared"
    url_help = (
        "leadsquared://api-in21.leadsquared.com?access_key=…&secret_key=…"
        "[&agents=/path/agents.json] - one phone-call activity per call"
    )
    default_rate_limit: ClassVar[Rate | None] = Rate(2, 1)

    def __init__(self, url: str, context: SinkContext) -> None:
        super().__init__(url, context)
        self.access_key = self.require("access_key")
        self.secret_key = self.require("secret_key")
        host = urlsplit(url).netloc
        if not host or not re.fullmatch(r"[A-Za-z0-9.-]+(:\d+)?", host):
            raise SettingsError(
                "SINKS",
                "leadsquared:// needs your API host, e.g. leadsquared://api-in21.leadsquared.com",
            )
        scheme = (self.query.get("scheme") or "https").lower()
        if scheme not in ("https", "http"):
            raise SettingsError(
                "SINKS", f"leadsquared:// scheme must be https or http, not {scheme!r}"
            )
        self.endpoint = f"{scheme}://{host}{LOG_CALL_PATH}"
        self.metadata_url = f"{scheme}://{host}{METADATA_PATH}"

    def _number(self, value: str | None) -> str | None:
        """``+91-9876543210`` for a phone number; a SIP address as it is."""
        if not value:
            return None
        formats = phone_formats(value, self.default_country)
        return formats.dashed if formats else value

    def payload(self, record: CallRecord) -> dict[str, Any]:
        outcome = call_outcome(record)
        direction = call_direction(record)
        customer = customer_phone(record, self.default_country)
        customer_number = customer.dashed if customer else _raw_customer(record)
        agent = record.get("answered_by") or next(iter(record.get("agents") or []), None)
        agent_number = self._number(agent.get("contact_uri")) if isinstance(agent, dict) else None
        source, destination = (
            (customer_number, agent_number)
            if direction == "inbound"
            else (agent_number, customer_number)
        )
        body: dict[str, Any] = {
            "SourceNumber": source,
            "DestinationNumber": destination,
            "StartTime": utc_text(call_start(record)),
            "EndTime": utc_text(call_end(record)),
            "CallDuration": talk_seconds(record),
            "Status": outcome.leadsquared_status,
            "Direction": direction.capitalize(),
            "CallSessionId": str(record["call_sid"]),
        }
        shown = display_number(record)
        if shown:
            body["DisplayNumber"] = self._number(shown)
        recording = self.recording(record)
        if recording:
            body["ResourceURL"] = recording
        user = self.owner_id(record)
        if user:
            body["UserId"] = user
        return {k: v for k, v in body.items() if v is not None}

    def deliver(self, record: CallRecord) -> None:
        call_sid = str(record["call_sid"])
        what = f"call {call_sid} log"
        response = self.http.request(
            "POST",
            self.endpoint,
            what=what,
            json_body=self.payload(record),
            headers={"x-LSQ-AccessKey": self.access_key, "x-LSQ-SecretKey": self.secret_key},
        )
        data = response_json(response)
        body = data if isinstance(data, dict) else {}
        status = response.status_code
        said = self.http.scrub(
            str(body.get("ExceptionMessage") or body.get("Message") or self.http.hint(response))
        )
        kind = str(body.get("ExceptionType") or "") or None
        shown = f"LeadSquared {what} answered {status}" + (f" {kind}" if kind else "")
        if status < 300:
            if str(body.get("Status", "Success")).lower() == "error":
                raise PermanentError(f"{shown}: {said}", upstream_status=status, upstream_code=kind)
            return
        if status == 429:
            wait = parse_retry_after(response.headers.get("Retry-After"))
            raise RateLimitedError(
                f"{shown}: {said}; backing off",
                retry_after=wait if wait is not None else DEFAULT_RETRY_AFTER,
                upstream_status=status,
                upstream_code=kind,
            )
        if status == 401:
            raise ConfigFaultError(
                f"{shown}: {said}. Check access_key/secret_key (they belong to an active admin "
                "user) and that the host is your account's API host",
                upstream_status=status,
                upstream_code=kind,
            )
        if status == 408 or status >= 500:
            raise TransientError(f"{shown}: {said}; retrying", upstream_status=status)
        raise PermanentError(f"{shown}: {said}", upstream_status=status, upstream_code=kind)

    def lookup(self, call_sid: str) -> bool | None:
        return None  # LeadSquared has no API to find a call log by CallSessionId

    def check(self) -> str:
        """One harmless authenticated read: the lead fields (LeadsMetaData.Get)."""
        response = self.http.request(
            "GET",
            self.metadata_url,
            what="the lead metadata check",
            headers={"x-LSQ-AccessKey": self.access_key, "x-LSQ-SecretKey": self.secret_key},
        )
        host = urlsplit(self.endpoint).netloc
        if response.status_code == 401:
            raise ConfigFaultError(
                f"LeadSquared at {host} refused access_key/secret_key: check them and the API host"
            )
        if response.status_code >= 300:
            raise TransientError(
                f"LeadSquared at {host} answered {response.status_code} to a metadata read"
            )
        fields = response_json(response)
        count = len(fields) if isinstance(fields, list) else 0
        return f"authenticated at {host} ({count} lead fields); call logs go to {LOG_CALL_PATH}"


def _raw_customer(record: CallRecord) -> str | None:
    customer = record.get("customer")
    if isinstance(customer, dict):
        value = customer.get("contact_uri")
        return str(value) if value else None
    return None
