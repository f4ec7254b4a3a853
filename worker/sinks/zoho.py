"""Zoho CRM: one Calls record per Exotel call, on the caller's contact or lead.

URL: ``zoho://accounts.zoho.in?client_id=…&client_secret=…&refresh_token=…
[&call_sid_field=Exotel_Call_SID][&agents=/path/agents.json][&recordings=false]
[&api_version=v8][&accounts_base=…&api_base=…]``. The host is the account's
Zoho Accounts server, which names its data centre: accounts.zoho.com, .in,
.eu, .com.au, .jp, .com.cn, accounts.zohocloud.ca or accounts.zoho.sa.
``accounts_base``/``api_base`` override the servers (tests, proxies).

- Auth: a Self Client refresh token. ``POST {accounts}/oauth/v2/token``
  (grant_type=refresh_token) mints a one-hour access token; it is cached in
  Redis for every worker (a refresh token may mint only ~10 access tokens per
  10 minutes) and the ``api_domain`` that comes with it is where the API is
  called, as ``Authorization: Zoho-oauthtoken <token>``. A 401 INVALID_TOKEN
  drops the cached token and mints one more, once. Scopes (:data:`SCOPES`):
  the module scopes of each call, ``ZohoSearch.securesearch.READ`` for every
  search (Zoho's search API requires it, v2 through v8) and
  ``ZohoCRM.settings.fields.READ`` for the Calls field metadata.
- Fields: ``GET /crm/v8/settings/fields?module=Calls`` says which fields the
  org has; the sink writes the names it finds (``Outgoing_Call_Status`` or
  ``Outbound_Call_Status``), cached for an hour per process, and the
  documented names when the metadata cannot be read.
- Who: ``GET /crm/v8/Contacts/search?phone=…`` (E.164, then the national
  number), then the same on Leads; 204 means no match. A contact is
  ``Who_Id``; a lead is ``What_Id`` with ``$se_module: Leads``.
- Idempotency: Calls are not in Zoho's Upsert API. The call sid is written to
  a custom single-line field (``Exotel_Call_SID`` unless ``call_sid_field``
  says otherwise); :meth:`ZohoSink.lookup` searches it when an earlier
  attempt's outcome is unknown. Marking that field "do not allow duplicates"
  makes Zoho answer DUPLICATE_DATA to a repeat, which counts as delivered.
- Limits: API credits per rolling 24 h and per-edition concurrency (429
  TOO_MANY_REQUESTS); a delivery costs 2 to 5 calls, so the default is 2
  deliveries per second.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from typing import Any, ClassVar, TypeVar
from urllib.parse import urlsplit

import requests

from worker.errors import (
    ConfigFaultError,
    ExolegsError,
    PermanentError,
    RateLimitedError,
    SettingsError,
    TransientError,
)
from worker.redact import remember_secret
from worker.settings import Rate
from worker.sinks.base import CallRecord, CheckFailed, SinkContext
from worker.sinks.crm import (
    CrmSink,
    call_direction,
    call_outcome,
    call_start,
    call_title,
    customer_phone,
    drop_token,
    duration_mmss,
    get_token,
    iso_with_offset,
    parse_retry_after,
    response_json,
    summary_text,
    talk_seconds,
    token_key,
)
from worker.sinks.crm.fields import FieldCache, FieldInfo, FieldMap, FieldSpec, resolve

T = TypeVar("T")

#: Zoho Accounts server -> the API domain of the same data centre.
DATA_CENTRES = {
    "accounts.zoho.com": "https://www.zohoapis.com",
    "accounts.zoho.in": "https://www.zohoapis.in",
    "accounts.zoho.eu": "https://www.zohoapis.eu",
    "accounts.zoho.com.au": "https://www.zohoapis.com.au",
    "accounts.zoho.jp": "https://www.zohoapis.jp",
    "accounts.zoho.com.cn": "https://www.zohoapis.com.cn",
    "accounts.zohocloud.ca": "https://www.zohoapis.ca",
    "accounts.zoho.sa": "https://www.zohoapis.sa",
}
TOKEN_BLOCK_SECONDS = 600.0  # "blocked for the rest of the ten minutes"
CREDITS_EXHAUSTED_WAIT = 3600.0
#: Every scope the sink needs, for the Self Client's grant token.
SCOPES = (
    "ZohoCRM.modules.calls.CREATE",
    "ZohoCRM.modules.calls.READ",
    "ZohoCRM.modules.contacts.READ",
    "ZohoCRM.modules.leads.READ",
    "ZohoSearch.securesearch.READ",
    "ZohoCRM.settings.fields.READ",
)
#: What each endpoint family needs (Zoho's API reference, per endpoint).
ENDPOINT_SCOPES = {
    "Contacts search": ("ZohoCRM.modules.contacts.READ", "ZohoSearch.securesearch.READ"),
    "Leads search": ("ZohoCRM.modules.leads.READ", "ZohoSearch.securesearch.READ"),
    "Calls search": ("ZohoCRM.modules.calls.READ", "ZohoSearch.securesearch.READ"),
    "Calls create": ("ZohoCRM.modules.calls.CREATE",),
    "Calls field metadata": ("ZohoCRM.settings.fields.READ",),
}
_FIELDS_FIX = "in Zoho CRM Setup > Customization > Modules and Fields > Calls, "
_API_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,99}")
_TOKEN_CONFIG_ERRORS = {
    "invalid_code": "the refresh token is invalid, expired or revoked, or belongs to another "
    "data centre: generate a new grant code in the Zoho API console (Self Client) and a new "
    "refresh token",
    "invalid_client": "the client_id is not known in this data centre: check client_id and the "
    "accounts host of the zoho:// URL",
    "invalid_client_secret": "the client_secret does not match the client_id",
    "unauthorized_client": "this client may not use the refresh-token grant",
    "invalid_grant": "the refresh token was not accepted: generate a new one",
}


class ZohoSink(CrmSink):
    scheme = "zoho"
    crm = "Zoho CRM"
    url_help = (
        "zoho://accounts.zoho.in?client_id=…&client_secret=…&refresh_token=…"
        "[&call_sid_field=Exotel_Call_SID][&agents=/path/agents.json] - one Calls record per call"
    )
    default_rate_limit: ClassVar[Rate | None] = Rate(2, 1)

    def __init__(self, url: str, context: SinkContext) -> None:
        super().__init__(url, context)
        self.client_id = self.require("client_id")
        self.client_secret = self.require("client_secret")
        self.refresh_token = self.require("refresh_token")
        host = (urlsplit(url).hostname or "").lower()
        accounts_base = self.query.get("accounts_base")
        if not accounts_base and host not in DATA_CENTRES:
            known = ", ".join(DATA_CENTRES)
            raise SettingsError(
                "SINKS", f"zoho:// needs the Zoho Accounts host of your data centre ({known})"
            )
        self.accounts_base = (accounts_base or f"https://{host}").rstrip("/")
        self.default_api = DATA_CENTRES.get(host)
        self.api_base = (self.query.get("api_base") or "").rstrip("/") or None
        self.api_version = self.query.get("api_version") or "v8"
        if not re.fullmatch(r"v\d+(\.\d+)?", self.api_version):
            raise SettingsError(
                "SINKS", f"zoho:// api_version must look like v8, not {self.api_version!r}"
            )
        self.call_sid_field = self.query.get("call_sid_field") or "Exotel_Call_SID"
        if not _API_NAME.fullmatch(self.call_sid_field):
            raise SettingsError(
                "SINKS",
                f"zoho:// call_sid_field must be a field API name, not {self.call_sid_field!r}",
            )
        self.cache_key = token_key("zoho", self.accounts_base, self.client_id, self.refresh_token)
        self.field_cache = FieldCache(self.field_specs(), self.read_fields, what="Zoho CRM Calls")

    def field_specs(self) -> list[FieldSpec]:
        """What the sink writes in Calls; the first name is the documented one."""
        return [
            FieldSpec("subject", ("Subject",)),
            FieldSpec("call_type", ("Call_Type",), values=("Inbound", "Outbound", "Missed")),
            FieldSpec("start", ("Call_Start_Time",)),
            FieldSpec("duration", ("Call_Duration",)),
            FieldSpec("description", ("Description",), required=False),
            FieldSpec(
                "outbound_status",
                ("Outgoing_Call_Status", "Outbound_Call_Status"),
                values=("Completed",),
                fix=_FIELDS_FIX + "restore the standard outgoing call status field",
            ),
            FieldSpec("owner", ("Owner",), required=False),
            FieldSpec("who", ("Who_Id",), required=False),
            FieldSpec("what", ("What_Id",), required=False),
            FieldSpec(
                "call_sid",
                (self.call_sid_field,),
                fix=_FIELDS_FIX + f"add a single-line field with the API name "
                f"{self.call_sid_field} (tick 'Do not allow duplicate values'), or name an "
                "existing one with call_sid_field= in the zoho:// URL",
            ),
        ]

    def read_fields(self) -> dict[str, FieldInfo]:
        """The Calls fields this org has, from ``settings/fields?module=Calls``."""
        response = self._api(
            "GET",
            "/settings/fields",
            what="Calls field metadata",
            family="Calls field metadata",
            params={"module": "Calls"},
        )
        data = response_json(response)
        rows = data.get("fields") if isinstance(data, dict) else None
        fields: dict[str, FieldInfo] = {}
        for row in rows if isinstance(rows, list) else []:
            if not isinstance(row, dict) or not row.get("api_name"):
                continue
            picks = row.get("pick_list_values")
            options = (
                tuple(
                    str(p.get("actual_value") or p.get("display_value"))
                    for p in picks
                    if isinstance(p, dict)
                )
                if isinstance(picks, list) and picks
                else None
            )
            name = str(row["api_name"])
            fields[name] = FieldInfo(
                name,
                kind=str(row.get("data_type") or ""),
                options=options,
                writable=not (row.get("read_only") or row.get("field_read_only")),
            )
        return fields

    def fields(self) -> FieldMap:
        return self.field_cache.get()

    # ---------------------------------------------------------------- tokens
    def mint(self) -> tuple[str, float, dict[str, Any]]:
        """Exchange the refresh token for an access token (one HTTP call)."""
        response = self.http.request(
            "POST",
            f"{self.accounts_base}/oauth/v2/token",
            what="access token refresh",
            form={
                "grant_type": "refresh_token",
                "client_id": self.client_id,
                "client_secret": self.client_secret,
                "refresh_token": self.refresh_token,
            },
        )
        data = response_json(response)
        body = data if isinstance(data, dict) else {}
        remember_secret(body.get("access_token"))  # scrubbed from the moment it exists
        if response.status_code < 300 and isinstance(body.get("access_token"), str):
            lifetime = float(body.get("expires_in") or 3600)
            api_domain = body.get("api_domain") or self.default_api
            return str(body["access_token"]), lifetime, {"api_domain": api_domain}
        error = str(body.get("error") or "")
        description = str(body.get("error_description") or "")
        said = self.http.scrub(f"{error}: {description}" if description else error)
        if error == "Access Denied" or "too many requests" in description.lower():
            raise RateLimitedError(
                f"Zoho Accounts refused to mint another access token ({said}); a refresh "
                f"token mints at most ~10 per 10 minutes. Waiting {TOKEN_BLOCK_SECONDS:.0f} s",
                retry_after=TOKEN_BLOCK_SECONDS,
                upstream_status=response.status_code,
                upstream_code=error or None,
            )
        if response.status_code >= 500:
            raise TransientError(
                f"Zoho Accounts token endpoint answered {response.status_code}; retrying",
                upstream_status=response.status_code,
            )
        hint = _TOKEN_CONFIG_ERRORS.get(error, "check client_id, client_secret and refresh_token")
        raise ConfigFaultError(
            f"Zoho Accounts ({self.accounts_base}) refused the refresh token "
            f"({said or self.http.hint(response)}): {hint}; update the zoho:// URL in SINKS",
            upstream_status=response.status_code,
            upstream_code=error or None,
        )

    # ---------------------------------------------------------------- HTTP
    def _api(
        self,
        method: str,
        path: str,
        *,
        what: str,
        family: str,
        params: dict[str, str] | None = None,
        body: Any = None,
    ) -> requests.Response:
        """Call the API with the shared token; re-mint once on INVALID_TOKEN.

        ``family`` names the endpoint family (a key of :data:`ENDPOINT_SCOPES`)
        so that a scope error says which scope that call needs.

        Returns 2xx answers and 4xx answers that carry per-record results
        (``{"data": [...]}``); raises for everything else.
        """
        for attempt in (1, 2):
            token = get_token(self.context.redis, self.cache_key, self.mint)
            base = self.api_base or str(token.extra.get("api_domain") or self.default_api or "")
            if not base:
                raise ConfigFaultError(
                    "Zoho CRM: the token answer named no api_domain; set api_base= in the URL"
                )
            response = self.http.request(
                method,
                f"{base.rstrip('/')}/crm/{self.api_version}{path}",
                what=what,
                params=params,
                json_body=body,
                headers={"Authorization": f"Zoho-oauthtoken {token.value}"},
            )
            data = response_json(response)
            code = str(data.get("code") or "") if isinstance(data, dict) else ""
            if response.status_code == 401 and code == "INVALID_TOKEN" and attempt == 1:
                drop_token(self.context.redis, self.cache_key, token.value)
                continue
            if response.status_code < 300:
                return response
            has_records = isinstance(data, dict) and isinstance(data.get("data"), list)
            if (
                response.status_code < 500
                and response.status_code not in (401, 403, 429)
                and has_records
            ):
                return response
            raise self._error(response, what, data, family)
        raise AssertionError("unreachable")  # pragma: no cover

    def _error(
        self, response: requests.Response, what: str, data: Any, family: str = ""
    ) -> ExolegsError:
        status = response.status_code
        body = data if isinstance(data, dict) else {}
        code = str(body.get("code") or "")
        message = self.http.scrub(str(body.get("message") or self.http.hint(response)))
        shown = f"Zoho CRM {what} answered {status}" + (f" {code}" if code else "")
        if code in ("LIMIT_EXCEEDED", "API_LIMIT_EXCEEDED"):
            return RateLimitedError(
                f"{shown}: {message}; the org's API credits are used up, waiting an hour",
                retry_after=CREDITS_EXHAUSTED_WAIT,
                upstream_status=status,
                upstream_code=code,
            )
        if status == 429 or code == "TOO_MANY_REQUESTS":
            wait = parse_retry_after(response.headers.get("Retry-After"))
            return RateLimitedError(
                f"{shown}: {message}; backing off",
                retry_after=wait if wait is not None else 30.0,
                upstream_status=status,
                upstream_code=code or None,
            )
        if status == 401 and code == "OAUTH_SCOPE_MISMATCH":
            needed = " and ".join(ENDPOINT_SCOPES.get(family, ()))
            return ConfigFaultError(
                f"{shown}: the refresh token lacks a scope this call needs"
                + (f" ({needed})" if needed else "")
                + f". {scope_fix()}",
                upstream_status=status,
                upstream_code=code,
            )
        if status == 401:
            return ConfigFaultError(
                f"{shown}: {message}. The access token was refused after a fresh mint. "
                + scope_fix(),
                upstream_status=status,
                upstream_code=code or None,
            )
        if status == 403:
            return ConfigFaultError(
                f"{shown}: {message}; the Zoho user behind the refresh token lacks permission",
                upstream_status=status,
                upstream_code=code or None,
            )
        if status >= 500 or status == 408:
            return TransientError(f"{shown}: {message}; retrying", upstream_status=status)
        return PermanentError(
            f"{shown}: {message} {_details(body)}".strip(),
            upstream_status=status,
            upstream_code=code or None,
        )

    # ---------------------------------------------------------------- lookups
    def find_party(self, record: CallRecord) -> tuple[str, str] | None:
        """(module, id) of the contact, else the lead, whose phone is the caller's."""
        formats = customer_phone(record, self.default_country)
        if formats is None:
            return None
        variants = list(dict.fromkeys([formats.e164, formats.national]))
        for module in ("Contacts", "Leads"):
            for value in variants:
                response = self._api(
                    "GET",
                    f"/{module}/search",
                    what=f"{module} search by phone",
                    family=f"{module} search",
                    params={"phone": value},
                )
                found = _first_id(response)
                if found:
                    return module, found
        return None

    def lookup(self, call_sid: str) -> bool | None:
        """Does a Calls record already carry this sid in the call-sid field?"""
        response = self._api(
            "GET",
            "/Calls/search",
            what=f"Calls search by {self.call_sid_field}",
            family="Calls search",
            params={"criteria": f"({self.call_sid_field}:equals:{_criteria_value(call_sid)})"},
        )
        if response.status_code >= 300:
            raise self._error(response, "Calls search", response_json(response), "Calls search")
        return _first_id(response) is not None

    # ---------------------------------------------------------------- deliver
    def call_fields(self, record: CallRecord, party: tuple[str, str] | None) -> dict[str, Any]:
        """The Calls record, under the field names this org has."""
        names = self.fields()
        outcome = call_outcome(record)
        direction = call_direction(record)
        if direction == "outbound":
            call_type = "Outbound"
        else:
            call_type = "Inbound" if outcome.answered else "Missed"
        values: dict[str, Any] = {
            "subject": call_title(record)[:255],
            "call_type": call_type,
            "start": iso_with_offset(call_start(record)),
            "duration": duration_mmss(talk_seconds(record)),
            "description": summary_text(record, recording=self.recording(record))[:32000],
            "call_sid": str(record["call_sid"]),
        }
        if call_type == "Outbound":
            values["outbound_status"] = "Completed"
        owner = self.owner_id(record)
        if owner:
            values["owner"] = {"id": owner}
        fields: dict[str, Any] = {}
        if party is not None:
            module, record_id = party
            if module == "Contacts":
                values["who"] = {"id": record_id}
            elif names.name("what"):
                values["what"] = {"id": record_id}
                fields["$se_module"] = module
        for role, value in values.items():
            name = names.name(role)
            if name:
                fields[name] = value
        return fields

    def deliver(self, record: CallRecord) -> None:
        call_sid = str(record["call_sid"])
        fields = self.call_fields(record, self.find_party(record))
        what = f"call {call_sid} create"
        response = self._api(
            "POST", "/Calls", what=what, family="Calls create", body={"data": [fields]}
        )
        data = response_json(response)
        results = data.get("data") if isinstance(data, dict) else None
        first = results[0] if isinstance(results, list) and results else None
        if not isinstance(first, dict):
            if response.status_code < 300:
                raise TransientError(f"Zoho CRM {what} answered without a result; retrying")
            raise self._error(response, what, data, "Calls create")
        code = str(first.get("code") or "")
        if code == "SUCCESS" or code == "DUPLICATE_DATA":
            return  # DUPLICATE_DATA: the call sid field is unique and already holds this call
        message = self.http.scrub(str(first.get("message") or code))
        details = _details(first)
        if code == "INVALID_DATA":
            self.field_cache.forget()  # a field may have been renamed or deleted: read again
        if code == "INVALID_DATA" and self.call_sid_field in details:
            raise ConfigFaultError(
                f"Zoho CRM {what}: {message} {details}; create the single-line field "
                f"{self.call_sid_field} in the Calls module or set call_sid_field= in the URL",
                upstream_status=response.status_code,
                upstream_code=code,
            )
        raise PermanentError(
            f"Zoho CRM {what} rejected the record: {code} {message} {details}".strip(),
            upstream_status=response.status_code,
            upstream_code=code or None,
        )

    def check(self) -> str:
        """One harmless read per endpoint family (searches included) and the Calls fields.

        Each problem found (a missing scope, a missing field, a picklist
        without our value) is one line saying what to change in Zoho.
        Creating Calls cannot be tried without writing one, so
        ``ZohoCRM.modules.calls.CREATE`` is confirmed by the first delivery.
        """
        problems: list[str] = []
        probe = "+10000000000"  # a number no contact has: the search answers 204
        for module in ("Contacts", "Leads"):
            search = functools.partial(
                self._api,
                "GET",
                f"/{module}/search",
                what=f"{module} search (check)",
                family=f"{module} search",
                params={"phone": probe},
            )
            self._probe(problems, search)
        fields = self._probe(problems, self.read_fields)
        if fields is not None:
            names, found = resolve(self.field_specs(), fields, what="Zoho CRM Calls")
            problems.extend(found)
            if names.name("call_sid") in fields:
                self._probe(problems, lambda: self.lookup("exolegs-check"))
        if problems:
            raise CheckFailed(problems)
        return (
            f"Zoho CRM token minted at {self.accounts_base}; Contacts, Leads and Calls are "
            "searchable and Calls has every field written (calls.CREATE is confirmed by the "
            "first delivery)"
        )

    @staticmethod
    def _probe(problems: list[str], call: Callable[[], T]) -> T | None:
        """Run one check call; a configuration fault becomes a problem line."""
        try:
            return call()
        except ConfigFaultError as err:
            if err.message not in problems:
                problems.append(err.message)
            return None


def scope_fix() -> str:
    """What to do about a scope: one grant with every scope the sink needs."""
    return (
        "In the Zoho API console (Self Client), generate a grant token with the scopes "
        f"{','.join(SCOPES)}, then a new refresh token, and update the zoho:// URL in SINKS"
    )


def _first_id(response: requests.Response) -> str | None:
    if response.status_code == 204:
        return None
    data = response_json(response)
    rows = data.get("data") if isinstance(data, dict) else None
    if isinstance(rows, list) and rows and isinstance(rows[0], dict) and rows[0].get("id"):
        return str(rows[0]["id"])
    return None


def _details(body: dict[str, Any]) -> str:
    details = body.get("details")
    if not details:
        return ""
    return f"(details: {details})"


def _criteria_value(value: str) -> str:
    """Escape the characters Zoho's search criteria treat as syntax."""
    return re.sub(r"([(),\\])", r"\\\1", value)
