"""A fake LeadSquared telephony call-log API (``POST /v2/Telephony.svc/LogCall``).

Checks the keys (``x-LSQ-AccessKey``/``x-LSQ-SecretKey`` headers, or the
``accessKey``/``secretKey`` query the docs also show), the JSON fields of the
Generic Telephony Connector call log (numbers, UTC ``YYYY-MM-DD HH:MM:SS``
times, seconds, Status, Direction, CallSessionId) and answers with
LeadSquared's envelope: ``{"Status": "Success", "Message": {...}}`` or
``{"Status": "Error", "ExceptionType": ..., "ExceptionMessage": ...}``.
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

    def logs_for(self, call_sid: str) -> list[dict[str, Any]]:
        with self.lock:
            return [log for log in self.logs if log.get("CallSessionId") == call_sid]

    def handle(self, seen: Seen) -> Reply:
        routes = {
            ("POST", "/v2/Telephony.svc/LogCall"),
            ("GET", "/v2/LeadManagement.svc/LeadsMetaData.Get"),
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
        if seen.method == "GET":  # the lead fields: an array of {SchemaName, DisplayName, ...}
            return Reply(
                200,
                [
                    {"SchemaName": "ProspectID", "DisplayName": "Lead Id", "DataType": "String"},
                    {"SchemaName": "Phone", "DisplayName": "Phone Number", "DataType": "Phone"},
                ],
            )
        self.expect(
            seen.headers.get("content-type", "").startswith("application/json"),
            "LogCall takes Content-Type: application/json",
        )
        body = seen.json
        require_fields(
            self,
            body,
            {
                "SourceNumber": str,
                "DestinationNumber": str,
                "StartTime": str,
                "EndTime": str,
                "CallDuration": int,
                "Status": str,
                "Direction": str,
                "CallSessionId": str,
            },
        )
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
                400, lsq_error("MXInvalidInputException", f"UserId {body['UserId']} does not exist")
            )
        activity = str(uuid.uuid4())
        with self.lock:
            self.logs.append({**body, "ActivityId": activity})
        return Reply(200, {"Status": "Success", "Message": {"Id": activity}})
