"""The whole pipeline with a real Redis, a real `exolegs worker` process and the simulator."""

from __future__ import annotations

import time
from pathlib import Path

from flask.testing import FlaskClient

from tests.conftest import CALLBACK_TOKEN
from tests.support.processes import Proc, Simulator, read_jsonl, wait_for

URL = f"/exotel/callback/{CALLBACK_TOKEN}"


def terminal(call_sid: str) -> dict[str, str]:
    return {
        "CallSid": call_sid,
        "Status": "completed",
        "EventType": "terminal",
        "Direction": "outbound-api",
        "RecordingUrl": "https://recordings.exotel.com/acme/r.mp3",
    }


def records_for(path: Path, call_sid: str) -> list[dict[str, object]]:
    return [r for r in read_jsonl(path) if r["call_sid"] == call_sid]


def test_callback_becomes_one_jsonl_record(
    web: FlaskClient, worker: Proc, jsonl_path: Path, simulator: Simulator
) -> None:
    answer = web.post(URL, data=terminal("e2e-one"))
    assert answer.status_code == 200
    assert answer.get_json() == {"accepted": True, "call_sid": "e2e-one", "duplicate": False}
    records = wait_for(lambda: records_for(jsonl_path, "e2e-one"))
    assert len(records) == 1
    record = records[0]
    assert record["schema"] == "exolegs.call/v1"
    assert record["status"] == "completed"
    assert record["direction"] == "outbound"
    assert record["recording_url"] == "https://recordings.exotel.com/acme/r.mp3"
    assert record["from"] and record["to"]
    time.sleep(1)
    assert len(records_for(jsonl_path, "e2e-one")) == 1
    assert len(simulator.requests_for("e2e-one")) == 1


def test_two_10715_errors_then_success(
    web: FlaskClient, worker: Proc, jsonl_path: Path, simulator: Simulator
) -> None:
    simulator.script("e2e-retry", [{"status": 500, "code": 10715}, {"status": 500, "code": 10715}])
    assert web.post(URL, data=terminal("e2e-retry")).status_code == 200
    wait_for(lambda: records_for(jsonl_path, "e2e-retry"), timeout=30)
    assert len(simulator.requests_for("e2e-retry")) == 3
    assert "10715" in worker.output()


def test_429_retry_after_is_honoured(
    web: FlaskClient, worker: Proc, jsonl_path: Path, simulator: Simulator
) -> None:
    simulator.script("e2e-429", [{"status": 429, "code": 10724, "retry_after": 2}])
    assert web.post(URL, data=terminal("e2e-429")).status_code == 200
    wait_for(lambda: records_for(jsonl_path, "e2e-429"), timeout=30)
    first, second = simulator.requests_for("e2e-429")
    assert second - first >= 2.0


def test_three_identical_callbacks_fetch_once(
    web: FlaskClient, worker: Proc, jsonl_path: Path, simulator: Simulator
) -> None:
    answers = [web.post(URL, data=terminal("e2e-dup")).get_json() for _ in range(3)]
    assert [a["duplicate"] for a in answers] == [False, True, True]
    wait_for(lambda: records_for(jsonl_path, "e2e-dup"))
    time.sleep(1.5)
    assert len(simulator.requests_for("e2e-dup")) == 1
    assert len(records_for(jsonl_path, "e2e-dup")) == 1


def test_answered_event_fetches_nothing(
    web: FlaskClient, worker: Proc, jsonl_path: Path, simulator: Simulator
) -> None:
    answered = {"CallSid": "e2e-answered", "Status": "in-progress", "EventType": "answered"}
    answer = web.post(URL, data=answered)
    assert answer.status_code == 200 and answer.get_json()["accepted"] is True
    time.sleep(2)
    assert simulator.requests_for("e2e-answered") == []
    assert records_for(jsonl_path, "e2e-answered") == []


def test_refused_callbacks_fetch_nothing(
    web: FlaskClient, worker: Proc, jsonl_path: Path, simulator: Simulator
) -> None:
    wrong = web.post("/exotel/callback/not-the-token-000000", data=terminal("e2e-wrong"))
    assert wrong.status_code == 403
    missing = web.post(URL, data={"Status": "completed"})
    assert missing.status_code == 400 and "call sid" in missing.get_json()["error"]
    pathlike = web.post(URL, data=terminal("../../x"))
    assert pathlike.status_code == 400
    json_pathlike = web.post(URL, json={"CallSid": "../../x", "Status": "completed"})
    assert json_pathlike.status_code == 400
    time.sleep(2)
    assert simulator.legs_requests() == {}
    assert read_jsonl(jsonl_path) == []
