"""Every /ops/api answer and /metrics matches docs/openapi.yaml (status, headers, JSON body)."""

from __future__ import annotations

import json
from collections.abc import Callable

import redis
from flask import Flask

from tests.unit.web.conftest import URL, assert_conforms
from tests.unit.web.test_ops import PASSWORD, seed_call
from worker.jobs import deliver_id
from worker.jobs.deadletters import DEAD, dead_key

METRICS = "metrics-token-0123456789"


def seed_dead_letter(client: redis.Redis, call_sid: str = "CAdeadapi") -> str:
    job_id = deliver_id(call_sid, "jsonl")
    letter = {
        "job_id": job_id, "call_sid": call_sid, "sink": "jsonl", "reason": "retries exhausted",
        "attempts": 3, "last_error": "jsonl sink cannot open /x: refused for +919876543210",
        "first_attempt_at": 1.0, "last_attempt_at": 2.0, "failed_at": 3.0,
        "upstream_status": None, "upstream_code": None,
        "callback": {"From": "09876543210", "CallSid": call_sid},
    }  # fmt: skip
    client.set(dead_key(job_id), json.dumps(letter))
    client.zadd(DEAD, {job_id: 3.0})
    return job_id


def test_ops_api_and_metrics_match_the_spec(
    make_app: Callable[..., Flask], redis_client: redis.Redis
) -> None:
    app = make_app(OPS_PASSWORD=PASSWORD, METRICS_TOKEN=METRICS)
    client = app.test_client()

    def check(method: str, path: str, **kwargs: object) -> object:
        response = client.open(path, method=method, **kwargs)  # type: ignore[arg-type]
        assert_conforms(response, method, path.split("?")[0], _template(path))
        return response

    check("GET", "/ops/api/overview")  # 401 before login
    assert client.post("/ops/api/session", data="x").status_code == 415
    assert client.post("/ops/api/session", json=["ops"]).status_code == 401
    wrong = client.post("/ops/api/session", json={"user": "ops", "password": "nope-nope-nope"})
    assert wrong.status_code == 401
    login = client.post("/ops/api/session", json={"user": "ops", "password": PASSWORD})
    assert_conforms(login, "POST", "/ops/api/session")
    csrf = login.get_json()["csrf_token"]
    client.post(URL, data={"CallSid": "CAapi1", "Status": "completed"})
    seed_call(redis_client, "CAapi2")
    job_id = seed_dead_letter(redis_client)
    headers = {"X-CSRF-Token": csrf}
    for path in (
        "/ops/api/overview", "/ops/api/dead", "/ops/api/dead?sink=jsonl&older_than_hours=1",
        "/ops/api/dead?older_than_hours=x", "/ops/api/calls?q=CAapi1", "/ops/api/calls?q=3210",
        "/ops/api/calls/CAapi1", "/ops/api/calls/CAapi2", "/ops/api/calls/CAnone",
        "/ops/api/audit",
    ):  # fmt: skip
        check("GET", path)
    dead = client.get("/ops/api/dead").get_json()
    assert dead["count"] == 1 and "9876543210" not in json.dumps(dead)
    assert client.get("/ops/api/dead?account=default").get_json()["count"] == 1
    assert client.get("/ops/api/dead?account=other").get_json()["count"] == 0
    assert client.get("/ops/api/dead?code=404").get_json()["count"] == 0
    check("POST", "/ops/api/calls/CAapi2/reveal", json={"index": 0}, headers=headers)
    check("POST", "/ops/api/calls/CAapi2/reveal", json={"index": 99}, headers=headers)
    check("POST", "/ops/api/dead/purge", json={"filter": {"sink": "jsonl"}}, headers=headers)
    dry = client.post("/ops/api/dead/replay", json={"filter": {}}, headers=headers).get_json()
    assert dry == {"action": "replay", "filter": dry["filter"], "count": 1, "dry_run": True}
    check("POST", "/ops/api/dead/replay", json={"filter": {}, "confirm": 5}, headers=headers)
    assert client.get("/ops/api/dead").get_json()["count"] == 1  # a stale count does nothing
    check("POST", "/ops/api/dead/replay", json={"job_id": job_id}, headers=headers)
    check("POST", "/ops/api/dead/replay", json={"job_id": job_id}, headers=headers)  # 404
    check("POST", "/ops/api/dead/purge", json={"confirm": 0}, headers=headers)
    check("POST", "/ops/api/dead/purge", json=[1, 2], headers=headers)  # 400, not a 500
    check("POST", "/ops/api/dead/replay", json={"filter": "sink"}, headers=headers)
    bad_hours = {"filter": {"older_than_hours": "x"}}
    check("POST", "/ops/api/dead/replay", json=bad_hours, headers=headers)
    check("POST", "/ops/api/calls/CAapi2/reveal", json=["x"], headers=headers)
    check("POST", "/ops/api/dead/purge", json={"confirm": 0})  # no CSRF token: 403
    audit = client.get("/ops/api/audit").get_json()["entries"]
    assert [e["action"] for e in audit] == ["replay", "reveal"]
    metrics = client.get("/metrics", headers={"Authorization": f"Bearer {METRICS}"})
    assert metrics.status_code == 200 and metrics.mimetype == "text/plain"
    assert client.get("/metrics").headers["WWW-Authenticate"].startswith("Bearer ")
    check("DELETE", "/ops/api/session", headers=headers)
    check("GET", "/ops/api/overview")  # 401 again


def _template(path: str) -> str:
    parts = path.split("?")[0].split("/")
    if len(parts) >= 5 and parts[3] == "calls":
        parts[4] = "{call_sid}"
    return "/".join(parts)
