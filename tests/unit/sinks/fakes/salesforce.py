"""A fake Salesforce org: OAuth token endpoint and the REST API bits the sink uses.

It behaves as Salesforce documents, not as the sink assumes:

- Sign-in (``POST /services/oauth2/token``, form-encoded) supports the client
  credentials, refresh token and JWT bearer grants; the JWT is verified with
  the connected app's certificate key (RS256, iss/sub/aud/exp). The token
  answer names this server as ``instance_url`` and lists the connected app's
  OAuth scopes (:attr:`FakeSalesforce.oauth_scopes`); REST needs ``api``
  (https://help.salesforce.com/s/articleView?id=sf.remoteaccess_oauth_tokens_scopes.htm)
  and a session without it is refused with 401 INVALID_SESSION_ID.
- Permissions follow the integration user's profile: SOSL ``RETURNING`` an
  object the user cannot read is 400 INVALID_TYPE; ``Task/describe`` shows
  only the fields the user can see, with ``createable``/``updateable``,
  ``externalId``/``unique`` and picklist values
  (https://developer.salesforce.com/docs/atlas.en-us.api_rest.meta/api_rest/resources_sobject_describe.htm),
  and Task ``createable`` false when the profile lacks Create.
- SOSL phone search, SOQL on Task.CallObject, Task create, Task upsert by
  external id: 201 created / 200 updated / **300** when several records hold
  the value (https://developer.salesforce.com/docs/atlas.en-us.api_rest.meta/api_rest/dome_upsert.htm),
  and the create-only TaskSubtype refused on update.
- Errors are ``[{"message", "errorCode", "fields"}]``
  (https://developer.salesforce.com/docs/atlas.en-us.api_rest.meta/api_rest/errorcodes.htm);
  a second record with a Unique field's value is 400 ``DUPLICATE_VALUE``
  (:meth:`FakeSalesforce.duplicate_value`); running out of API allocation
  is 403 REQUEST_LIMIT_EXCEEDED with ``Sforce-Limit-Info``.
"""

from __future__ import annotations

import base64
import itertools
import json
import re
import secrets
import time
from typing import Any
from urllib.parse import unquote

from tests.unit.sinks.fakes import FakeServer, Problem, Reply, Seen

API = "/services/data/v61.0"
TASK_FIELDS = {
    "Subject",
    "TaskSubtype",
    "Status",
    "ActivityDate",
    "CallType",
    "CallDurationInSeconds",
    "CallObject",
    "CallDisposition",
    "Description",
    "WhoId",
    "WhatId",
    "OwnerId",
    "Priority",
}


def sf_error(code: str, message: str, fields: list[str] | None = None) -> list[dict[str, Any]]:
    return [{"message": message, "errorCode": code, "fields": fields or []}]


def _b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class FakeSalesforce(FakeServer):
    name = "salesforce"

    def __init__(self) -> None:
        super().__init__()
        self.client_id = "3MVG9" + secrets.token_hex(20)
        self.client_secret = secrets.token_hex(32).upper()
        self.refresh_token = "5Aep861" + secrets.token_hex(24)
        self.username = "integration@acme.example"
        self.public_key: Any = None  # set by tests that use the JWT flow
        self.sessions: set[str] = set()
        self.sign_ins: list[str] = []  # grant types, in order
        self.contacts: dict[str, str] = {}  # id -> phone as typed
        self.leads: dict[str, str] = {}
        self.users = {"0055g00000AbCdEAAA", "0055g00000AbCdFAAA"}
        self.tasks: dict[str, dict[str, Any]] = {}
        self.external_ids = {"Exotel_Call_Sid__c"}
        self.oauth_scopes = "api"
        self.readable = {"Contact", "Lead", "Task"}  # the integration user's profile
        self.task_createable = True
        self.hidden_fields: set[str] = set()  # Task fields field-level security hides
        self._ids = itertools.count(1)
        self._api_sessions: set[str] = set()

    # ------------------------------------------------------------ helpers
    def add(self, kind: str, phone: str) -> str:
        prefix = "003" if kind == "Contact" else "00Q"
        record_id = f"{prefix}5g00000{next(self._ids):08d}"
        (self.contacts if kind == "Contact" else self.leads)[record_id] = phone
        return record_id

    def tasks_for(self, call_sid: str) -> list[dict[str, Any]]:
        with self.lock:
            return [
                t
                for t in self.tasks.values()
                if call_sid in (t.get("CallObject"), *(t.get(f) for f in self.external_ids))
            ]

    def expire_sessions(self) -> None:
        self.sessions.clear()

    def duplicate_value(self, field: str = "Exotel_Call_Sid__c") -> None:
        """The next write is refused as a Unique field's duplicate."""
        self.fail_next(
            400,
            sf_error(
                "DUPLICATE_VALUE",
                f"duplicate value found: {field} duplicates value on record with id: "
                "00T5g000001AbCdEAK",
            ),
            path=r"/services/data/[^/]+/sobjects/Task(/(?!describe$)[^/]+/.+)?",  # writes
        )

    def visible_fields(self) -> set[str]:
        return (TASK_FIELDS | self.external_ids) - self.hidden_fields

    def limit_exceeded(self) -> None:
        self.fail_next(
            403,
            sf_error("REQUEST_LIMIT_EXCEEDED", "TotalRequests Limit exceeded."),
            headers={"Sforce-Limit-Info": "api-usage=15001/15000"},
        )

    # ------------------------------------------------------------ routing
    def handle(self, seen: Seen) -> Reply:
        if seen.path == "/services/oauth2/token":
            return self._token(seen)
        auth = seen.headers.get("authorization", "")
        if not auth.startswith("Bearer ") or auth[7:] not in self.sessions:
            return Reply(401, sf_error("INVALID_SESSION_ID", "Session expired or invalid"))
        if auth[7:] not in self._api_sessions:
            return Reply(
                401,
                sf_error(
                    "INVALID_SESSION_ID", "This session is not valid for use with the REST API"
                ),
            )
        self.expect(seen.path.startswith(API + "/"), f"REST paths start with {API}")
        rest = seen.path[len(API) :]
        if seen.method == "GET" and rest in ("/search", "/search/"):
            return self._sosl(seen.query.get("q", ""))
        if seen.method == "GET" and rest in ("/query", "/query/"):
            return self._soql(seen.query.get("q", ""))
        if seen.method == "GET" and rest == "/sobjects/Task/describe":
            return self._describe()
        if seen.method == "POST" and rest == "/sobjects/Task":
            return self._create(seen.json)
        match = re.fullmatch(r"/sobjects/Task/(\w+)/(.+)", rest)
        if seen.method == "PATCH" and match:
            return self._upsert(match.group(1), unquote(match.group(2)), seen.json)
        raise Problem(f"no such Salesforce endpoint {seen.method} {seen.path}")

    # ------------------------------------------------------------ sign-in
    def _token(self, seen: Seen) -> Reply:
        self.expect(seen.method == "POST", "the token endpoint takes POST")
        self.expect(
            seen.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"),
            "token requests are form-encoded",
        )
        form = seen.form
        grant = form.get("grant_type", "")
        ok = False
        if grant == "client_credentials":
            ok = (
                form.get("client_id") == self.client_id
                and form.get("client_secret") == self.client_secret
            )
            if form.get("client_id") != self.client_id:
                return Reply(
                    400,
                    {
                        "error": "invalid_client_id",
                        "error_description": "client identifier invalid",
                    },
                )
        elif grant == "refresh_token":
            if form.get("client_id") != self.client_id:
                return Reply(
                    400,
                    {
                        "error": "invalid_client_id",
                        "error_description": "client identifier invalid",
                    },
                )
            ok = form.get("refresh_token") == self.refresh_token
        elif grant == "urn:ietf:params:oauth:grant-type:jwt-bearer":
            ok = self._jwt_ok(form.get("assertion", ""))
            if not ok:
                return Reply(
                    400, {"error": "invalid_grant", "error_description": "invalid assertion"}
                )
        else:
            return Reply(
                400,
                {
                    "error": "unsupported_grant_type",
                    "error_description": "grant type not supported",
                },
            )
        if not ok:
            return Reply(
                400, {"error": "invalid_grant", "error_description": "authentication failure"}
            )
        session = "00D5g000004Abcd!" + secrets.token_urlsafe(48)
        with self.lock:
            self.sessions.add(session)
            if "api" in self.oauth_scopes.split() or "full" in self.oauth_scopes.split():
                self._api_sessions.add(session)
            self.sign_ins.append(grant)
        return Reply(
            200,
            {
                "access_token": session,
                "signature": base64.b64encode(secrets.token_bytes(32)).decode(),
                "scope": self.oauth_scopes,
                "instance_url": self.url,
                "id": "https://login.salesforce.com/id/00D5g000004AbcdEAC/0055g00000AbCdEAAA",
                "token_type": "Bearer",
                "issued_at": str(int(time.time() * 1000)),
            },
        )

    def _jwt_ok(self, assertion: str) -> bool:
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding

        parts = assertion.split(".")
        self.expect(len(parts) == 3, "a JWT has three parts")
        header = json.loads(_b64url_decode(parts[0]))
        claims = json.loads(_b64url_decode(parts[1]))
        self.expect(header.get("alg") == "RS256", "Salesforce takes RS256 assertions")
        if self.public_key is None:
            return False
        try:
            self.public_key.verify(
                _b64url_decode(parts[2]),
                f"{parts[0]}.{parts[1]}".encode(),
                padding.PKCS1v15(),
                hashes.SHA256(),
            )
        except InvalidSignature:
            return False
        now = time.time()
        return (
            claims.get("iss") == self.client_id
            and claims.get("sub") == self.username
            and claims.get("aud") == "https://login.salesforce.com"
            and now < claims.get("exp", 0) <= now + 300
        )

    # ------------------------------------------------------------ queries
    def _describe(self) -> Reply:
        picklists = {
            "CallType": ["Inbound", "Outbound", "Internal"],
            "Status": ["Not Started", "In Progress", "Completed", "Waiting on someone else"],
            "TaskSubtype": ["Task", "Email", "Call", "ListEmail", "Cadence"],
            "Priority": ["High", "Normal", "Low"],
        }
        fields = []
        for name in sorted(self.visible_fields()):
            external = name in self.external_ids
            fields.append(
                {
                    "name": name,
                    "type": "picklist" if name in picklists else "string",
                    "createable": True,
                    "updateable": name != "TaskSubtype",
                    "externalId": external,
                    "unique": external,
                    "picklistValues": [
                        {"value": v, "label": v, "active": True} for v in picklists.get(name, [])
                    ],
                }
            )
        body = {"name": "Task", "createable": self.task_createable, "fields": fields}
        return Reply(200, body)

    def _sosl(self, q: str) -> Reply:
        match = re.fullmatch(
            r"FIND \{([^}]+)\} IN PHONE FIELDS RETURNING Contact\(Id\), Lead\(Id\)", q
        )
        self.expect(match, f"unexpected SOSL {q!r}")
        assert match is not None
        for kind in ("Contact", "Lead"):
            if kind not in self.readable:
                return Reply(
                    400,
                    sf_error(
                        "INVALID_TYPE",
                        f"sObject type '{kind}' is not supported. If you are attempting to use "
                        "a custom object, be sure to append the '__c' after the entity name.",
                    ),
                )
        terms = [t.strip() for t in match.group(1).split(" OR ")]
        for term in terms:
            self.expect(re.fullmatch(r"\d{2,}", term), f"SOSL term {term!r} needs escaping")
        rows = []
        with self.lock:
            for kind, store in (("Contact", self.contacts), ("Lead", self.leads)):
                for record_id, phone in store.items():
                    digits = re.sub(r"\D", "", phone)
                    if any(digits == t or digits.endswith(t) or t.endswith(digits) for t in terms):
                        url = f"{API}/sobjects/{kind}/{record_id}"
                        rows.append({"attributes": {"type": kind, "url": url}, "Id": record_id})
        return Reply(200, {"searchRecords": rows})

    def _soql(self, q: str) -> Reply:
        match = re.fullmatch(
            r"SELECT Id FROM Task WHERE CallObject = '((?:[^'\\]|\\.)*)' LIMIT 1", q
        )
        self.expect(match, f"unexpected SOQL {q!r}")
        assert match is not None
        value = re.sub(r"\\(.)", r"\1", match.group(1))
        with self.lock:
            found = [t for t in self.tasks.values() if t.get("CallObject") == value][:1]
        records = [
            {"attributes": {"type": "Task", "url": f"{API}/sobjects/Task/{t['Id']}"}, "Id": t["Id"]}
            for t in found
        ]
        return Reply(200, {"totalSize": len(records), "done": True, "records": records})

    # ------------------------------------------------------------ writes
    def _invalid(self, body: Any, *, creating: bool) -> Reply | None:
        self.expect(isinstance(body, dict), "sObject bodies are JSON objects")
        unknown = [k for k in body if k not in self.visible_fields()]
        if unknown:
            return Reply(
                400,
                sf_error(
                    "INVALID_FIELD",
                    f"No such column '{unknown[0]}' on sobject of type Task",
                    [unknown[0]],
                ),
            )
        if not creating and "TaskSubtype" in body:
            return Reply(
                400,
                sf_error(
                    "INVALID_FIELD_FOR_INSERT_UPDATE",
                    "Unable to create/update fields: TaskSubtype. Please check the security "
                    "settings of this field and verify that it is read/write for your profile "
                    "or permission set.",
                    ["TaskSubtype"],
                ),
            )
        if creating:
            self.expect(body.get("TaskSubtype") == "Call", "call Tasks have TaskSubtype Call")
        self.expect(body.get("Status") == "Completed", "logged calls are Completed")
        self.expect(
            re.fullmatch(r"\d{4}-\d\d-\d\d", str(body.get("ActivityDate"))),
            "ActivityDate is a date",
        )
        self.expect(body.get("CallType") in ("Inbound", "Outbound", "Internal"), "bad CallType")
        self.expect(
            isinstance(body.get("CallDurationInSeconds"), int), "CallDurationInSeconds is an int"
        )
        for name in ("CallObject", "CallDisposition", "Subject"):
            self.expect(
                isinstance(body.get(name), str) and len(body[name]) <= 255, f"{name} <= 255"
            )
        who = body.get("WhoId")
        if who is not None and who not in self.contacts and who not in self.leads:
            return Reply(
                400,
                sf_error(
                    "INVALID_CROSS_REFERENCE_KEY", "Name ID: id value of incorrect type", ["WhoId"]
                ),
            )
        owner = body.get("OwnerId")
        if owner is not None and owner not in self.users:
            return Reply(
                400,
                sf_error(
                    "INVALID_CROSS_REFERENCE_KEY",
                    "Assigned To ID: owner cannot be blank",
                    ["OwnerId"],
                ),
            )
        return None

    def _new_id(self) -> str:
        return f"00T5g00000{next(self._ids):08d}"

    def _create(self, body: Any) -> Reply:
        if not self.task_createable:
            return Reply(
                400,
                sf_error(
                    "INSUFFICIENT_ACCESS_OR_READONLY",
                    "insufficient access rights on object id",
                ),
            )
        bad = self._invalid(body, creating=True)
        if bad:
            return bad
        with self.lock:
            task_id = self._new_id()
            self.tasks[task_id] = {"Id": task_id, **body}
        return Reply(201, {"id": task_id, "success": True, "errors": []})

    def _upsert(self, field: str, value: str, body: Any) -> Reply:
        if field not in self.external_ids:
            return Reply(
                404,
                sf_error(
                    "NOT_FOUND",
                    f"Provided external ID field does not exist or is not accessible: {field}",
                ),
            )
        self.expect(field not in body, "the external id goes in the URL, not the body")
        with self.lock:
            matches = [t for t in self.tasks.values() if t.get(field) == value]
            if len(matches) > 1:
                return Reply(300, [f"{API}/sobjects/Task/{t['Id']}" for t in matches])
            bad = self._invalid(body, creating=not matches)
            if bad:
                return bad
            if matches:
                matches[0].update(body)
                return Reply(
                    200, {"id": matches[0]["Id"], "success": True, "errors": [], "created": False}
                )
            task_id = self._new_id()
            self.tasks[task_id] = {"Id": task_id, field: value, **body}
        return Reply(201, {"id": task_id, "success": True, "errors": [], "created": True})
