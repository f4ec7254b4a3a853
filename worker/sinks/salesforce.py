"""Salesforce: one completed call Task per Exotel call, on the caller's contact or lead.

URL: ``salesforce://acme.my.salesforce.com?client_id=…`` and one way to sign in:

- ``&client_secret=…`` - OAuth client credentials (a connected app with a
  Run As user);
- ``&refresh_token=…[&client_secret=…]`` - a refresh token;
- ``&username=…&private_key_file=/path/key.pem[&audience=https://login.salesforce.com]``
  - the JWT bearer flow (connected app with a certificate; recommended for
  servers). ``audience`` defaults to https://test.salesforce.com for hosts
  with "sandbox" in them.

plus ``[&external_id=Exotel_Call_Sid__c][&api_version=v61.0][&agents=/path/agents.json]
[&recordings=false][&scheme=http]`` (``scheme=http`` is for tests only).

- Tokens come from ``POST https://<host>/services/oauth2/token`` and are
  cached in Redis for every worker (Salesforce does not say how long a
  session lives; it is kept an hour and a 401 INVALID_SESSION_ID signs in
  again once). API calls go to the ``instance_url`` of the token answer.
- Task: ``TaskSubtype=Call``, ``Status=Completed``, ``Subject``,
  ``ActivityDate`` (the call's local date), ``CallType`` Inbound/Outbound,
  ``CallDurationInSeconds``, ``CallObject`` = call sid, ``CallDisposition``,
  ``Description`` (the legs), ``WhoId`` (SOSL ``FIND {…} IN PHONE FIELDS
  RETURNING Contact(Id), Lead(Id)``; a contact wins over a lead), ``OwnerId``
  (agents file). The Call fields belong to Salesforce Call Center; the
  integration user must be able to write them.
- Idempotency: with ``external_id`` (a Task custom field marked External ID
  and Unique) the Task is upserted, ``PATCH
  /services/data/vXX.X/sobjects/Task/<field>/<sid>``, and Salesforce keeps
  one. Without it, :meth:`SalesforceSink.lookup` queries Tasks by
  ``CallObject`` when an earlier attempt's outcome is unknown.
- Limits: a rolling 24-hour API allocation per org; running out answers 403
  REQUEST_LIMIT_EXCEEDED (not 429, no Retry-After), which parks deliveries
  for 15 minutes. A delivery costs two calls (search + write), so the default
  is 2 deliveries per second.
- Fields: ``GET /sobjects/Task/describe`` (what this user sees) says which
  Task fields exist and are writable; optional fields the user cannot see
  (``WhoId``, ``OwnerId``, ``Description``) are left out, read once an hour
  per process. Permissions are the connected app's OAuth scope ``api`` and the
  integration user's profile (Task create, Contact/Lead read for the search).
- Errors are ``[{"message", "errorCode", "fields"}]``. ``DUPLICATE_VALUE``
  on the external id field (two upserts of one call racing) means the Task
  is there: delivered.
"""

from __future__ import annotations

import base64
import json
import re
import time
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import quote, urlsplit

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
    get_token,
    read_private_key_file,
    response_json,
    summary_text,
    talk_seconds,
    token_key,
)
from worker.sinks.crm.fields import FieldCache, FieldInfo, FieldSpec, resolve

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

DEFAULT_API_VERSION = "v61.0"
SESSION_SECONDS = 3600.0
LIMIT_EXCEEDED_WAIT = 900.0  # the allocation is a rolling 24 h: not worth polling hot
JWT_LIFETIME = 180  # Salesforce accepts assertions valid for up to 3 minutes
JWT_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
_CONFIG_CODES = {
    "INVALID_FIELD",
    "INVALID_TYPE",
    "INVALID_FIELD_FOR_INSERT_UPDATE",
    "NOT_FOUND",
    "API_DISABLED_FOR_ORG",
    "API_CURRENTLY_DISABLED",
    "INSUFFICIENT_ACCESS",
    "INSUFFICIENT_ACCESS_OR_READONLY",
}


class SalesforceSink(CrmSink):
    scheme = "salesforce"
    crm = "Salesforce"
    url_help = (
        "salesforce://acme.my.salesforce.com?client_id=…&client_secret=… (or &refresh_token=…,"
        " or &username=…&private_key_file=…)[&external_id=Exotel_Call_Sid__c] - call Tasks"
    )
    default_rate_limit: ClassVar[Rate | None] = Rate(2, 1)

    def __init__(self, url: str, context: SinkContext) -> None:
        super().__init__(url, context)
        host = urlsplit(url).netloc
        if not host or not re.fullmatch(r"[A-Za-z0-9.-]+(:\d+)?", host):
            raise SettingsError(
                "SINKS", "salesforce:// needs your My Domain host, e.g. acme.my.salesforce.com"
            )
        scheme = (self.query.get("scheme") or "https").lower()
        if scheme not in ("https", "http"):
            raise SettingsError("SINKS", f"salesforce:// scheme must be https, not {scheme!r}")
        self.login_url = f"{scheme}://{host}"
        self.api_version = self.query.get("api_version") or DEFAULT_API_VERSION
        if not re.fullmatch(r"v\d+\.\d", self.api_version):
            raise SettingsError(
                "SINKS", f"salesforce:// api_version must look like v61.0, not {self.api_version!r}"
            )
        self.external_id = self.query.get("external_id") or None
        if self.external_id and not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]{0,79}", self.external_id):
            raise SettingsError("SINKS", "salesforce:// external_id must be a field API name")
        if self.external_id:
            # Salesforce dedupes on the External ID field: a repeat is an update.
            self.native_idempotency = True  # type: ignore[misc]
        self.client_id = self.require("client_id")
        self.client_secret = self.query.get("client_secret") or None
        self.refresh_token = self.query.get("refresh_token") or None
        self.username = self.query.get("username") or None
        self._key: RSAPrivateKey | None = None
        self._task_createable = True
        if self.query.get("private_key_file"):
            self.mode = "jwt"
            self.username = self.require("username")
            self._key = _load_rsa_key(self.query["private_key_file"])
            default_aud = (
                "https://test.salesforce.com"
                if "sandbox" in host
                else "https://login.salesforce.com"
            )
            self.audience = self.query.get("audience") or default_aud
            credential = self.username
        elif self.refresh_token:
            self.mode, credential = "refresh_token", self.refresh_token
        elif self.client_secret:
            self.mode, credential = "client_credentials", self.client_secret
        else:
            raise SettingsError(
                "SINKS",
                "salesforce:// needs client_secret= (client credentials), refresh_token=, "
                "or username= and private_key_file= (JWT bearer)",
            )
        self.cache_key = token_key("salesforce", self.login_url, self.client_id, credential)
        self.field_cache = FieldCache(
            self.field_specs(), self.describe_task, what="Salesforce Task"
        )

    def field_specs(self) -> list[FieldSpec]:
        """The Task fields written; optional ones are left out where the user cannot see them."""
        call_fields = (
            "in Setup, give the integration user's profile (or a permission set) edit access "
            "to this Task field; the call fields come with Salesforce Call Center"
        )
        specs = [
            FieldSpec("Subject", ("Subject",)),
            FieldSpec("TaskSubtype", ("TaskSubtype",), values=("Call",), fix=call_fields),
            FieldSpec("Status", ("Status",), values=("Completed",)),
            FieldSpec("ActivityDate", ("ActivityDate",)),
            FieldSpec("CallType", ("CallType",), values=("Inbound", "Outbound"), fix=call_fields),
            FieldSpec("CallDurationInSeconds", ("CallDurationInSeconds",), fix=call_fields),
            FieldSpec("CallObject", ("CallObject",), fix=call_fields),
            FieldSpec("CallDisposition", ("CallDisposition",), fix=call_fields),
        ]
        specs += [
            FieldSpec(name, (name,), required=False) for name in ("Description", "WhoId", "OwnerId")
        ]
        if self.external_id:
            specs.append(
                FieldSpec(
                    "external_id",
                    (self.external_id,),
                    fix="in Setup > Object Manager > Task (Activity) > Fields, create a text "
                    "field with this API name marked External ID and Unique, or change "
                    "external_id= in the salesforce:// URL",
                )
            )
        return specs

    def describe_task(self) -> dict[str, FieldInfo]:
        """Task's fields as this user sees them (``sobjects/Task/describe``)."""
        response = self._api("GET", "/sobjects/Task/describe", what="Task describe")
        data = response_json(response)
        self._task_createable = bool(isinstance(data, dict) and data.get("createable", True))
        rows = data.get("fields") if isinstance(data, dict) else None
        fields: dict[str, FieldInfo] = {}
        for row in rows if isinstance(rows, list) else []:
            if not isinstance(row, dict) or not row.get("name"):
                continue
            picks = row.get("picklistValues")
            options = (
                tuple(
                    str(p.get("value"))
                    for p in picks
                    if isinstance(p, dict) and p.get("active", True)
                )
                if isinstance(picks, list) and picks
                else None
            )
            fields[str(row["name"])] = FieldInfo(
                str(row["name"]),
                kind=str(row.get("type") or ""),
                options=options,
                writable=bool(row.get("createable", True) or row.get("updateable", True)),
                unique=row.get("unique") if isinstance(row.get("unique"), bool) else None,
                external_id=bool(row.get("externalId")),
            )
        return fields

    # ------------------------------------------------------------- sign-in
    def _assertion(self) -> str:
        """A JWT signed with the connected app's key (RS256)."""
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding

        assert self._key is not None
        claims = {
            "iss": self.client_id,
            "sub": self.username,
            "aud": self.audience,
            "exp": int(time.time()) + JWT_LIFETIME,
        }
        header = _b64url(json.dumps({"alg": "RS256"}).encode())
        signing_input = f"{header}.{_b64url(json.dumps(claims).encode())}"
        signature = self._key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        assertion = f"{signing_input}.{_b64url(signature)}"
        remember_secret(assertion)  # a credential for 3 minutes: scrubbed everywhere
        return assertion

    def _grant(self) -> dict[str, str]:
        if self.mode == "jwt":
            return {"grant_type": JWT_GRANT, "assertion": self._assertion()}
        if self.mode == "refresh_token":
            form = {
                "grant_type": "refresh_token",
                "client_id": self.client_id,
                "refresh_token": str(self.refresh_token),
            }
            if self.client_secret:
                form["client_secret"] = self.client_secret
            return form
        return {
            "grant_type": "client_credentials",
            "client_id": self.client_id,
            "client_secret": str(self.client_secret),
        }

    def mint(self) -> tuple[str, float, dict[str, Any]]:
        grant = self._grant()
        response = self.http.request(
            "POST",
            f"{self.login_url}/services/oauth2/token",
            what=f"sign-in ({self.mode})",
            form=grant,
        )
        data = response_json(response)
        body = data if isinstance(data, dict) else {}
        remember_secret(body.get("access_token"))  # scrubbed from the moment it exists
        remember_secret(body.get("refresh_token"))
        if response.status_code < 300 and isinstance(body.get("access_token"), str):
            instance = str(body.get("instance_url") or self.login_url)
            extra = {"instance_url": instance, "scope": str(body.get("scope") or "")}
            return str(body["access_token"]), SESSION_SECONDS, extra
        if response.status_code >= 500 or response.status_code == 408:
            raise TransientError(
                f"Salesforce sign-in answered {response.status_code}; retrying",
                upstream_status=response.status_code,
            )
        error = str(body.get("error") or "")
        said = self.http.scrub(
            f"{error}: {body.get('error_description')}" if body else self.http.hint(response)
        )
        hints = {
            "client_credentials": "check client_id/client_secret and that the connected app "
            "enables the client credentials flow with a Run As user",
            "refresh_token": "check client_id and refresh_token (it may have been revoked)",
            "jwt": "check client_id, username, the certificate uploaded to the connected app, "
            "that the user is pre-authorised for it, and audience",
        }
        raise ConfigFaultError(
            f"Salesforce refused to sign in ({said}) at {self.login_url}: {hints[self.mode]}; "
            "update the salesforce:// URL in SINKS",
            upstream_status=response.status_code,
            upstream_code=error or None,
        )

    # ----------------------------------------------------------------- HTTP
    def _api(
        self,
        method: str,
        path: str,
        *,
        what: str,
        params: dict[str, str] | None = None,
        body: Any = None,
    ) -> requests.Response:
        """Call the REST API; sign in again once if the session expired."""
        for attempt in (1, 2):
            token = get_token(self.context.redis, self.cache_key, self.mint)
            instance = str(token.extra.get("instance_url") or self.login_url).rstrip("/")
            response = self.http.request(
                method,
                f"{instance}/services/data/{self.api_version}{path}",
                what=what,
                params=params,
                json_body=body,
                headers={"Authorization": f"Bearer {token.value}"},
            )
            if response.status_code == 401 and attempt == 1:
                drop_token(self.context.redis, self.cache_key, token.value)
                continue
            if response.status_code <= 300:  # 300: an upsert matched several records
                return response
            raise self._error(response, what)
        raise AssertionError("unreachable")  # pragma: no cover

    def _error(self, response: requests.Response, what: str) -> ExolegsError:
        status = response.status_code
        data = response_json(response)
        first = data[0] if isinstance(data, list) and data and isinstance(data[0], dict) else {}
        if not first and isinstance(data, dict):
            first = data
        code = str(first.get("errorCode") or "")
        message = self.http.scrub(str(first.get("message") or self.http.hint(response)))
        fields = first.get("fields") or []
        shown = f"Salesforce {what} answered {status}" + (f" {code}" if code else "")
        detail = f"{message}" + (f" (fields: {', '.join(map(str, fields))})" if fields else "")
        if code == "REQUEST_LIMIT_EXCEEDED":
            usage = response.headers.get("Sforce-Limit-Info")
            return RateLimitedError(
                f"{shown}: {detail}" + (f" ({usage})" if usage else "") + "; the org's API "
                "allocation (rolling 24 h) or concurrency limit is used up, waiting "
                f"{LIMIT_EXCEEDED_WAIT:.0f} s",
                retry_after=LIMIT_EXCEEDED_WAIT,
                upstream_status=status,
                upstream_code=code,
            )
        if status == 401:
            return ConfigFaultError(
                f"{shown}: {detail}; Salesforce refused a freshly minted session, check the "
                "connected app's OAuth scopes (api) and IP relaxation",
                upstream_status=status,
                upstream_code=code or None,
            )
        if code in ("INVALID_FIELD", "INVALID_FIELD_FOR_INSERT_UPDATE"):
            self.field_cache.forget()  # a field was hidden or removed: describe again
        if status == 403 or code in _CONFIG_CODES:
            return ConfigFaultError(
                f"{shown}: {detail}; give the integration user access to Task and its Call "
                "fields (and the external id field), or fix the salesforce:// URL",
                upstream_status=status,
                upstream_code=code or None,
            )
        if status >= 500 or status == 408:
            return TransientError(f"{shown}: {detail}; retrying", upstream_status=status)
        return PermanentError(
            f"{shown}: {detail}", upstream_status=status, upstream_code=code or None
        )

    # ----------------------------------------------------------------- lookups
    def find_who(self, record: CallRecord) -> str | None:
        """The Contact (else Lead) id SOSL finds for the caller's number."""
        formats = customer_phone(record, self.default_country)
        if formats is None:
            return None
        terms = " OR ".join(dict.fromkeys([formats.national, formats.digits]))
        response = self._api(
            "GET",
            "/search",
            what="SOSL phone search",
            params={"q": f"FIND {{{terms}}} IN PHONE FIELDS RETURNING Contact(Id), Lead(Id)"},
        )
        data = response_json(response)
        rows = data.get("searchRecords") if isinstance(data, dict) else data
        if not isinstance(rows, list):
            return None
        found: dict[str, str] = {}
        for row in rows:
            if not isinstance(row, dict) or not row.get("Id"):
                continue
            kind = str((row.get("attributes") or {}).get("type") or "")
            found.setdefault(kind, str(row["Id"]))
        return found.get("Contact") or found.get("Lead")

    def lookup(self, call_sid: str) -> bool | None:
        """Is there a Task with this CallObject already? None with an external id (upsert)."""
        if self.external_id:
            return None
        quoted = _soql_quote(call_sid)
        soql = f"SELECT Id FROM Task WHERE CallObject = '{quoted}' LIMIT 1"  # noqa: S608 - escaped
        response = self._api("GET", "/query", what="Task query by CallObject", params={"q": soql})
        data = response_json(response)
        return bool(isinstance(data, dict) and data.get("totalSize"))

    # ----------------------------------------------------------------- deliver
    def task_fields(self, record: CallRecord, who: str | None) -> dict[str, Any]:
        outcome = call_outcome(record)
        start = call_start(record)
        fields: dict[str, Any] = {
            "Subject": call_title(record)[:255],
            "TaskSubtype": "Call",
            "Status": "Completed",
            "ActivityDate": start.date().isoformat(),
            "CallType": call_direction(record).capitalize(),
            "CallDurationInSeconds": talk_seconds(record),
            "CallObject": str(record["call_sid"])[:255],
            "CallDisposition": outcome.salesforce_disposition,
            "Description": summary_text(record, recording=self.recording(record))[:32000],
        }
        if who:
            fields["WhoId"] = who
        owner = self.owner_id(record)
        if owner:
            fields["OwnerId"] = owner
        names = self.field_cache.get()
        return {name: value for name, value in fields.items() if names.name(name)}

    def deliver(self, record: CallRecord) -> None:
        call_sid = str(record["call_sid"])
        fields = self.task_fields(record, self.find_who(record))
        if self.external_id:
            self._upsert(call_sid, fields)
            return
        response = self._api(
            "POST", "/sobjects/Task", what=f"Task create for call {call_sid}", body=fields
        )
        data = response_json(response)
        if isinstance(data, dict) and data.get("success") is False:
            raise PermanentError(
                f"Salesforce Task create for call {call_sid} failed: {data.get('errors')}"
            )

    def _upsert(self, call_sid: str, fields: dict[str, Any]) -> None:
        path = f"/sobjects/Task/{self.external_id}/{quote(call_sid, safe='')}"
        what = f"Task upsert on {self.external_id} for call {call_sid}"
        try:
            response = self._api("PATCH", path, what=what, body=fields)
        except PermanentError as err:
            found = re.search(r"duplicate value found: (\w+)", err.message)
            if err.upstream_code == "DUPLICATE_VALUE" and found and found[1] == self.external_id:
                return  # a racing upsert of the same call created it first: it is there
            raise
        except ConfigFaultError as err:
            # TaskSubtype can be set on create only: a repeat updates the Task without it.
            if (
                err.upstream_code == "INVALID_FIELD_FOR_INSERT_UPDATE"
                and "TaskSubtype" in err.message
            ):
                update = {k: v for k, v in fields.items() if k != "TaskSubtype"}
                response = self._api("PATCH", path, what=what, body=update)
            else:
                raise
        if response.status_code == 300:
            raise PermanentError(
                f"Salesforce {what}: several Tasks hold this {self.external_id}; mark the field "
                "Unique, merge the duplicates and replay the call",
                upstream_status=300,
            )

    def check(self) -> str:
        """Sign in, then one harmless read per endpoint family and Task's field metadata.

        The session's OAuth scopes, a SOSL search (Contact and Lead read), a
        SOQL query on Task, and ``Task/describe`` (create permission, the call
        fields, the external id) each report their problem on its own line.
        """
        problems: list[str] = []
        token = get_token(self.context.redis, self.cache_key, self.mint)
        scopes = str(token.extra.get("scope") or "").split()
        if scopes and not {"api", "full"} & set(scopes):
            problems.append(
                f"the Salesforce session's OAuth scopes are {' '.join(scopes)}: add "
                "'Manage user data via APIs (api)' to the connected app's Selected OAuth Scopes"
            )
        probes = [
            (
                "/search",
                {"q": "FIND {0000000000} IN PHONE FIELDS RETURNING Contact(Id), Lead(Id)"},
                "SOSL phone search (check)",
            ),
            ("/query", {"q": "SELECT Id FROM Task WHERE CallObject = '' LIMIT 1"}, None),
        ]
        for path, params, what in probes:
            try:
                self._api("GET", path, what=what or "Task query (check)", params=params)
            except (ConfigFaultError, PermanentError) as err:
                problems.append(_with_profile_hint(err.message))
        try:
            fields = self.describe_task()
        except (ConfigFaultError, PermanentError) as err:
            problems.append(_with_profile_hint(err.message))
        else:
            if not self._task_createable:
                problems.append(
                    "the Salesforce integration user cannot create Tasks: give its profile "
                    "(or a permission set) Create on Tasks"
                )
            _, found = resolve(self.field_specs(), fields, what="Salesforce Task")
            problems += found
            info = fields.get(self.external_id or "")
            if info is not None and not (info.external_id and info.unique is not False):
                problems.append(
                    f"Salesforce Task field {self.external_id} is not an External ID marked "
                    "Unique: edit the field in Setup and tick both"
                )
        if problems:
            raise CheckFailed(list(dict.fromkeys(problems)))
        return (
            f"Salesforce sign-in ({self.mode}) works; Contacts, Leads and Tasks answer and "
            "Task has the call fields"
        )


def _with_profile_hint(message: str) -> str:
    if "INVALID_TYPE" in message:
        return (
            f"{message}; give the integration user's profile Read on Contacts and Leads "
            "(the caller is searched in both)"
        )
    return message


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _soql_quote(value: str) -> str:
    return value.replace("\\", "\\\\").replace("'", "\\'")


def _load_rsa_key(path: str) -> RSAPrivateKey:
    data = read_private_key_file(path, "Salesforce")
    try:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
    except ImportError as err:  # pragma: no cover - cryptography is a dependency
        raise SettingsError(
            "SINKS", "salesforce:// JWT sign-in needs the 'cryptography' package"
        ) from err
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as err:
        raise SettingsError(
            "SINKS",
            "salesforce:// private_key_file is not an unencrypted PEM private key "
            f"({type(err).__name__})",
        ) from err
    if not isinstance(key, RSAPrivateKey):
        raise SettingsError("SINKS", "salesforce:// private_key_file must hold an RSA key (RS256)")
    return key
