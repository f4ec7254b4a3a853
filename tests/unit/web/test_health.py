"""/readyz: cheap whatever the keyspace, and only counts unless details are turned on."""

from __future__ import annotations

from collections.abc import Callable

import redis
from flask import Flask

from worker.jobs.circuit import Circuit, open_circuits
from worker.runtime import Runtime

SAFE = {"maxmemory_policy": "noeviction", "persistence": "aof", "wiped": False, "problems": 0}
DELAY = {"fetch_delay_seconds": 0.0, "fetch_delay_raised": False}  # FETCH_DELAY_SECONDS=0
SECRET_URL = "https://hooks.example.com/private/path?secret=whsec_abcdef123456"


def open_one(client: redis.Redis) -> Circuit:
    circuit = Circuit(client, "sink:crm-bridge")
    circuit.open(f"{SECRET_URL} answered 401 for call CA-secret-sid")
    return circuit


def commands_run(client: redis.Redis) -> int:
    stats = client.info("commandstats")
    return sum(int(v["calls"]) for k, v in stats.items() if k != "cmdstat_info")


def test_without_details_only_status_and_counts(
    make_app: Callable[..., Flask], redis_client: redis.Redis
) -> None:
    client = make_app().test_client()
    assert client.get("/readyz").get_json() == {
        "status": "ok", "redis": "ok", "open_circuits": 0, "spooled": 0, "redis_safety": SAFE,
        **DELAY,
    }
    open_one(redis_client)
    answer = client.get("/readyz")
    assert answer.status_code == 200
    assert answer.get_json() == {
        "status": "degraded", "redis": "ok", "open_circuits": 1, "spooled": 0,
        "redis_safety": SAFE, **DELAY,
    }
    text = answer.get_data(as_text=True)
    for leak in ("hooks.example.com", "private", "whsec", "CA-secret-sid", "crm-bridge", "401"):
        assert leak not in text
    assert client.get("/readyz?strict=1").status_code == 503


def test_details_behind_the_setting(
    make_app: Callable[..., Flask], redis_client: redis.Redis
) -> None:
    open_one(redis_client)
    body = make_app(READYZ_DETAILS="true").test_client().get("/readyz").get_json()
    assert body["open_circuits"] == 1
    reason = f"{SECRET_URL} answered 401 for call CA-secret-sid"
    assert body["problems"] == [f"sink:crm-bridge: {reason}"]


def test_details_for_an_operator_session(
    make_app: Callable[..., Flask], redis_client: redis.Redis
) -> None:
    open_one(redis_client)
    client = make_app(OPS_PASSWORD="operator-password-123").test_client(use_cookies=False)
    assert "problems" not in client.get("/readyz").get_json()
    forged = client.get("/readyz", headers={"Cookie": "exolegs_ops=forged"})
    assert "problems" not in forged.get_json()
    login = client.post("/ops/api/session",
                        json={"user": "ops", "password": "operator-password-123"})
    assert login.status_code == 200, login.get_json()
    cookie = login.headers["Set-Cookie"].split(";", 1)[0]
    # a monitor sends the console's cookie along (a browser would not: its path is /ops)
    body = client.get("/readyz", headers={"Cookie": cookie}).get_json()
    assert body["problems"] and "crm-bridge" in body["problems"][0]


def test_unreachable_redis_is_503_without_the_error_text(make_app: Callable[..., Flask]) -> None:
    app = make_app(REDIS_URL="redis://127.0.0.1:1/0")
    answer = app.test_client().get("/readyz")
    assert answer.status_code == 503
    assert answer.get_json() == {"status": "unavailable", "redis": "unreachable", "spooled": 0}


def test_a_closed_circuit_leaves_the_set(make_app: Callable[..., Flask],
                                         redis_client: redis.Redis) -> None:
    circuit = open_one(redis_client)
    assert list(open_circuits(redis_client)) == ["sink:crm-bridge"]
    runtime = Runtime(make_app().extensions["exolegs"].settings, client=redis_client)
    circuit.close(runtime.book)
    assert open_circuits(redis_client) == {}
    assert redis_client.scard("exolegs:circuits") == 0


def test_readyz_costs_the_same_few_commands_with_100k_unrelated_keys(
    make_app: Callable[..., Flask], redis_client: redis.Redis
) -> None:
    """It used to SCAN the whole keyspace: ~19k round trips at 200k keys."""
    client = make_app().test_client()
    open_one(redis_client)
    pipe = redis_client.pipeline(transaction=False)
    for start in range(0, 100_000, 5_000):
        pipe.mset({f"unrelated:{n}": "x" for n in range(start, start + 5_000)})
    pipe.mset({f"exolegs:circuit:sink:x{n}:probe": "1" for n in range(2_000)})
    pipe.execute()
    assert redis_client.dbsize() > 100_000
    client.get("/readyz")  # the app's first connection says HELLO and CLIENT SETINFO
    before = commands_run(redis_client)
    body = client.get("/readyz").get_json()
    used = commands_run(redis_client) - before
    assert body["open_circuits"] == 1
    assert used <= 3, used  # PING, SMEMBERS, MGET; the safety look and the fetch delay are cached


def test_an_evicting_redis_makes_readyz_degraded(
    make_app: Callable[..., Flask], redis_client: redis.Redis
) -> None:
    redis_client.config_set("maxmemory-policy", "allkeys-lru")
    try:
        body = make_app(READYZ_DETAILS="1").test_client().get("/readyz").get_json()
    finally:
        redis_client.config_set("maxmemory-policy", "noeviction")
    assert body["status"] == "degraded"
    assert body["redis_safety"]["maxmemory_policy"] == "allkeys-lru"
    assert body["redis_safety"]["problems"] == 1
    assert any("maxmemory-policy" in p for p in body["problems"])
