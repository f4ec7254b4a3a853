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
  drops the cached token and mints one more, once. Scopes:
  ``ZohoCRM.modules.calls.CREATE,ZohoCRM.modules.calls.READ,
  ZohoCRM.modules.contacts.READ,ZohoCRM.modules.leads.READ``.
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

import re
from typing import Any, ClassVar
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
from worker.settings import Rate
from worker.sinks.base import CallRecord, SinkContext
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
        params: dict[str, str] | None = None,
        body: Any = None,
    ) -> requests.Response:
        """Call the API with the shared token; re-mint once on INVALID_TOKEN.

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
            raise self._error(response, what, data)
        raise AssertionError("unreachable")  # pragma: no cover

    def _error(self, response: requests.Response, what: str, data: Any) -> ExolegsError:
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
        if status == 401:
            return ConfigFaultError(
                f"{shown}: {message}. The access token was refused after a fresh mint: give the "
                "Self Client the scopes ZohoCRM.modules.calls.CREATE, calls.READ, contacts.READ "
                "and leads.READ and mint a new refresh token",
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
            params={"criteria": f"({self.call_sid_field}:equals:{_criteria_value(call_sid)})"},
        )
        if response.status_code >= 300:
            raise self._error(response, "Calls search", response_json(response))
        return _first_id(response) is not None

    # ---------------------------------------------------------------- deliver
    def call_fields(self, record: CallRecord, party: tuple[str, str] | None) -> dict[str, Any]:
        outcome = call_outcome(record)
        direction = call_direction(record)
        if direction == "outbound":
            call_type = "Outbound"
        else:
            call_type = "Inbound" if outcome.answered else "Missed"
        fields: dict[str, Any] = {
            "Subject": call_title(record)[:255],
            "Call_Type": call_type,
            "Call_Start_Time": iso_with_offset(call_start(record)),
            "Call_Duration": duration_mmss(talk_seconds(record)),
            "Description": summary_text(record, recording=self.recording(record))[:32000],
            self.call_sid_field: str(record["call_sid"]),
        }
        if call_type == "Outbound":
            fields["Outgoing_Call_Status"] = "Completed"
        owner = self.owner_id(record)
        if owner:
            fields["Owner"] = {"id": owner}
        if party is not None:
            module, record_id = party
            if module == "Contacts":
                fields["Who_Id"] = {"id": record_id}
            else:
                fields["What_Id"] = {"id": record_id}
                fields["$se_module"] = module
        return fields

    def deliver(self, record: CallRecord) -> None:
        call_sid = str(record["call_sid"])
        fields = self.call_fields(record, self.find_party(record))
        what = f"call {call_sid} create"
        response = self._api("POST", "/Calls", what=what, body={"data": [fields]})
        data = response_json(response)
        results = data.get("data") if isinstance(data, dict) else None
        first = results[0] if isinstance(results, list) and results else None
        if not isinstance(first, dict):
            if response.status_code < 300:
                raise TransientError(f"Zoho CRM {what} answered without a result; retrying")
            raise self._error(response, what, data)
        code = str(first.get("code") or "")
        if code == "SUCCESS" or code == "DUPLICATE_DATA":
            return  # DUPLICATE_DATA: the call sid field is unique and already holds this call
        message = self.http.scrub(str(first.get("message") or code))
        details = _details(first)
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
        self.lookup("exolegs-check")
        return f"Zoho CRM token minted at {self.accounts_base} and Calls are searchable"


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
