"""The stored form of records and callbacks: small, and every format stays readable."""

from __future__ import annotations

import json

from worker.calls import stored

RECORD = {
    "schema": "exolegs.call/v1",
    "call_sid": "c5a9e0d1f2b3a4c5d6e7f8a9b0c1d2e3",
    "status": "completed",
    "from": [{"sid": "d1", "name": None, "contact_uri": "08455733435", "kind": "pstn"}],
    "callback": {"CallSid": "c5a9e0d1f2b3a4c5d6e7f8a9b0c1d2e3", "From": "ñandú 0987"},
    "missed": False,
    "duration_seconds": 132,
}


def test_round_trip_and_much_smaller_than_json() -> None:
    raw = stored.dumps(RECORD)
    assert stored.loads(raw) == RECORD
    assert len(raw) < len(json.dumps(RECORD, separators=(",", ":"))) * 0.6


def test_plain_json_written_before_stays_readable() -> None:
    assert stored.loads(json.dumps(RECORD).encode()) == RECORD
    assert stored.loads(json.dumps(RECORD)) == RECORD
