"""How a call's record and callbacks are kept in Redis: compact JSON, deflated.

Every call keeps its enriched record and its callbacks for
``RETENTION_HOURS``, so their size is what decides how many calls a day a
Redis plan holds (docs/benchmarks.md). Each value is compact JSON deflated
against a preset dictionary of the field names and values every record and
callback repeats, which takes a record from about 1.9 KB to about 0.5 KB.

The first byte says the format: ``{`` is plain JSON (values written before
this format, and what tests may write by hand), ``\\x01`` is version 1 of the
dictionary below. The dictionary can never change; a new one is a new version
byte, and the old ones stay readable.
"""

from __future__ import annotations

import json
import zlib
from typing import Any

_V1 = b"\x01"

# The strings a record (schema exolegs.call/v1) and a callback repeat, most
# frequent last: deflate finds matches anywhere in it.
_ZDICT_V1 = (
    b'"Legs":[{"Id":"","Status":"","OnCallDuration":"","AnsweredBy":null,'
    b'"DialWhomNumber":"","DialCallDuration":"","DialCallStatus":"","CallType":"",'
    b'"CallFrom":"","CallTo":"","CurrentTime":"","Created":"","flow_id":"","tenant_id":"",'
    b'"DialWhomUser":"","RecordingAvailableBy":"","ForwardedFrom":"","digits":"",'
    b'"event_type":"","call_sid":"","Passthru":"","CallStatus":"",'
    b'"EventType":"terminal","Status":"completed","Direction":"inbound","Direction":"outbound-api",'
    b'"From":"0","To":"0","StartTime":"20","EndTime":"20","ConversationDuration":"",'
    b'"CustomField":"","RecordingUrl":"https://s3-ap-southeast-1.amazonaws.com/'
    b'{"event":"terminal","status":"completed","fields":{"CallSid":"'
    b'"status":"no-answer","status":"busy","status":"failed","status":"canceled",'
    b'"kind":"sip","contact_uri":"sip:","role":"customer","legs":"unavailable",'
    b'"source":"reconcile","source":"backfill","direction":"inbound",'
    b'{"schema":"exolegs.call/v1","call_sid":"","account_sid":"","direction":"outbound",'
    b'"status":"completed","from":[{"sid":"","name":null,"contact_uri":"0","kind":"pstn",'
    b'"phone_e164":"+91","status":"completed","group_id":null,"group_name":null,'
    b'"role":"agent","started_at":"20","ended_at":"20","duration_seconds":}],'
    b'"to":[{"sid":"","name":"","contact_uri":"0","kind":"pstn","phone_e164":"+91",'
    b'"status":"completed","group_id":"","group_name":"","role":"customer",'
    b'"started_at":"20","ended_at":"20","duration_seconds":}],'
    b'"customer":{"contact_uri":"0","phone_e164":"+91"},'
    b'"agents":[{"name":null,"contact_uri":"0","status":"completed","group_name":null}],'
    b'"answered_by":{"sid":"","name":null,"contact_uri":"0"},"missed":false,"missed":true,'
    b'"started_at":"20","ended_at":"20","duration_seconds":,"recording_url":null,'
    b'"custom_field":null,"callback":{"CallSid":"","EventType":"terminal",'
    b'"Status":"completed","Direction":"outbound-api","From":"0","To":"0",'
    b'"StartTime":"20","EndTime":"20","ConversationDuration":"","CustomField":"",'
    b'"RecordingUrl":"https://"},"fetched_at":"20T:00+00:00","source":"callback",'
    b'"legs":"fetched","account":"default"}'
)


def dumps(value: Any) -> bytes:
    """``value`` as compact JSON, deflated against the dictionary (version byte first)."""
    return pack(json.dumps(value, separators=(",", ":"), default=str, ensure_ascii=False).encode())


def pack(text: bytes) -> bytes:
    """JSON text already encoded as :func:`dumps` would, deflated (version byte first)."""
    packer = zlib.compressobj(6, zlib.DEFLATED, -15, 8, zlib.Z_DEFAULT_STRATEGY, _ZDICT_V1)
    return _V1 + packer.compress(text) + packer.flush()


def loads(raw: bytes | str) -> Any:
    """What :func:`dumps` wrote, or plain JSON."""
    if isinstance(raw, str):
        return json.loads(raw)
    if raw[:1] == _V1:
        unpacker = zlib.decompressobj(-15, _ZDICT_V1)
        return json.loads(unpacker.decompress(raw[1:]) + unpacker.flush())
    return json.loads(raw)
