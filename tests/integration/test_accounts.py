"""Three Exotel accounts in one deployment: a real worker, real Redis, the simulator.

The simulator serves three account sids, each with its own key and token;
each account has its own callback token and its own sinks, and two of them
share one more sink. The token in the callback URL alone says whose call it
is.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from flask.testing import FlaskClient

from tests.support.processes import Proc, read_jsonl, start_worker, wait_for
from worker.calls.simulator import SimAccount, SimulatorConfig, start_in_thread
from worker.settings import Settings

ACCOUNTS = {
    "north": SimAccount("acme_north", "key_north", "token-north-0123456789"),
    "south": SimAccount("acme_south", "key_south", "token-south-0123456789"),
    "east": SimAccount("acme_east", "key_east", "token-east-0123456789"),
}
CALLBACK = {name: f"{name}-callback-token-0123456789" for name in ACCOUNTS}


@pytest.fixture
def three(
    env: dict[str, str], redis_client, tmp_path: Path
) -> Iterator[tuple[dict[str, str], str]]:  # type: ignore[no-untyped-def]
    server, url = start_in_thread(SimulatorConfig(accounts=tuple(ACCOUNTS.values())))
    accounts = {
        name: {
            "sid": sim.sid,
            "api_key": sim.api_key,
            "api_token": f"${{{name.upper()}_EXOTEL_TOKEN}}",
            "base_url": url,
            "callback_tokens": [CALLBACK[name]],
        }
        for name, sim in ACCOUNTS.items()
    }
    accounts["north"]["sinks"] = [f"jsonl://{tmp_path}/north.jsonl?name=north"]
    shared = f"jsonl://{tmp_path}/shared.jsonl?name=shared"
    accounts["south"]["sinks"] = [f"jsonl://{tmp_path}/south.jsonl?name=south", shared]
    accounts["east"]["sinks"] = [f"jsonl://{tmp_path}/east.jsonl?name=east", shared]
    full = {
        **{k: v for k, v in env.items() if k != "CALLBACK_TOKEN"},
        "EXOTEL_ACCOUNTS": json.dumps(accounts),
        "EXOTEL_TIMEOUT_SECONDS": "3",
        **{f"{name.upper()}_EXOTEL_TOKEN": sim.api_token for name, sim in ACCOUNTS.items()},
    }
    yield full, url
    server.shutdown()


@pytest.fixture
def worker3(three: tuple[dict[str, str], str], tmp_path: Path) -> Iterator[Proc]:
    proc = start_worker(three[0], tmp_path / "worker.log")
    yield proc
    proc.stop()


@pytest.fixture
def web3(three: tuple[dict[str, str], str]) -> Iterator[FlaskClient]:
    from web.app import create_app

    app = create_app(Settings.from_env(three[0], dotenv=False))
    with app.test_client() as client:
        yield client
    app.extensions["exolegs"].drainer.stop()


def post(web: FlaskClient, account: str, call_sid: str, **extra: str) -> None:
    data = {"CallSid": call_sid, "Status": "completed", "EventType": "terminal", **extra}
    answer = web.post(f"/exotel/callback/{CALLBACK[account]}", data=data)
    assert answer.status_code == 200, answer.get_json()


def test_three_accounts_each_reach_their_own_sinks(
    three: tuple[dict[str, str], str],
    web3: FlaskClient,
    worker3: Proc,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    _env, sim_url = three
    calls = {"north": ["n1", "n2", "same"], "south": ["s1", "same"], "east": ["e1", "e2"]}
    with caplog.at_level(logging.WARNING, logger="exolegs.web"):
        for account, sids in calls.items():
            for sid in sids:
                post(web3, account, sid)
        # The payload claims another account: logged, but the URL decides.
        post(web3, "north", "n3", AccountSid="acme_south")
    calls["north"].append("n3")
    assert any(
        "n3 arrived on account north's callback URL" in r.getMessage()
        and "AccountSid=acme_south" in r.getMessage()
        for r in caplog.records
    )
    # A token no account has is refused; nothing is booked for it.
    wrong = web3.post("/exotel/callback/nobody-callback-token-0123456789", data={"CallSid": "x1"})
    assert wrong.status_code == 403

    def sink(name: str) -> list[dict[str, object]]:
        return read_jsonl(tmp_path / f"{name}.jsonl")

    expected_shared = len(calls["south"]) + len(calls["east"])
    wait_for(
        lambda: (
            all(len(sink(a)) >= len(s) for a, s in calls.items())
            and len(sink("shared")) >= expected_shared
        ),
        timeout=60,
    )
    time.sleep(1.5)  # anything delivered twice would show up now

    for account, sids in calls.items():
        records = sink(account)
        assert sorted(str(r["call_sid"]) for r in records) == sorted(sids)
        assert {r["account"] for r in records} == {account}
        assert {r["account_sid"] for r in records} == {ACCOUNTS[account].sid}
    shared = Counter((str(r["account"]), str(r["call_sid"])) for r in sink("shared"))
    assert shared == Counter({(a, sid): 1 for a in ("south", "east") for sid in calls[a]}), (
        "the shared sink gets each account's calls once, and north's none"
    )
    # Each account's calls were fetched with its own credentials, once each.
    log = requests.get(f"{sim_url}/_sim/requests", timeout=5).json()
    assert log["by_account"] == {ACCOUNTS[a].sid: {"200": len(sids)} for a, sids in calls.items()}
    assert not read_jsonl(Path(_env["SINKS"].removeprefix("jsonl://")))  # the global sink
