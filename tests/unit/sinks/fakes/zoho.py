"""A fake Zoho: the Accounts token endpoint and the CRM v8 API, on two servers.

It behaves as Zoho documents, not as the sink assumes:

- Accounts (``/oauth/v2/token``) mints one-hour tokens for the refresh-token
  grant, carrying the scopes the Self Client's grant was made with
  (:attr:`FakeZohoAccounts.granted`, every scope the sink needs unless a test
  removes one). Errors come back with HTTP 200 and an ``error`` field:
  ``invalid_code``, ``invalid_client``, and past 10 tokens per refresh token
  in 10 minutes ``{"error": "Access Denied", "error_description": "You have
  made too many requests continuously..."}``
  (https://www.zoho.com/crm/developer/docs/api/v8/refresh.html,
  https://www.zoho.com/crm/developer/docs/api/v8/oauth-overview.html). The
  token answer names the CRM server as ``api_domain``.
- The CRM server checks ``Authorization: Zoho-oauthtoken``, answers 401
  INVALID_TOKEN for expired tokens and 401 ``OAUTH_SCOPE_MISMATCH`` when the
  token lacks the scope an endpoint documents
  (https://www.zoho.com/crm/developer/docs/api/v8/status-codes.html):
  searches need ``ZohoCRM.modules.<module>.READ`` *and*
  ``ZohoSearch.securesearch.READ``
  (https://www.zoho.com/crm/developer/docs/api/v8/search-records.html),
  inserting Calls ``ZohoCRM.modules.calls.CREATE``
  (https://www.zoho.com/crm/developer/docs/api/v8/insert-records.html), the
  field metadata ``ZohoCRM.settings.fields.READ``
  (https://www.zoho.com/crm/developer/docs/api/v8/field-meta.html).
- It searches Contacts/Leads by ``phone`` (204 when nothing matches) and Calls
  by ``criteria``; answers ``GET settings/fields?module=Calls`` with the
  org's Calls fields (:attr:`FakeZohoCRM.status_field` may be the older or the
  newer name); and validates inserted Calls against those fields (Subject,
  Call_Type, Call_Start_Time with offset, Call_Duration mm:ss,
  Who_Id/What_Id+$se_module, Owner) with per-record codes SUCCESS /
  MANDATORY_NOT_FOUND / INVALID_DATA / DUPLICATE_DATA.
"""

from __future__ import annotations

import itertools
import re
import secrets
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from tests.unit.sinks.fakes import FakeServer, Problem, Reply, Seen

#: Every scope a Self Client needs for the endpoints the sink calls (Zoho's API reference).
ALL_SCOPES = frozenset(
    {
        "ZohoCRM.modules.calls.CREATE",
        "ZohoCRM.modules.calls.READ",
        "ZohoCRM.modules.contacts.READ",
        "ZohoCRM.modules.leads.READ",
        "ZohoSearch.securesearch.READ",
        "ZohoCRM.settings.fields.READ",
    }
)
STANDARD_FIELDS = {
    "Subject": "text",
    "Call_Type": "picklist",
    "Call_Start_Time": "datetime",
    "Call_Duration": "text",
    "Description": "textarea",
    "Owner": "ownerlookup",
    "Who_Id": "lookup",
    "What_Id": "lookup",
    "Call_Purpose": "picklist",
    "Call_Result": "picklist",
}
PICKLISTS = {
    "Call_Type": ["Inbound", "Outbound", "Missed"],
    "Outgoing_Call_Status": ["Completed", "Scheduled"],
    "Outbound_Call_Status": ["Completed", "Scheduled"],
}
ISO_WITH_OFFSET = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d")


def zoho_error(code: str, message: str, status: str = "error", **details: Any) -> dict[str, Any]:
    return {"code": code, "details": details, "message": message, "status": status}


def has_scope(granted: frozenset[str], needed: str) -> bool:
    """``ZohoCRM.modules.calls.READ`` is also granted by ``.ALL`` and ``ZohoCRM.modules.ALL``."""
    if needed in granted:
        return True
    parts = needed.split(".")
    broader = {".".join([*parts[:-1], "ALL"]), ".".join([*parts[:-2], "ALL"])}
    return bool(granted & broader)


class FakeZohoAccounts(FakeServer):
    name = "zoho-accounts"

    def __init__(self, crm: FakeZohoCRM) -> None:
        super().__init__()
        self.crm = crm
        self.client_id = "1000." + secrets.token_hex(15).upper()
        self.client_secret = secrets.token_hex(21)
        self.refresh_token = "1000." + secrets.token_hex(16) + "." + secrets.token_hex(16)
        self.minted: list[float] = []
        self.mint_delay = 0.0
        self.expires_in = 3600
        self.limit_per_ten_minutes = 10
        self.granted: set[str] = set(ALL_SCOPES)

    def handle(self, seen: Seen) -> Reply:
        if (seen.method, seen.path) != ("POST", "/oauth/v2/token"):
            raise Problem(f"no such Zoho Accounts endpoint {seen.method} {seen.path}")
        params = {**seen.query, **seen.form}
        self.expect(params.get("grant_type") == "refresh_token", "grant_type=refresh_token")
        for name in ("client_id", "client_secret", "refresh_token"):
            self.expect(params.get(name), f"{name} is required")
        if params["client_id"] != self.client_id:
            return Reply(200, {"error": "invalid_client"})
        if params["client_secret"] != self.client_secret:
            return Reply(200, {"error": "invalid_client_secret"})
        if params["refresh_token"] != self.refresh_token:
            return Reply(200, {"error": "invalid_code"})
        now = time.time()
        with self.lock:
            recent = [t for t in self.minted if now - t < 600]
            if len(recent) >= self.limit_per_ten_minutes:
                return Reply(
                    200,
                    {
                        "error_description": "You have made too many requests continuously. "
                        "Please try again after some time.",
                        "error": "Access Denied",
                        "status": "failure",
                    },
                )
            self.minted.append(now)
        token = "1000." + secrets.token_hex(16) + "." + secrets.token_hex(16)
        self.crm.valid_tokens[token] = frozenset(self.granted)
        return Reply(
            200,
            {
                "access_token": token,
                "api_domain": self.crm.url,
                "token_type": "Bearer",
                "expires_in": self.expires_in,
            },
            delay=self.mint_delay,
        )


class FakeZohoCRM(FakeServer):
    name = "zoho-crm"

    def __init__(self) -> None:
        super().__init__()
        self.valid_tokens: dict[str, frozenset[str]] = {}
        self.version = "v8"
        self.contacts: dict[str, dict[str, Any]] = {}
        self.leads: dict[str, dict[str, Any]] = {}
        self.calls: dict[str, dict[str, Any]] = {}
        self.users = {"4150868000000225013", "4150868000000225014"}
        self.custom_fields = {"Exotel_Call_SID"}
        self.status_field = "Outgoing_Call_Status"  # some orgs have Outbound_Call_Status
        self.unique_fields: set[str] = set()
        self._ids = itertools.count(4150868000001000001)

    # ------------------------------------------------------------ helpers
    def add(self, module: str, phone: str | None = None, mobile: str | None = None) -> str:
        record_id = str(next(self._ids))
        store = self.contacts if module == "Contacts" else self.leads
        store[record_id] = {"id": record_id, "Phone": phone, "Mobile": mobile}
        return record_id

    def expire_tokens(self) -> None:
        self.valid_tokens.clear()

    def calls_for(self, call_sid: str) -> list[dict[str, Any]]:
        with self.lock:
            return [
                c for c in self.calls.values() if call_sid in {c.get(f) for f in self.custom_fields}
            ]

    def too_many_requests(self) -> None:
        self.fail_next(
            429,
            zoho_error("TOO_MANY_REQUESTS", "Please try again after some time."),
            headers={"Retry-After": "7"},
        )

    # ------------------------------------------------------------ routing
    def handle(self, seen: Seen) -> Reply:
        auth = seen.headers.get("authorization", "")
        if not auth.startswith("Zoho-oauthtoken "):
            return Reply(401, zoho_error("AUTHENTICATION_FAILURE", "Authentication failed"))
        granted = self.valid_tokens.get(auth.split(" ", 1)[1])
        if granted is None:
            return Reply(401, zoho_error("INVALID_TOKEN", "invalid oauth token"))
        prefix = f"/crm/{self.version}/"
        self.expect(seen.path.startswith(prefix), f"API path must start with {prefix}")
        rest = seen.path[len(prefix) :]
        routes: dict[tuple[str, str], tuple[tuple[str, ...], Callable[[], Reply]]] = {
            ("GET", "Contacts/search"): (
                ("ZohoCRM.modules.contacts.READ", "ZohoSearch.securesearch.READ"),
                lambda: self._search_people("Contacts", seen.query),
            ),
            ("GET", "Leads/search"): (
                ("ZohoCRM.modules.leads.READ", "ZohoSearch.securesearch.READ"),
                lambda: self._search_people("Leads", seen.query),
            ),
            ("GET", "Calls/search"): (
                ("ZohoCRM.modules.calls.READ", "ZohoSearch.securesearch.READ"),
                lambda: self._search_calls(seen.query),
            ),
            ("POST", "Calls"): (
                ("ZohoCRM.modules.calls.CREATE",),
                lambda: self._insert(seen.json),
            ),
            ("GET", "settings/fields"): (
                ("ZohoCRM.settings.fields.READ",),
                lambda: self._fields(seen.query),
            ),
        }
        route = routes.get((seen.method, rest))
        if route is None:
            raise Problem(f"no such Zoho CRM endpoint {seen.method} {seen.path}")
        needed, answer = route
        if not all(has_scope(granted, scope) for scope in needed):
            return Reply(
                401, zoho_error("OAUTH_SCOPE_MISMATCH", "invalid oauth scope to access this URL")
            )
        return answer()

    def field_names(self) -> set[str]:
        return {*STANDARD_FIELDS, self.status_field, *self.custom_fields}

    def _fields(self, query: dict[str, str]) -> Reply:
        self.expect(query.get("module") == "Calls", "the sink reads the Calls fields")
        rows = []
        for name in sorted(self.field_names()):
            kind = STANDARD_FIELDS.get(name) or ("picklist" if name in PICKLISTS else "text")
            row: dict[str, Any] = {
                "api_name": name,
                "field_label": name.replace("_", " "),
                "data_type": kind,
                "read_only": False,
                "custom_field": name in self.custom_fields,
                "id": str(next(self._ids)),
            }
            if name in PICKLISTS:
                row["pick_list_values"] = [
                    {"display_value": v, "actual_value": v} for v in PICKLISTS[name]
                ]
            rows.append(row)
        return Reply(200, {"fields": rows})

    def _search_people(self, module: str, query: dict[str, str]) -> Reply:
        keys = [k for k in ("criteria", "email", "phone", "word") if k in query]
        self.expect(len(keys) == 1, f"search takes one of criteria/email/phone/word, got {keys}")
        self.expect(keys == ["phone"], "people are searched by phone")
        store = self.contacts if module == "Contacts" else self.leads
        value = query["phone"]
        with self.lock:
            found = [r for r in store.values() if value in (r.get("Phone"), r.get("Mobile"))]
        if not found:
            return Reply(204)
        info = {"per_page": 200, "count": len(found), "page": 1, "more_records": False}
        return Reply(200, {"data": found, "info": info})

    def _search_calls(self, query: dict[str, str]) -> Reply:
        criteria = query.get("criteria", "")
        match = re.fullmatch(r"\((\w+):equals:(.+)\)", criteria)
        self.expect(match, f"criteria must be (field:equals:value), got {criteria!r}")
        assert match is not None
        field, value = match.groups()
        if field not in self.custom_fields:
            return Reply(
                400,
                zoho_error(
                    "INVALID_QUERY",
                    "invalid query formed",
                    api_name=field,
                    reason="the field is not available for search",
                ),
            )
        value = re.sub(r"\\(.)", r"\1", value)
        with self.lock:
            found = [c for c in self.calls.values() if c.get(field) == value]
        if not found:
            return Reply(204)
        return Reply(200, {"data": found, "info": {"count": len(found), "more_records": False}})

    def _insert(self, body: Any) -> Reply:
        rows = body.get("data") if isinstance(body, dict) else None
        self.expect(isinstance(rows, list) and 1 <= len(rows) <= 100, "data: 1 to 100 records")
        assert isinstance(rows, list)
        self.expect(len(rows) == 1, "the sink sends one call per request")
        row = rows[0]
        for name in ("Subject", "Call_Type", "Call_Start_Time"):
            if not row.get(name):
                return Reply(
                    400,
                    {
                        "data": [
                            zoho_error(
                                "MANDATORY_NOT_FOUND",
                                "required field not found",
                                api_name=name,
                                json_path=f"$.data[0].{name}",
                            )
                        ]
                    },
                )
        unknown = [name for name in row if name not in self.field_names() | {"$se_module"}]
        if unknown:
            return self._invalid(unknown[0])
        self.expect(row["Call_Type"] in ("Inbound", "Outbound", "Missed"), "bad Call_Type")
        if not ISO_WITH_OFFSET.fullmatch(str(row["Call_Start_Time"])):
            return self._invalid("Call_Start_Time")
        if not re.fullmatch(r"\d{2,}:\d{2}", str(row.get("Call_Duration", ""))):
            return self._invalid("Call_Duration")
        if row["Call_Type"] == "Outbound":
            self.expect(
                row.get(self.status_field) in ("Completed", "Scheduled"),
                f"Outbound calls need {self.status_field}",
            )
        if "Owner" in row and row["Owner"].get("id") not in self.users:
            return self._invalid("Owner")
        if "Who_Id" in row and row["Who_Id"].get("id") not in self.contacts:
            return self._invalid("Who_Id")
        if "What_Id" in row:
            self.expect(row.get("$se_module") == "Leads", "What_Id needs $se_module")
            if row["What_Id"].get("id") not in self.leads:
                return self._invalid("What_Id")
        with self.lock:
            for field in self.unique_fields:
                twin = next(
                    (c for c in self.calls.values() if c.get(field) == row.get(field)), None
                )
                if twin is not None:
                    return Reply(
                        400,
                        {
                            "data": [
                                zoho_error(
                                    "DUPLICATE_DATA",
                                    "duplicate data",
                                    api_name=field,
                                    json_path=f"$.data[0].{field}",
                                    duplicate_record={
                                        "id": twin["id"],
                                        "module": {"api_name": "Calls"},
                                    },
                                )
                            ]
                        },
                    )
            record_id = str(next(self._ids))
            self.calls[record_id] = {"id": record_id, **row}
        now = datetime.now(UTC).astimezone().replace(microsecond=0).isoformat()
        user = {"name": "Integration User", "id": "4150868000000225013"}
        return Reply(
            201,
            {
                "data": [
                    {
                        "code": "SUCCESS",
                        "details": {
                            "Modified_Time": now,
                            "Modified_By": user,
                            "Created_Time": now,
                            "id": record_id,
                            "Created_By": user,
                        },
                        "message": "record added",
                        "status": "success",
                    }
                ]
            },
        )

    def _invalid(self, field: str) -> Reply:
        return Reply(
            400,
            {
                "data": [
                    zoho_error(
                        "INVALID_DATA",
                        "invalid data",
                        api_name=field,
                        json_path=f"$.data[0].{field}",
                    )
                ]
            },
        )


class FakeZoho:
    """Both servers, and the zoho:// URL that points a sink at them."""

    def __init__(self) -> None:
        self.crm = FakeZohoCRM()
        self.accounts = FakeZohoAccounts(self.crm)

    @contextmanager
    def running(self) -> Iterator[FakeZoho]:
        with self.crm.running(), self.accounts.running():
            yield self

    def url(self, extra: str = "") -> str:
        a = self.accounts
        return (
            f"zoho://accounts.zoho.in?client_id={a.client_id}&client_secret={a.client_secret}"
            f"&refresh_token={a.refresh_token}&accounts_base={a.url}{extra}"
        )

    @property
    def secrets(self) -> tuple[str, ...]:
        return (self.accounts.client_secret, self.accounts.refresh_token, *self.crm.valid_tokens)

    def assert_clean(self) -> None:
        self.crm.assert_clean()
        self.accounts.assert_clean()
