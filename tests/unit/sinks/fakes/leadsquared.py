"""A fake LeadSquared: the telephony call-log API and the activity types.

It behaves as LeadSquared documents, not as the sink assumes:

- ``POST /v2/Telephony.svc/LogCall`` (Generic Telephony Connector call log,
  https://apidocs.leadsquared.com/call-log-api-for-leadsquared-generic-telephony-connector/):
  keys in the ``x-LSQ-AccessKey``/``x-LSQ-SecretKey`` headers or the
  ``accessKey``/``secretKey`` query; UTC ``YYYY-MM-DD HH:MM:SS`` times,
  seconds, Status, Direction, CallSessionId. Without a ``LeadId`` the call
  is filed on the lead whose phone is the lead-side number (Source for
  inbound, Destination for outbound), and a lead is **created** when none
  has it (the CallerSource note on that page): :attr:`FakeLeadSquared.leads`
  shows what a junk number would leave behind.
- Application errors come back as HTTP **500** with ``{"Status": "Error",
  "ExceptionType": ..., "ExceptionMessage": ...}``, e.g. a missing
  attribute is ``MXMandatoryAttributeMissingException``
  (https://apidocs.leadsquared.com/error-handling/); wrong keys are 401.
- LeadSquared has no per-endpoint scopes: what a key may do follows the role
  of the user it belongs to (its API docs note that some roles cannot see
  all data, and only an Administrator can set up the telephony connector,
  https://help.leadsquared.com/leadsquared-generic-telephony-connector/).
  :attr:`FakeLeadSquared.role` other than ``Administrator`` is refused the
  telephony and activity-type APIs with a 500 ``MXUnAuthorizedAccessException``
  (the exact type for a role refusal is not documented).
- ``GET /v2/ProspectActivity.svc/ActivityTypes.Get`` lists the account's
  activity types (LeadSquared's activity APIs, https://apidocs.leadsquared.com/);
  the phone call activities exist once the telephony connector is installed.
"""

from __future__ import annotations

import re
import secrets
import uuid
from typing import Any

from tests.unit.sinks.fakes import FakeServer, Problem, Reply, Seen, require_fields

UTC_TEXT = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d")
FIELDS = {
    "SourceNumber",
    "CallerSource",
    "DestinationNumber",
    "DisplayNumber",
    "StartTime",
    "EndTime",
    "CallDuration",
    "Status",
    "ResourceURL",
    "Direction",
    "CallSessionId",
    "LeadId",
    "Tag",
    "UserId",
}


def lsq_error(kind: str, message: str) -> dict[str, Any]:
    return {"Status": "Error", "ExceptionType": kind, "ExceptionMessage": message}


PHONE_CALL_TYPES = [
    {"ActivityEvent": 21, "DisplayName": "Inbound Phone Call Activity", "Direction": 0},
    {"ActivityEvent": 22, "DisplayName": "Outbound Phone Call Activity", "Direction": 1},
]
DIALABLE = re.compile(r"\+\d{1,3}-\d{6,14}")


class FakeLeadSquared(FakeServer):
    name = "leadsquared"

    def __init__(self) -> None:
        super().__init__()
        self.access_key = "u$r" + secrets.token_hex(16)
        self.secret_key = secrets.token_hex(20)
        self.logs: list[dict[str, Any]] = []
        self.users = {
            "40e06a3d-4787-11e7-b781-023cca4497b9",
            "51f17b4e-4787-11e7-b781-023cca4497b9",
        }
        self.role = "Administrator"
        self.activity_types: list[dict[str, Any]] = [
            {"ActivityEvent": 2, "DisplayName": "Email Opened", "Direction": 0},
            *PHONE_CALL_TYPES,
        ]
        self.leads: dict[str, str] = {}  # phone -> lead id, including leads the API created

    def logs_for(self, call_sid: str) -> list[dict[str, Any]]:
        with self.lock:
            return [log for log in self.logs if log.get("CallSessionId") == call_sid]

    def handle(self, seen: Seen) -> Reply:
        routes = {
            ("POST", "/v2/Telephony.svc/LogCall"),
            ("GET", "/v2/ProspectActivity.svc/ActivityTypes.Get"),
        }
        if (seen.method, seen.path) not in routes:
            return Reply(404, lsq_error("MXAPINotFoundException", "The API could not be found."))
        access = seen.headers.get("x-lsq-accesskey") or seen.query.get("accessKey")
        secret = seen.headers.get("x-lsq-secretkey") or seen.query.get("secretKey")
        if access != self.access_key or secret != self.secret_key:
            return Reply(
                401,
                lsq_error(
                    "MXUnAuthorizedAccessException",
                    "Invalid Access Key or Secret Key. Please check the API host for your account.",
                ),
            )
        if self.role != "Administrator":
            return Reply(
                500,
                lsq_error(
                    "MXUnAuthorizedAccessException",
                    "You do not have permission to access this API.",
                ),
            )
        if seen.method == "GET":
            return Reply(200, list(self.activity_types))
        self.expect(
            seen.headers.get("content-type", "").startswith("application/json"),
            "LogCall takes Content-Type: application/json",
        )
        body = seen.json
        self.expect(isinstance(body, dict), "LogCall takes a JSON object")
        for name in ("StartTime", "EndTime", "Direction"):
            if not body.get(name):
                return Reply(
                    500,
                    lsq_error("MXMandatoryAttributeMissingException", f"'{name}' is mandatory"),
                )
        lead_side = "SourceNumber" if body["Direction"] == "Inbound" else "DestinationNumber"
        if not body.get(lead_side) and not body.get("LeadId"):
            return Reply(
                500,
                lsq_error("MXMandatoryAttributeMissingException", f"'{lead_side}' is mandatory"),
            )
        require_fields(
            self,
            body,
            {
                "StartTime": str,
                "EndTime": str,
                "CallDuration": int,
                "Status": str,
                "Direction": str,
                "CallSessionId": str,
            },
        )
        for name in ("SourceNumber", "DestinationNumber", "DisplayNumber"):
            if name in body:
                self.expect(isinstance(body[name], str), f"{name} is a string")
        unknown = set(body) - FIELDS
        if unknown:
            raise Problem(f"LogCall has no fields {sorted(unknown)}")
        for name in ("StartTime", "EndTime"):
            self.expect(UTC_TEXT.fullmatch(body[name]), f"{name} must be UTC YYYY-MM-DD HH:MM:SS")
        self.expect(body["StartTime"] <= body["EndTime"], "EndTime before StartTime")
        self.expect(body["CallDuration"] >= 0, "CallDuration is seconds >= 0")
        self.expect(body["Direction"] in ("Inbound", "Outbound"), "Direction is Inbound/Outbound")
        self.expect(
            body["Status"] in ("Answered", "NotAnswered"), f"unexpected Status {body['Status']}"
        )
        if "UserId" in body and body["UserId"] not in self.users:
            return Reply(
                500, lsq_error("MXInvalidInputException", f"UserId {body['UserId']} does not exist")
            )
        activity = str(uuid.uuid4())
        with self.lock:
            number = body.get(lead_side)
            if number and not body.get("LeadId") and number not in self.leads:
                self.leads[number] = str(uuid.uuid4())  # LeadSquared creates the lead
            self.logs.append({**body, "ActivityId": activity})
        return Reply(200, {"Status": "Success", "Message": {"Id": activity}})
