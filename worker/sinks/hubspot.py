"""HubSpot: one call engagement per Exotel call, on the caller's contact.

URL: ``hubspot://?token=pat-…[&id_property=exotel_call_sid][&agents=/path/agents.json]
[&recordings=false][&base=https://api.hubapi.com]``. The host part, when given,
is the API host (``hubspot://api-eu1.hubapi.com?token=…``); ``base`` overrides
scheme and host (tests, proxies).

- Auth: a private-app token as ``Authorization: Bearer``, with the scopes
  HubSpot's calls guide lists (:data:`SCOPES`): ``crm.objects.contacts.read``
  and ``crm.objects.contacts.write``.
- Properties: ``GET /crm/v3/properties/calls`` says which call properties
  the portal has (and whether ``id_property`` is unique); properties it
  lacks are left out, read once an hour per process.
- Contact: ``POST /crm/v3/objects/contacts/search`` on ``phone`` OR
  ``mobilephone`` IN the customer's number in several formats (E.164,
  national, 0-prefixed, digits); the oldest match gets the call (association
  type 194, call -> contact).
- Idempotency: with ``id_property`` (a calls property created with
  ``hasUniqueValue: true``) the call is written by ``POST
  /crm/v3/objects/calls/batch/upsert`` keyed on the call sid, so HubSpot
  itself dedupes. Without it, :meth:`HubSpotSink.lookup` searches calls whose
  title holds the sid when an earlier attempt's outcome is unknown (HubSpot
  indexes new records after ~10 s, so this is best effort; the delivery
  ledger covers everything else).
- Limits: 100 requests per 10 s per portal (190 on Pro/Enterprise) and about
  4 searches per second per token. A delivery makes one search (the contact)
  and one to two writes, so the default is 3 deliveries per second: at most 3
  searches/s and 90 requests per 10 s. 429s carry ``policyName``: the 10-second
  and per-second policies wait ``Retry-After`` (else 10 s / 1 s); DAILY waits
  until the next UTC midnight (HubSpot resets at midnight in the portal's own
  time zone, which the API does not tell us, so this may wait up to a day
  longer or shorter than needed by the zone's offset; never less than 1 s).
"""

from __future__ import annotations

from typing import Any, ClassVar
from urllib.parse import quote, urlsplit

import requests

from worker.calls.exotel import server_now
from worker.errors import (
    ConfigFaultError,
    ExolegsError,
    PermanentError,
    RateLimitedError,
    TransientError,
)
from worker.settings import Rate
from worker.sinks.base import CallRecord, CheckFailed, SinkContext
from worker.sinks.crm import (
    OUTCOMES,
    CrmSink,
    call_direction,
    call_outcome,
    call_start,
    call_title,
    customer_phone,
    duration_ms,
    iso_utc,
    parse_retry_after,
    response_json,
    seconds_until_utc_midnight,
    summary_html,
    talk_seconds,
)
from worker.sinks.crm.fields import FieldCache, FieldInfo, FieldSpec, resolve
from worker.sinks.crm.phone import agent_phone

DEFAULT_BASE = "https://api.hubapi.com"
CALL_TO_CONTACT = 194  # HUBSPOT_DEFINED association type: call -> contact
_RECORDING_SUFFIXES = (".mp3", ".wav")
#: The scopes HubSpot's calls guide lists for the calls API
#: (https://developers.hubspot.com/docs/api/crm/calls, "Scope requirements").
SCOPES = ("crm.objects.contacts.read", "crm.objects.contacts.write")
APP_INFO_PATH = "/oauth/v2/private-apps/get/access-token-info"  # what a private app may do
_APP_SETTINGS = "HubSpot Settings > Integrations > Private Apps > your app > Scopes"


class HubSpotSink(CrmSink):
    scheme = "hubspot"
    crm = "HubSpot"
    url_help = (
        "hubspot://?token=pat-…[&id_property=exotel_call_sid][&agents=/path/agents.json]"
        " - one call engagement per call, on the caller's contact"
    )
    default_rate_limit: ClassVar[Rate | None] = Rate(3, 1)

    def __init__(self, url: str, context: SinkContext) -> None:
        super().__init__(url, context)
        self.token = self.require("token")
        self.id_property = self.query.get("id_property") or None
        host = urlsplit(url).netloc
        base = self.query.get("base") or (f"https://{host}" if host else DEFAULT_BASE)
        self.base = base.rstrip("/")
        if self.id_property:
            # HubSpot dedupes on the unique property: a repeat is an update.
            self.native_idempotency = True  # type: ignore[misc]
        self.field_cache = FieldCache(
            self.field_specs(), self.read_properties, what="HubSpot calls"
        )

    def field_specs(self) -> list[FieldSpec]:
        """The call properties written; optional ones are left out where a portal lacks them."""
        statuses = tuple(dict.fromkeys(o.hubspot_status for o in OUTCOMES.values()))
        specs = [
            FieldSpec("hs_timestamp", ("hs_timestamp",)),
            FieldSpec("hs_call_title", ("hs_call_title",)),
            FieldSpec("hs_call_body", ("hs_call_body",)),
            FieldSpec("hs_call_direction", ("hs_call_direction",), values=("INBOUND", "OUTBOUND")),
            FieldSpec("hs_call_status", ("hs_call_status",), values=statuses),
            FieldSpec("hs_call_duration", ("hs_call_duration",)),
        ]
        specs += [
            FieldSpec(name, (name,), required=False)
            for name in (
                "hs_call_disposition",
                "hs_call_from_number",
                "hs_call_to_number",
                "hs_call_recording_url",
                "hubspot_owner_id",
            )
        ]
        if self.id_property:
            specs.append(
                FieldSpec(
                    "id_property",
                    (self.id_property,),
                    fix="in HubSpot Settings > Properties > Call properties, create it as a "
                    "single-line text property that requires unique values (hasUniqueValue), "
                    "or drop ?id_property= from the hubspot:// URL",
                )
            )
        return specs

    def read_properties(self) -> dict[str, FieldInfo]:
        """The portal's call properties, from the properties API."""
        found = self._call("GET", "/crm/v3/properties/calls", what="calls properties read")
        rows = found.get("results") if isinstance(found, dict) else None
        fields: dict[str, FieldInfo] = {}
        for row in rows if isinstance(rows, list) else []:
            if not isinstance(row, dict) or not row.get("name"):
                continue
            options = row.get("options")
            meta = row.get("modificationMetadata") or {}
            fields[str(row["name"])] = FieldInfo(
                str(row["name"]),
                kind=str(row.get("type") or ""),
                options=tuple(str(o.get("value")) for o in options if isinstance(o, dict))
                if isinstance(options, list) and options and row.get("type") == "enumeration"
                else None,
                writable=not (isinstance(meta, dict) and meta.get("readOnlyValue")),
                unique=bool(row.get("hasUniqueValue")),
            )
        return fields

    # ----------------------------------------------------------------- HTTP
    def _call(self, method: str, path: str, *, what: str, body: Any = None) -> Any:
        response = self.http.request(
            method,
            self.base + path,
            what=what,
            json_body=body,
            headers={"Authorization": f"Bearer {self.token}"},
        )
        if response.status_code < 300:
            return response_json(response)
        raise self._error(response, what)

    def _error(self, response: requests.Response, what: str) -> ExolegsError:
        status = response.status_code
        body = response_json(response)
        data = body if isinstance(body, dict) else {}
        message = self.http.scrub(str(data.get("message") or self.http.hint(response)))
        category = str(data.get("category") or data.get("errorType") or "")
        shown = f"HubSpot {what} answered {status}"
        if status == 429:
            policy = str(data.get("policyName") or "")
            header = parse_retry_after(
                response.headers.get("Retry-After"), server_now(response.headers)
            )
            if policy == "DAILY":
                wait = seconds_until_utc_midnight()
                return RateLimitedError(
                    f"{shown}: the portal's daily API limit is used up ({message}); deliveries "
                    f"wait until it resets (next UTC midnight, in {wait:.0f} s)",
                    retry_after=wait,
                    upstream_status=status,
                    upstream_code=policy,
                )
            default = 1.0 if policy == "SECONDLY" else 10.0
            return RateLimitedError(
                f"{shown} ({policy or 'rate limit'}): {message}; backing off",
                retry_after=header if header is not None else default,
                upstream_status=status,
                upstream_code=policy or None,
            )
        if status == 401:
            return ConfigFaultError(
                f"HubSpot rejected the private-app token: {message} ({what}). Create a "
                f"private-app token with the scopes {' and '.join(SCOPES)} and update the "
                "hubspot:// URL in SINKS",
                upstream_status=status,
                upstream_code=category or None,
            )
        if status == 403:
            missing = _required_scopes(data)
            needed = f"the scope {' or '.join(missing)}" if missing else "a scope it needs"
            return ConfigFaultError(
                f"{shown} {category or ''}".rstrip()
                + f": the private app lacks {needed} for the {what}; in {_APP_SETTINGS}, "
                f"tick {' and '.join(SCOPES)}",
                upstream_status=status,
                upstream_code=category or None,
            )
        if status == 408 or status >= 500:
            return TransientError(
                f"{shown}: {message}; retrying with backoff", upstream_status=status
            )
        return PermanentError(
            f"{shown}: {message}", upstream_status=status, upstream_code=category or None
        )

    # ------------------------------------------------------------- mapping
    def properties(self, record: CallRecord) -> dict[str, str]:
        outcome = call_outcome(record)
        direction = call_direction(record)
        props: dict[str, str] = {
            "hs_timestamp": iso_utc(call_start(record)),
            "hs_call_title": call_title(record),
            "hs_call_body": summary_html(record, recording=self.recording(record)),
            "hs_call_direction": direction.upper(),
            "hs_call_status": outcome.hubspot_status,
            "hs_call_duration": str(duration_ms(talk_seconds(record))),
        }
        if outcome.hubspot_disposition:
            props["hs_call_disposition"] = outcome.hubspot_disposition
        customer = customer_phone(record, self.default_country)
        agent = agent_phone(record, self.default_country)  # never a SIP URI
        caller, callee = (
            (customer.e164 if customer else None, agent)
            if direction == "inbound"
            else (agent, customer.e164 if customer else None)
        )
        if caller:
            props["hs_call_from_number"] = caller
        if callee:
            props["hs_call_to_number"] = callee
        recording = self.recording(record)
        if recording and _hubspot_playable(recording):
            props["hs_call_recording_url"] = recording
        owner = self.owner_id(record)
        if owner:
            props["hubspot_owner_id"] = owner
        names = self.field_cache.get()
        return {name: value for name, value in props.items() if names.name(name)}

    # ------------------------------------------------------------- lookups
    def find_contact(self, record: CallRecord) -> str | None:
        """The id of the oldest contact whose phone or mobile is the customer's number."""
        formats = customer_phone(record, self.default_country)
        if formats is None:
            return None
        values = formats.variants()
        body = {
            "filterGroups": [
                {"filters": [{"propertyName": prop, "operator": "IN", "values": values}]}
                for prop in ("phone", "mobilephone")
            ],
            "properties": ["phone", "mobilephone"],
            "sorts": [{"propertyName": "createdate", "direction": "ASCENDING"}],
            "limit": 1,
        }
        found = self._call(
            "POST", "/crm/v3/objects/contacts/search", what="contact search", body=body
        )
        results = found.get("results") if isinstance(found, dict) else None
        if results and isinstance(results[0], dict) and results[0].get("id"):
            return str(results[0]["id"])
        return None

    def lookup(self, call_sid: str) -> bool | None:
        """Is there already a call whose title holds this sid? None in upsert mode."""
        if self.id_property:
            return None
        body = {
            "filterGroups": [
                {
                    "filters": [
                        {
                            "propertyName": "hs_call_title",
                            "operator": "CONTAINS_TOKEN",
                            "value": call_sid,
                        }
                    ]
                }
            ],
            "properties": ["hs_call_title"],
            "limit": 1,
        }
        found = self._call("POST", "/crm/v3/objects/calls/search", what="call search", body=body)
        return bool(isinstance(found, dict) and found.get("total"))

    # ------------------------------------------------------------- deliver
    def deliver(self, record: CallRecord) -> None:
        call_sid = str(record["call_sid"])
        contact_id = self.find_contact(record)
        props = self.properties(record)
        if self.id_property:
            call_id = self._upsert(call_sid, props)
            if contact_id:
                self._call(
                    "PUT",
                    f"/crm/v3/objects/calls/{quote(call_id, safe='')}/associations/contact/"
                    f"{quote(contact_id, safe='')}/{CALL_TO_CONTACT}",
                    what=f"association of call {call_sid} with contact {contact_id}",
                )
            return
        body: dict[str, Any] = {"properties": props}
        if contact_id:
            body["associations"] = [
                {
                    "to": {"id": contact_id},
                    "types": [
                        {
                            "associationCategory": "HUBSPOT_DEFINED",
                            "associationTypeId": CALL_TO_CONTACT,
                        }
                    ],
                }
            ]
        try:
            self._call("POST", "/crm/v3/objects/calls", what=f"call {call_sid} create", body=body)
        except PermanentError:
            self.field_cache.forget()  # a property may have gone: read them again next time
            raise

    def _upsert(self, call_sid: str, props: dict[str, str]) -> str:
        what = f"call {call_sid} upsert on {self.id_property}"
        body = {
            "inputs": [
                {
                    "idProperty": self.id_property,
                    "id": call_sid,
                    "properties": props,
                    "objectWriteTraceId": call_sid,  # per-input results: 207 on a failure
                }
            ]
        }
        try:
            answer = self._call("POST", "/crm/v3/objects/calls/batch/upsert", what=what, body=body)
        except PermanentError as err:
            if err.upstream_status == 400 and str(self.id_property) in err.message:
                raise ConfigFaultError(
                    f"{err.message}. Create the calls property {self.id_property!r} with "
                    "'hasUniqueValue': true, or drop ?id_property= from the hubspot:// URL",
                    upstream_status=400,
                ) from err
            raise
        errors = answer.get("errors") if isinstance(answer, dict) else None
        if errors:  # 207 Multi-Status: this input failed
            first = errors[0] if isinstance(errors[0], dict) else {}
            self.field_cache.forget()  # a property may have gone: read them again next time
            raise PermanentError(
                f"HubSpot {what} failed: {self.http.scrub(str(first.get('message')))}",
                upstream_code=str(first.get("category") or "") or None,
            )
        results = answer.get("results") if isinstance(answer, dict) else None
        if not results or not isinstance(results[0], dict) or not results[0].get("id"):
            raise TransientError(f"HubSpot {what} answered without a call id; retrying")
        return str(results[0]["id"])

    def check(self) -> str:
        """The token's scopes, one harmless read per endpoint family, and the call properties.

        A private-app token's scopes come from HubSpot's token-info endpoint;
        then a one-call read, a one-contact search and the calls properties
        prove each family answers. Each problem is one line saying what to
        change in HubSpot.
        """
        problems: list[str] = []
        granted = self.token_scopes()
        if granted is not None:
            for scope in SCOPES:
                if scope not in granted:
                    problems.append(
                        f"the HubSpot private app lacks the scope {scope} (HubSpot's calls guide "
                        f"lists {' and '.join(SCOPES)}): in {_APP_SETTINGS}, tick it"
                    )
        search = {"filterGroups": [], "properties": ["phone"], "limit": 1}
        probes: list[tuple[str, str, Any]] = [
            ("GET", "/crm/v3/objects/calls?limit=1", None),
            ("POST", "/crm/v3/objects/contacts/search", search),
        ]
        for method, path, body in probes:
            try:
                self._call(method, path, what=f"{path.split('?')[0]} (check)", body=body)
            except ConfigFaultError as err:
                problems.append(err.message)
        try:
            properties = self.read_properties()
        except ConfigFaultError as err:
            problems.append(err.message)
        else:
            _, found = resolve(self.field_specs(), properties, what="HubSpot calls")
            problems += found
            info = properties.get(self.id_property or "")
            if info is not None and not info.unique:
                problems.append(
                    f"HubSpot calls property {self.id_property} does not require unique "
                    "values: create a property with hasUniqueValue (unique values can only be "
                    "set when a property is created), or drop ?id_property= from the URL"
                )
        if problems:
            raise CheckFailed(list(dict.fromkeys(problems)))
        return (
            f"HubSpot token at {self.base} has {' and '.join(SCOPES)}; calls and contacts "
            "answer and every call property written exists"
        )

    def token_scopes(self) -> set[str] | None:
        """The private-app token's scopes, or None when HubSpot will not say."""
        try:
            answer = self._call(
                "POST", APP_INFO_PATH, what="token info (check)", body={"tokenKey": self.token}
            )
        except ConfigFaultError:
            raise
        except PermanentError:
            return None  # not a private-app token (e.g. OAuth): the probes still run
        scopes = answer.get("scopes") if isinstance(answer, dict) else None
        return {str(x) for x in scopes} if isinstance(scopes, list) else None


def _required_scopes(body: dict[str, Any]) -> list[str]:
    """The scopes a 403 MISSING_SCOPES answer names (``errors[].context``)."""
    found: list[str] = []
    for error in body.get("errors") or []:
        context = error.get("context") if isinstance(error, dict) else None
        if isinstance(context, dict):
            for key in ("requiredGranularScopes", "requiredScopes"):
                values = context.get(key)
                if isinstance(values, list):
                    found += [str(v) for v in values if str(v) not in found]
    return found


def _hubspot_playable(url: str) -> bool:
    """HubSpot plays only HTTPS links to .mp3 or .wav files."""
    parts = urlsplit(url)
    return parts.scheme == "https" and parts.path.lower().endswith(_RECORDING_SUFFIXES)
