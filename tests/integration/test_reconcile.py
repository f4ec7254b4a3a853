"""Every call reaches every sink, callback or not: real web and worker processes, real Redis.

The fast versions of the fault-suite rows ``callbacks-lost`` and
``legs-never-ready`` (bench/faults.py): the simulator places calls, POSTs
their callbacks to the edge but drops a share, and the worker's sweeper
lists Calls.json and books the rest; or the legs never become ready and the
calls are delivered from their callbacks.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.conftest import CALLBACK_TOKEN
from tests.support.processes import Simulator, read_jsonl, start_web, start_worker, wait_for
from tests.support.redis_server import free_port
from worker.calls.simulator import SimulatorConfig, start_in_thread
from worker.jobs import JOBS
from worker.jobs.deadletters import DEAD


@pytest.fixture
def sim_late_legs() -> Iterator[Simulator]:
    server, url = start_in_thread(SimulatorConfig(legs_ready_after=10**9))
    yield Simulator(url)
    server.shutdown()


def _env(env: dict[str, str], sim: Simulator) -> dict[str, str]:
    config = SimulatorConfig()
    return {
        **env,
        "EXOTEL_BASE_URL": sim.url,
        "EXOTEL_ACCOUNT_SID": config.account_sid,
        "EXOTEL_API_KEY": config.api_key,
        "EXOTEL_API_TOKEN": config.api_token,
        "EXOTEL_TIMEOUT_SECONDS": "3",
        "EXOTEL_RATE_LIMIT": "50/second",
        "RECONCILE_RECENT_EVERY": "2s",
        "RECONCILE_GRACE": "0",
        "RETRY_MAX_ATTEMPTS": "2",
        "RETRY_BASE_SECONDS": "0.2",
        "RETRY_MAX_SECONDS": "0.5",
    }


def _by_sid(path: Path) -> dict[str, list[dict[str, object]]]:
    found: dict[str, list[dict[str, object]]] = {}
    for record in read_jsonl(path):
        found.setdefault(str(record["call_sid"]), []).append(record)
    return found


def test_callbacks_lost_every_call_reaches_every_sink_once(
    env: dict[str, str], simulator: Simulator, redis_client: redis.Redis, tmp_path: Path
) -> None:
    simulator.reset()
    sinks = [tmp_path / "a.jsonl", tmp_path / "b.jsonl"]
    run_env = {**_env(env, simulator), "SINKS": f"jsonl://{sinks[0]} jsonl://{sinks[1]}?name=b"}
    port = free_port()
    web = start_web(run_env, tmp_path / "web.log", port)
    worker = start_worker(run_env, tmp_path / "worker.log")
    try:
        sids = [f"lost-{n:03d}" for n in range(40)]
        placed = simulator.place(
            sids,
            callback_url=f"http://127.0.0.1:{port}/exotel/callback/{CALLBACK_TOKEN}",
            drop=0.3,
            seed=11,
        )
        dropped = set(placed["dropped"])
        assert dropped and len(dropped) < len(sids)
        for path in sinks:
            wait_for(lambda p=path: len(_by_sid(p)) >= len(sids), timeout=60)
        wait_for(lambda: int(redis_client.zcard(JOBS)) == 0, timeout=30)
        for path in sinks:
            got = _by_sid(path)
            assert sorted(got) == sorted(sids)
            assert all(len(records) == 1 for records in got.values())  # exactly once
            sources = Counter(
                (sid in dropped, records[0]["source"]) for sid, records in got.items()
            )
            assert sources == {
                (True, "reconcile"): len(dropped),
                (False, "callback"): len(sids) - len(dropped),
            }
    finally:
        worker.stop()
        web.stop()
        simulator.reset()  # its placed calls would be swept into the next test's sinks


def test_legs_never_ready_reach_the_sinks_from_the_callback(
    env: dict[str, str], sim_late_legs: Simulator, redis_client: redis.Redis, tmp_path: Path
) -> None:
    sink = tmp_path / "calls.jsonl"
    run_env = {**_env(env, sim_late_legs), "SINKS": f"jsonl://{sink}"}
    port = free_port()
    web = start_web(run_env, tmp_path / "web.log", port)
    worker = start_worker(run_env, tmp_path / "worker.log")
    try:
        sids = [f"nolegs-{n:02d}" for n in range(10)]
        sim_late_legs.place(
            sids, callback_url=f"http://127.0.0.1:{port}/exotel/callback/{CALLBACK_TOKEN}"
        )
        wait_for(lambda: len(_by_sid(sink)) >= len(sids), timeout=60)
        wait_for(lambda: int(redis_client.zcard(JOBS)) == 0, timeout=30)
        got = _by_sid(sink)
        assert sorted(got) == sids
        for records in got.values():
            assert len(records) == 1
            record = records[0]
            assert record["legs"] == "unavailable" and record["from"] == [] and record["to"] == []
            assert record["customer"] is not None and record["status"]
        assert int(redis_client.zcard(DEAD)) == 0
    finally:
        worker.stop()
        web.stop()
