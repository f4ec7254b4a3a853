"""A fake HubSpot CRM v3 API: contacts search, calls create/search/upsert, associations.

It behaves as HubSpot documents, not as the sink assumes:

- The calls object (https://developers.hubspot.com/docs/api/crm/calls):
  ``hs_timestamp`` required, enumerated direction and status, disposition
  GUIDs, durations in milliseconds, HTTPS .mp3/.wav recordings, known
  property names only (:attr:`FakeHubSpot.properties`, served by ``GET
  /crm/v3/properties/calls``,
  https://developers.hubspot.com/docs/api/crm/properties), Bearer auth,
  search filter limits (5 groups x 6 filters), association type 194.
- Scopes: the token carries :attr:`FakeHubSpot.granted`, by default exactly
  the two the calls guide lists ("Scope requirements":
  ``crm.objects.contacts.read``, ``crm.objects.contacts.write``); reads and
  searches need the read scope, creates, upserts and associations the write
  scope, and a token without one gets 403 ``MISSING_SCOPES`` naming it
  (https://developers.hubspot.com/docs/api-reference/error-handling). A
  private app's scopes are also readable at ``POST
  /oauth/v2/private-apps/get/access-token-info``
  (https://developers.hubspot.com/docs/api/private-apps).
- Errors use HubSpot's body ``{"status":"error","message","correlationId",
  "category"}``; 429s carry ``policyName`` and the ``X-HubSpot-RateLimit-*``
  headers; a batch whose inputs carry ``objectWriteTraceId`` answers 207
  Multi-Status with per-input ``errors`` when some fail (error-handling
  page, "Multi-status errors").
"""

from __future__ import annotations

import itertools
import re
import secrets
import uuid
from datetime import UTC, datetime
from typing import Any

from tests.unit.sinks.fakes import FakeServer, Problem, Reply, Seen

CALL_STATUSES = {
    "BUSY",
    "CALLING_CRM_USER",
    "CANCELED",
    "COMPLETED",
    "CONNECTING",
    "FAILED",
    "IN_PROGRESS",
    "NO_ANSWER",
    "QUEUED",
    "RINGING",
}
CALL_PROPERTIES = {
    "hs_timestamp",
    "hs_call_title",
    "hs_call_body",
    "hs_call_direction",
    "hs_call_status",
    "hs_call_disposition",
    "hs_call_duration",
    "hs_call_from_number",
    "hs_call_to_number",
    "hs_call_recording_url",
    "hubspot_owner_id",
}
OPERATORS = {
    "EQ",
    "NEQ",
    "LT",
    "LTE",
    "GT",
    "GTE",
    "BETWEEN",
    "IN",
    "NOT_IN",
    "HAS_PROPERTY",
    "NOT_HAS_PROPERTY",
    "CONTAINS_TOKEN",
    "NOT_CONTAINS_TOKEN",
}
GUIDE_SCOPES = frozenset({"crm.objects.contacts.read", "crm.objects.contacts.write"})
READ, WRITE = "crm.objects.contacts.read", "crm.objects.contacts.write"
GUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def hubspot_error(message: str, category: str, **extra: Any) -> dict[str, Any]:
    return {
        "status": "error",
        "message": message,
        "correlationId": str(uuid.uuid4()),
        "category": category,
        **extra,
    }


class FakeHubSpot(FakeServer):
    name = "hubspot"

    def __init__(self, *, unique_properties: tuple[str, ...] = ("exotel_call_sid",)) -> None:
        super().__init__()
        self.token = "pat-na1-" + secrets.token_hex(16)
        self.unique_properties = set(unique_properties)
        self.granted: set[str] = set(GUIDE_SCOPES)
        self.properties: set[str] = set(CALL_PROPERTIES)  # the portal's call properties
        self.contacts: dict[str, dict[str, Any]] = {}
        self.calls: dict[str, dict[str, Any]] = {}
        self._ids = itertools.count(51001)

    # ------------------------------------------------------------ helpers
    def add_contact(self, phone: str | None = None, mobilephone: str | None = None) -> str:
        contact_id = str(next(self._ids))
        self.contacts[contact_id] = {
            "id": contact_id,
            "properties": {
                "phone": phone,
                "mobilephone": mobilephone,
                "createdate": datetime.now(UTC).isoformat(),
            },
        }
        return contact_id

    def calls_for(self, call_sid: str) -> list[dict[str, Any]]:
        with self.lock:
            return [
                call
                for call in self.calls.values()
                if call_sid in call["properties"].get("hs_call_title", "").split()
                or call_sid in {call["properties"].get(p) for p in self.unique_properties}
            ]

    def rate_limited(
        self, policy: str = "TEN_SECONDLY_ROLLING", retry_after: int | None = None
    ) -> None:
        """The next request gets HubSpot's 429 for ``policy``."""
        messages = {
            "TEN_SECONDLY_ROLLING": "You have reached your ten_secondly_rolling limit.",
            "SECONDLY": "You have reached your secondly limit.",
            "DAILY": "You have reached your daily limit.",
        }
        headers = {
            "X-HubSpot-RateLimit-Daily": "250000",
            "X-HubSpot-RateLimit-Daily-Remaining": "0" if policy == "DAILY" else "249000",
            "X-HubSpot-RateLimit-Interval-Milliseconds": "10000",
            "X-HubSpot-RateLimit-Max": "100",
            "X-HubSpot-RateLimit-Remaining": "0",
        }
        if retry_after is not None:
            headers["Retry-After"] = str(retry_after)
        body = {
            "status": "error",
            "message": messages[policy],
            "errorType": "RATE_LIMIT",
            "correlationId": str(uuid.uuid4()),
            "policyName": policy,
            "requestId": str(uuid.uuid4()),
        }
        self.fail_next(429, body, headers=headers)

    # ------------------------------------------------------------ routing
    def handle(self, seen: Seen) -> Reply:
        if seen.headers.get("authorization") != f"Bearer {self.token}":
            return Reply(
                401,
                hubspot_error(
                    "Authentication credentials not found. This API supports OAuth 2.0 "
                    "authentication and you can find more details at "
                    "https://developers.hubspot.com/docs/methods/auth/oauth-overview",
                    "INVALID_AUTHENTICATION",
                ),
            )
        if seen.method in ("POST", "PUT", "PATCH") and seen.body:
            self.expect(
                seen.headers.get("content-type", "").startswith("application/json"),
                "JSON bodies need Content-Type: application/json",
            )
        route = (seen.method, seen.path)
        if route == ("POST", "/oauth/v2/private-apps/get/access-token-info"):
            self.expect(seen.json == {"tokenKey": self.token}, "token info takes tokenKey")
            return Reply(
                200,
                {"userId": 1234567, "hubId": 7654321, "appId": 111, "scopes": sorted(self.granted)},
            )
        needed = WRITE if seen.method in ("PUT", "PATCH") else READ
        if route in (
            ("POST", "/crm/v3/objects/calls"),
            ("POST", "/crm/v3/objects/calls/batch/upsert"),
        ):
            needed = WRITE
        if needed not in self.granted:
            return Reply(
                403,
                hubspot_error(
                    "This app hasn't been granted all required scopes to make this call. "
                    "Read more about required scopes here: https://developers.hubspot.com/scopes.",
                    "MISSING_SCOPES",
                    errors=[
                        {
                            "message": "One or more of the following scopes are required.",
                            "context": {"requiredGranularScopes": [needed]},
                        }
                    ],
                    links={"scopes": "https://developers.hubspot.com/scopes"},
                ),
            )
        if route == ("GET", "/crm/v3/properties/calls"):
            return self._properties()
        if route == ("POST", "/crm/v3/objects/contacts/search"):
            return self._search(seen.json, self.contacts)
        if route == ("POST", "/crm/v3/objects/calls/search"):
            return self._search(seen.json, self.calls)
        if route == ("GET", "/crm/v3/objects/calls"):
            self.expect(seen.query.get("limit", "10").isdigit(), "limit must be a number")
            return Reply(200, {"results": list(self.calls.values())[:1]})
        if route == ("POST", "/crm/v3/objects/calls"):
            return self._create(seen.json)
        if route == ("POST", "/crm/v3/objects/calls/batch/upsert"):
            return self._upsert(seen.json)
        match = re.fullmatch(
            r"/crm/v3/objects/calls/(\d+)/associations/contact/(\d+)/(\d+)", seen.path
        )
        if seen.method == "PUT" and match:
            return self._associate(*match.groups())
        raise Problem(f"no such HubSpot endpoint {seen.method} {seen.path}")

    # ------------------------------------------------------------ endpoints
    def _properties(self) -> Reply:
        enums = {
            "hs_call_direction": ["INBOUND", "OUTBOUND"],
            "hs_call_status": sorted(CALL_STATUSES),
        }
        rows = []
        for name in sorted(self.properties | self.unique_properties):
            row: dict[str, Any] = {
                "name": name,
                "label": name.replace("_", " "),
                "type": "enumeration" if name in enums else "string",
                "fieldType": "select" if name in enums else "text",
                "groupName": "call",
                "hasUniqueValue": name in self.unique_properties,
                "hidden": False,
                "modificationMetadata": {"readOnlyValue": False, "archivable": True},
                "options": [
                    {"label": v.title(), "value": v, "hidden": False, "displayOrder": i}
                    for i, v in enumerate(enums.get(name, []))
                ],
            }
            rows.append(row)
        return Reply(200, {"results": rows})

    def _search(self, body: Any, objects: dict[str, dict[str, Any]]) -> Reply:
        self.expect(isinstance(body, dict), "search needs a JSON object body")
        groups = body.get("filterGroups", [])
        self.expect(len(groups) <= 5, "at most 5 filterGroups")
        total_filters = 0
        for group in groups:
            filters = group.get("filters", [])
            self.expect(1 <= len(filters) <= 6, "1 to 6 filters per group")
            total_filters += len(filters)
            for flt in filters:
                self.expect(
                    flt.get("operator") in OPERATORS, f"unknown operator {flt.get('operator')}"
                )
                self.expect(isinstance(flt.get("propertyName"), str), "filter needs propertyName")
                if flt["operator"] in ("IN", "NOT_IN"):
                    values = flt.get("values")
                    self.expect(
                        isinstance(values, list)
                        and values
                        and all(isinstance(v, str) for v in values),
                        "IN needs a non-empty 'values' list of strings",
                    )
                elif flt["operator"] not in ("HAS_PROPERTY", "NOT_HAS_PROPERTY"):
                    self.expect(
                        isinstance(flt.get("value"), str), f"{flt['operator']} needs 'value'"
                    )
        self.expect(total_filters <= 18, "at most 18 filters in total")
        limit = body.get("limit", 10)
        self.expect(isinstance(limit, int) and 1 <= limit <= 200, "limit must be 1..200")
        with self.lock:
            found = [
                o
                for o in objects.values()
                if not groups or any(self._matches(o, g) for g in groups)
            ]
        return Reply(200, {"total": len(found), "results": found[:limit]})

    @staticmethod
    def _matches(obj: dict[str, Any], group: dict[str, Any]) -> bool:
        for flt in group["filters"]:
            value = obj["properties"].get(flt["propertyName"])
            op = flt["operator"]
            if op == "IN" and value not in flt["values"]:
                return False
            if op == "EQ" and value != flt["value"]:
                return False
            if (
                op == "CONTAINS_TOKEN"
                and flt["value"].lower() not in str(value or "").lower().split()
            ):
                return False
        return True

    def _check_properties(self, props: Any) -> Reply | None:
        self.expect(isinstance(props, dict), "properties must be an object")
        unknown = [name for name in props if name not in self.properties | self.unique_properties]
        if unknown:
            return Reply(
                400,
                hubspot_error(
                    "Property values were not valid: "
                    f'[{{"isValid":false,"message":"Property \\"{unknown[0]}\\" does not exist",'
                    f'"error":"PROPERTY_DOESNT_EXIST","name":"{unknown[0]}"}}]',
                    "VALIDATION_ERROR",
                ),
            )
        for name, value in props.items():
            self.expect(isinstance(value, str), f"{name} should be sent as a string")
        self.expect("hs_timestamp" in props, "hs_timestamp is required")
        stamp = props["hs_timestamp"]
        self.expect(
            stamp.isdigit() or re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", stamp),
            f"hs_timestamp must be ms or UTC ISO, got {stamp!r}",
        )
        if "hs_call_direction" in props:
            self.expect(
                props["hs_call_direction"] in ("INBOUND", "OUTBOUND"), "bad hs_call_direction"
            )
        if "hs_call_status" in props:
            self.expect(props["hs_call_status"] in CALL_STATUSES, "bad hs_call_status")
        if "hs_call_disposition" in props:
            self.expect(
                GUID.fullmatch(props["hs_call_disposition"]), "hs_call_disposition must be a GUID"
            )
        if "hs_call_duration" in props:
            self.expect(props["hs_call_duration"].isdigit(), "hs_call_duration is milliseconds")
        if "hs_call_recording_url" in props:
            url = props["hs_call_recording_url"]
            self.expect(
                url.startswith("https://") and url.lower().split("?")[0].endswith((".mp3", ".wav")),
                "recording URLs must be HTTPS .mp3/.wav",
            )
        if "hubspot_owner_id" in props:
            self.expect(
                props["hubspot_owner_id"].isdigit(), "hubspot_owner_id is a numeric owner id"
            )
        return None

    def _new_call(self, props: dict[str, Any], contacts: list[str]) -> dict[str, Any]:
        now = datetime.now(UTC).isoformat()
        call = {
            "id": str(next(self._ids)),
            "properties": dict(props),
            "createdAt": now,
            "updatedAt": now,
            "archived": False,
            "contacts": contacts,
        }
        self.calls[call["id"]] = call
        return call

    def _create(self, body: Any) -> Reply:
        self.expect(isinstance(body, dict) and "properties" in body, "create needs properties")
        bad = self._check_properties(body["properties"])
        if bad:
            return bad
        contacts = []
        for assoc in body.get("associations", []):
            types = assoc.get("types")
            self.expect(
                types == [{"associationCategory": "HUBSPOT_DEFINED", "associationTypeId": 194}],
                f"call->contact association must be HUBSPOT_DEFINED 194, got {types}",
            )
            contact_id = assoc.get("to", {}).get("id")
            if contact_id not in self.contacts:
                return Reply(
                    400, hubspot_error(f"No contact with id {contact_id}", "VALIDATION_ERROR")
                )
            contacts.append(contact_id)
        with self.lock:
            call = self._new_call(body["properties"], contacts)
        public = {k: v for k, v in call.items() if k != "contacts"}
        return Reply(201, public)

    def _upsert(self, body: Any) -> Reply:
        inputs = body.get("inputs") if isinstance(body, dict) else None
        self.expect(isinstance(inputs, list) and 1 <= len(inputs) <= 100, "1 to 100 inputs")
        results: list[dict[str, Any]] = []
        errors: list[dict[str, Any]] = []
        started = datetime.now(UTC).isoformat()
        for item in inputs:
            trace = item.get("objectWriteTraceId")
            if trace is not None:  # multi-status: a failed input is reported, not the batch
                bad = self._check_properties(item.get("properties"))
                if bad is not None:
                    error = dict(bad.body)
                    error["context"] = {"objectWriteTraceId": [trace]}
                    errors.append(error)
                    continue
            prop = item.get("idProperty")
            if prop not in self.unique_properties:
                return Reply(
                    400,
                    hubspot_error(
                        f"Upsert failed: property {prop} is not a unique identifier "
                        "property for calls",
                        "VALIDATION_ERROR",
                    ),
                )
            self.expect(isinstance(item.get("id"), str) and item["id"], "upsert input needs id")
            bad = self._check_properties(item.get("properties"))
            if bad:
                return bad
            with self.lock:
                existing = next(
                    (c for c in self.calls.values() if c["properties"].get(prop) == item["id"]),
                    None,
                )
                if existing is None:
                    call = self._new_call({**item["properties"], prop: item["id"]}, [])
                    new = True
                else:
                    existing["properties"].update(item["properties"])
                    call, new = existing, False
            result = {**{k: v for k, v in call.items() if k != "contacts"}, "new": new}
            if trace is not None:
                result["objectWriteTraceId"] = trace
            results.append(result)
        answer: dict[str, Any] = {
            "status": "COMPLETE",
            "results": results,
            "startedAt": started,
            "completedAt": datetime.now(UTC).isoformat(),
        }
        if errors:
            answer.update(errors=errors, numErrors=len(errors))
        return Reply(207 if errors else 200, answer)

    def _associate(self, call_id: str, contact_id: str, type_id: str) -> Reply:
        self.expect(type_id == "194", f"call->contact association type is 194, got {type_id}")
        if call_id not in self.calls or contact_id not in self.contacts:
            return Reply(404, hubspot_error("resource not found", "OBJECT_NOT_FOUND"))
        with self.lock:
            call = self.calls[call_id]
            if contact_id not in call["contacts"]:
                call["contacts"].append(contact_id)
        return Reply(200, {"id": call_id, "properties": call["properties"]})
