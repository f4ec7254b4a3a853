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
  LeadSquared finds the lead by phone and may create one, so only dialable
  numbers are sent: a call whose customer number is masked or a SIP URI is
  not logged at all (it would create a junk lead), and an agent without a
  dialable number is identified by ``UserId`` alone.
- Idempotency: ``CallSessionId`` is the call sid; whether LeadSquared dedupes
  on it is undocumented, so the delivery ledger is what keeps one copy, and
  :meth:`LeadSquaredSink.lookup` cannot tell (there is no call-log query API).
- Errors: LeadSquared answers application errors (a missing or invalid
  attribute) with HTTP **500** and ``{"Status": "Error", "ExceptionType": …,
  "ExceptionMessage": …}`` (apidocs.leadsquared.com/error-handling), so
  failures are classified by ``ExceptionType``, not by status: validation
  exceptions are permanent, an unauthorised key is a configuration fault,
  and only a 5xx without a known exception (a real server error) is
  transient. Limits: about 10 calls per 5 s (secondary source), no
  documented 429; a 429 is backed off as a rate limit.
"""

from __future__ import annotations

import logging
import re
from typing import Any, ClassVar
from urllib.parse import urlsplit

import requests

from worker.calls.exotel import server_now
from worker.errors import (
    ConfigFaultError,
    ExolegsError,
    PermanentError,
    RateLimitedError,
    SettingsError,
    TransientError,
)
from worker.settings import Rate
from worker.sinks.base import CallRecord, CheckFailed, SinkContext
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
from worker.sinks.crm.phone import agent_phone

log = logging.getLogger(__name__)

ACTIVITY_TYPES_PATH = "/v2/ProspectActivity.svc/ActivityTypes.Get"
LOG_CALL_PATH = "/v2/Telephony.svc/LogCall"
DEFAULT_RETRY_AFTER = 5.0  # the documented window is 5 s
#: The activity types a telephony call log becomes (the Generic Telephony Connector's).
PHONE_CALL_ACTIVITIES = ("Inbound Phone Call Activity", "Outbound Phone Call Activity")
#: Exceptions about the request itself: sending it again cannot help.
VALIDATION_EXCEPTIONS = frozenset(
    {
        "MXMandatoryAttributeMissingException",
        "MXInvalidInputException",
        "MXInvalidEntityException",
        "MXDuplicateEntryException",
        "MXInvalidPhoneNumberException",
        "MXEntityNotFoundException",
    }
)
_VALIDATION_WORDS = re.compile(r"Mandatory|Invalid|Duplicate|Validation|NotFound|NotExist|Missing")
#: Exceptions that mean the keys, their user's role or the host are wrong.
CONFIG_EXCEPTIONS = frozenset({"MXUnAuthorizedAccessException", "MXAPINotFoundException"})
RATE_EXCEPTIONS = frozenset({"MXAPIRateLimitExceededException"})


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
        self.activity_types_url = f"{scheme}://{host}{ACTIVITY_TYPES_PATH}"

    def _number(self, value: str | None) -> str | None:
        """``+91-9876543210`` for a dialable number; None for masked numbers and SIP URIs."""
        formats = phone_formats(value, self.default_country) if value else None
        return formats.dashed if formats else None

    def payload(self, record: CallRecord) -> dict[str, Any] | None:
        """The LogCall body; None when the call cannot be filed on a lead.

        LeadSquared files a call on the lead whose phone is the customer's
        number, creating that lead when none has it; a masked number or a SIP
        URI would create a junk lead, so such a call is not logged.
        """
        outcome = call_outcome(record)
        direction = call_direction(record)
        customer = customer_phone(record, self.default_country)
        if customer is None:
            return None
        agent_number = self._number(agent_phone(record, self.default_country))
        source, destination = (
            (customer.dashed, agent_number)
            if direction == "inbound"
            else (agent_number, customer.dashed)
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

    def _headers(self) -> dict[str, str]:
        return {"x-LSQ-AccessKey": self.access_key, "x-LSQ-SecretKey": self.secret_key}

    def deliver(self, record: CallRecord) -> None:
        call_sid = str(record["call_sid"])
        payload = self.payload(record)
        if payload is None:
            log.warning(
                "leadsquared: call %s not logged: the customer's number is masked or not a "
                "phone number, and LeadSquared would file it on a new lead with that number",
                call_sid,
            )
            return
        what = f"call {call_sid} log"
        response = self.http.request(
            "POST", self.endpoint, what=what, json_body=payload, headers=self._headers()
        )
        if response.status_code < 300:
            data = response_json(response)
            body = data if isinstance(data, dict) else {}
            if str(body.get("Status", "Success")).lower() != "error":
                return
        raise self._error(response, what)

    def _error(self, response: requests.Response, what: str) -> ExolegsError:
        """Classify by LeadSquared's ``ExceptionType`` first, by status only without one."""
        data = response_json(response)
        body = data if isinstance(data, dict) else {}
        status = response.status_code
        said = self.http.scrub(
            str(body.get("ExceptionMessage") or body.get("Message") or self.http.hint(response))
        )
        kind = str(body.get("ExceptionType") or "") or None
        shown = f"LeadSquared {what} answered {status}" + (f" {kind}" if kind else "")
        if status == 429 or kind in RATE_EXCEPTIONS:
            wait = parse_retry_after(
                response.headers.get("Retry-After"), server_now(response.headers)
            )
            return RateLimitedError(
                f"{shown}: {said}; backing off",
                retry_after=wait if wait is not None else DEFAULT_RETRY_AFTER,
                upstream_status=status,
                upstream_code=kind,
            )
        if status == 401 or kind in CONFIG_EXCEPTIONS:
            return ConfigFaultError(
                f"{shown}: {said}. Check access_key/secret_key (they belong to an active user "
                "whose role may use the API: an Administrator's keys work), and that the host "
                "is your account's API host (Settings > API and Webhooks)",
                upstream_status=status,
                upstream_code=kind,
            )
        if kind and (kind in VALIDATION_EXCEPTIONS or _VALIDATION_WORDS.search(kind)):
            hint = (
                "; check the agent's entry in the agents file (agents=): UserId must be a "
                "LeadSquared user id, and names an agent who has no phone number"
                if "Number" in said or "UserId" in said
                else ""
            )
            return PermanentError(
                f"{shown}: {said}{hint}", upstream_status=status, upstream_code=kind
            )
        if status == 408 or status >= 500 or (status < 300 and not kind):
            return TransientError(f"{shown}: {said}; retrying", upstream_status=status)
        return PermanentError(f"{shown}: {said}", upstream_status=status, upstream_code=kind)

    def lookup(self, call_sid: str) -> bool | None:
        return None  # LeadSquared has no API to find a call log by CallSessionId

    def check(self) -> str:
        """Read the activity types, and offer LogCall an empty call log.

        ``ActivityTypes.Get`` proves the keys and shows whether the account has
        the phone call activities a call log becomes (the telephony connector
        is installed). An empty LogCall body is refused by LeadSquared's
        validation before anything is written, which proves the keys' user
        may call the telephony API without logging a call.
        """
        host = urlsplit(self.endpoint).netloc
        problems: list[str] = []
        response = self.http.request(
            "GET", self.activity_types_url, what="activity types (check)", headers=self._headers()
        )
        types_known = response.status_code != 404
        if not types_known:
            pass  # this host has no activity-types API: the connector cannot be confirmed
        elif response.status_code >= 300:
            err = self._error(response, "activity types (check)")
            if not isinstance(err, ConfigFaultError):
                raise err
            problems.append(err.message)
        else:
            names = _activity_names(response_json(response))
            for name in PHONE_CALL_ACTIVITIES:
                if name not in names:
                    problems.append(
                        f"LeadSquared at {host} has no {name!r} activity type: install and "
                        "configure the LeadSquared Generic Telephony Connector (Apps > Apps "
                        "Marketplace > Telephony) so call logs have an activity to become"
                    )
        probe = self.http.request(
            "POST", self.endpoint, what="call log (check)", json_body={}, headers=self._headers()
        )
        err = self._error(probe, "call log (check)")
        if isinstance(err, ConfigFaultError):
            if err.message not in problems:
                problems.append(err.message)
        elif not isinstance(err, PermanentError):
            raise err  # LeadSquared is down or slow: the check itself failed
        if problems:
            raise CheckFailed(problems)
        types = (
            "the phone call activity types exist"
            if types_known
            else "the activity types could not be read (404), so the telephony connector is "
            "not confirmed"
        )
        return (
            f"authenticated at {host}; {types}; the keys may call {LOG_CALL_PATH} (an empty "
            "call log was refused, as it should be)"
        )


def _activity_names(data: Any) -> set[str]:
    rows = data if isinstance(data, list) else []
    names = set()
    for row in rows:
        if isinstance(row, dict):
            for key in ("DisplayName", "ActivityEventName", "Name"):
                if row.get(key):
                    names.add(str(row[key]))
    return names
