"""``exolegs check``: the configuration with every secret masked, and what is wrong with it."""

from __future__ import annotations

import base64
import io
import logging
import subprocess
import sys
from collections.abc import Iterator

import pytest

from tests.support.redis_server import RedisServer, free_port, start_redis
from worker.checks import (
    EpochState,
    Persistence,
    RedisWatch,
    Watchdog,
    acknowledge_wipe,
    fingerprint,
    inspect_redis,
    run_check,
    security_findings,
    worker_start,
)
from worker.errors import SettingsError
from worker.settings import Settings

API_TOKEN = "exo-api-token-abcdefghij0123456789"
NEW_TOKEN = "callback-token-new-0123456789abcdef"
OLD_TOKEN = "callback-token-old-fedcba9876543210"
PASSWORD = "basic-pass-5678xyz-long"
DSN_KEY = "0123456789abcdef0123456789abcdef"
WEBHOOK_SECRET = "whsec_+/+/c2VjcmV0LWtlef/+IHBsdXM="
REDIS_PASSWORD = "redis-pass-4321"
NORTH_TOKEN = "north-exotel-token-0123456789"
NORTH_CALLBACK = "north-callback-token-abcdef0123"
SECRETS = [
    NORTH_TOKEN,
    NORTH_CALLBACK,
    API_TOKEN,
    base64.b64encode(f"exo-key-1:{API_TOKEN}".encode()).decode(),
    NEW_TOKEN,
    OLD_TOKEN,
    PASSWORD,
    base64.b64encode(f"exotel:{PASSWORD}".encode()).decode(),
    DSN_KEY,
    WEBHOOK_SECRET,
    REDIS_PASSWORD,
]


SIM: dict[str, str] = {}


@pytest.fixture(scope="module", autouse=True)
def exotel_simulator() -> Iterator[str]:
    """Exotel, faked: `exolegs check` makes one authenticated request per account."""
    from worker.calls.simulator import SimAccount, SimulatorConfig, start_in_thread

    north = SimAccount("acme_north", "k_north", NORTH_TOKEN)
    config = SimulatorConfig(
        account_sid="acme1", api_key="exo-key-1", api_token=API_TOKEN, accounts=(north,)
    )
    server, url = start_in_thread(config)
    SIM["url"] = url
    yield url
    server.shutdown()


def good_env(redis_url: str, tmp: str) -> dict[str, str]:
    return {
        "EXOTEL_BASE_URL": SIM["url"],
        "EXOTEL_ACCOUNT_SID": "acme1",
        "EXOTEL_API_KEY": "exo-key-1",
        "EXOTEL_API_TOKEN": API_TOKEN,
        "CALLBACK_TOKEN": NEW_TOKEN,
        "CALLBACK_BASIC_AUTH": f"exotel:{PASSWORD}",
        "CALLBACK_RATE_LIMIT": "600/minute",
        "SENTRY_DSN": f"https://{DSN_KEY}@o1.ingest.sentry.io/1",
        "REDIS_URL": redis_url,
        "SINKS": f"jsonl://{tmp}/calls.jsonl webhook+https://hooks.example.com/x?secret={WEBHOOK_SECRET}",
        "SPOOL_DIR": f"{tmp}/spool",
    }


def check(env: dict[str, str]) -> tuple[int, str]:
    out = io.StringIO()
    code = run_check(env, out=out)
    return code, out.getvalue()


def assert_masked(output: str) -> None:
    for secret in SECRETS:
        assert secret not in output, f"{secret[:8]}... printed:\n{output}"


def test_a_good_configuration_prints_masked_and_exits_0(
    redis_server: RedisServer, tmp_path: object
) -> None:
    code, output = check(good_env(redis_server.url, str(tmp_path)))
    assert code == 0, output
    assert output.rstrip().endswith("configuration OK")
    assert f"1 token(s): *** ({len(NEW_TOKEN)} chars, {fingerprint(NEW_TOKEN)})" in output
    assert "exotel:***" in output
    assert "secret=***" in output
    assert "*** (host o1.ingest.sentry.io)" in output
    assert "600/minute" in output
    assert_masked(output)


def test_every_account_is_validated_and_makes_one_authenticated_call(
    redis_server: RedisServer, tmp_path: object
) -> None:
    import json

    north = {
        "sid": "acme_north",
        "api_key": "k_north",
        "api_token": "${NORTH_EXOTEL_TOKEN}",
        "base_url": SIM["url"],
        "callback_tokens": [NORTH_CALLBACK],
        "sinks": "memory://north",
    }
    env = good_env(redis_server.url, str(tmp_path))
    env.update(EXOTEL_ACCOUNTS=json.dumps({"north": north}), NORTH_EXOTEL_TOKEN=NORTH_TOKEN)
    code, output = check(env)
    assert code == 0, output
    assert "ok: account default: credentials accepted by 127.0.0.1" in output
    assert "ok: account north: credentials accepted by 127.0.0.1" in output
    north_row = next(line for line in output.splitlines() if line.startswith("account north "))
    assert north_row.split(None, 2)[2].startswith("sid acme_north, key k_north, token ***")
    assert fingerprint(NORTH_CALLBACK) in output
    assert_masked(output)

    env["NORTH_EXOTEL_TOKEN"] = "wrong-token-for-north-000"
    code, output = check(env)
    assert code == 1
    problems = [line for line in output.splitlines() if line.startswith("problem: ")]
    assert len(problems) == 1, output
    assert problems[0].startswith("problem: EXOTEL_ACCOUNTS: account north (acme_north): ")
    assert "401" in problems[0] and "wrong-token-for-north-000" not in output
    assert "ok: account default" in output


def test_problems_are_listed_masked_and_exit_1(tmp_path: object) -> None:
    env = good_env(f"redis://:{REDIS_PASSWORD}@127.0.0.1:{free_port()}/0", str(tmp_path))
    env.update(
        CALLBACK_TOKEN=f"{NEW_TOKEN},{OLD_TOKEN}",
        CALLBACK_ALLOWED_IPS="0.0.0.0/0",
        SINKS=f"webhook+https://hooks.example.com/x?secret={WEBHOOK_SECRET} nosuchsink://x",
    )
    code, output = check(env)
    assert code == 1
    problems = [line for line in output.splitlines() if line.startswith("problem: ")]
    assert any("REDIS_URL: redis://:***@127.0.0.1" in p and "unreachable" in p for p in problems)
    assert any("CALLBACK_ALLOWED_IPS: 0.0.0.0/0 allows every address" in p for p in problems)
    assert any("nosuchsink" in p for p in problems), output
    assert "note: CALLBACK_TOKEN: 2 tokens accepted" in output
    assert fingerprint(NEW_TOKEN) in output and fingerprint(OLD_TOKEN) in output
    assert_masked(output)


def test_a_bad_value_is_one_problem_line_without_the_secret() -> None:
    env = {"CALLBACK_TOKEN": "short", "EXOTEL_API_TOKEN": API_TOKEN}
    code, output = check(env)
    assert code == 1
    assert output.startswith("problem: ")
    assert len(output.strip().splitlines()) == 1
    assert "short" not in output and API_TOKEN not in output


def test_security_findings() -> None:
    def findings(env: dict[str, str], process_env: dict[str, str]) -> tuple[list[str], list[str]]:
        settings = Settings.from_env({"CALLBACK_TOKEN": NEW_TOKEN, **env}, dotenv=False)
        return security_findings(settings, process_env)

    heroku, _ = findings({"CALLBACK_ALLOWED_IPS": "203.0.113.0/24"}, {"DYNO": "web.1"})
    assert any("TRUSTED_PROXIES: 0 on Heroku" in p for p in heroku)
    behind_router, notes = findings(
        {"CALLBACK_ALLOWED_IPS": "203.0.113.0/24", "TRUSTED_PROXIES": "1", "DYNO": "web.1"},
        {"DYNO": "web.1"},
    )
    assert behind_router == []
    problems, notes = findings(
        {"CALLBACK_ALLOWED_IPS": "203.0.113.0/24", "CALLBACK_RATE_LIMIT": "5/second"}, {}
    )
    assert problems == [] and any("CALLBACK_RATE_LIMIT has no effect" in n for n in notes)
    _, open_notes = findings({}, {})
    assert any("neither CALLBACK_ALLOWED_IPS nor CALLBACK_RATE_LIMIT" in n for n in open_notes)
    v6, _ = findings({"CALLBACK_ALLOWED_IPS": "::/0"}, {})
    assert v6 and "::/0 allows every address" in v6[0]


def test_fingerprints_tell_tokens_apart_without_revealing_them() -> None:
    assert fingerprint(NEW_TOKEN) != fingerprint(OLD_TOKEN)
    assert NEW_TOKEN not in fingerprint(NEW_TOKEN)
    assert fingerprint(NEW_TOKEN) == fingerprint(NEW_TOKEN)


def test_the_cli_command_exits_1_and_masks(redis_server: RedisServer, tmp_path: object) -> None:
    env = good_env(redis_server.url, str(tmp_path))
    env["CALLBACK_ALLOWED_IPS"] = "0.0.0.0/0"
    result = subprocess.run(
        [sys.executable, "-m", "worker.cli", "check"],
        env={"PATH": "/usr/bin:/bin", **env},
        capture_output=True,
        text=True,
        timeout=60,
        cwd=str(tmp_path),
        check=False,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "problem: CALLBACK_ALLOWED_IPS" in result.stdout
    assert_masked(result.stdout + result.stderr)


@pytest.mark.parametrize("variable", ["CALLBACK_TOKEN", "EXOTEL_API_TOKEN"])
def test_cli_problem_lines_never_echo_the_secret(variable: str, tmp_path: object) -> None:
    env = {
        "CALLBACK_TOKEN": NEW_TOKEN,
        variable: "bad token with spaces " + API_TOKEN,
        "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",  # never a Redis we did not start
    }
    env.setdefault("EXOTEL_ACCOUNT_SID", "acme1")
    env.setdefault("EXOTEL_API_KEY", "k")
    _, output = check(env)
    assert API_TOKEN not in output


# ------------------------------------------------------------ Redis safety
@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A Redis of this test's own, whose settings it may change."""
    server = start_redis()
    yield server
    server.stop()


def test_a_durable_noeviction_redis_is_safe(own_redis: RedisServer) -> None:
    safety = inspect_redis(own_redis.client())
    assert safety.safe and not safety.evicting
    assert (safety.eviction_policy, safety.persistence) == ("noeviction", Persistence.AOF)
    assert safety.summary() == {
        "maxmemory_policy": "noeviction",
        "persistence": "aof",
        "wiped": False,
    }


@pytest.mark.parametrize("policy", ["volatile-lru", "allkeys-lru", "allkeys-random"])
def test_an_evicting_redis_is_a_problem_that_says_how_to_fix_it(
    own_redis: RedisServer, policy: str, tmp_path: object
) -> None:
    own_redis.client().config_set("maxmemory-policy", policy)
    safety = inspect_redis(own_redis.client())
    assert safety.evicting and not safety.safe
    [problem] = safety.problems
    assert problem.setting == "maxmemory-policy"
    assert policy in problem.message
    assert "heroku redis:maxmemory <addon> --policy noeviction" in problem.message
    code, output = check(good_env(own_redis.url, str(tmp_path)))
    assert code == 1
    assert f"problem: maxmemory-policy: is {policy}" in output
    with pytest.raises(SettingsError, match=r"^maxmemory-policy: is "):
        worker_start(own_redis.client())


def test_persistence_off_is_reported_not_refused(own_redis: RedisServer, tmp_path: object) -> None:
    client = own_redis.client()
    client.config_set("appendonly", "no")
    client.config_set("save", "")
    safety = inspect_redis(client)
    assert safety.persistence is Persistence.OFF and safety.safe
    assert [w.setting for w in safety.warnings] == ["appendonly", "Redis data"]
    code, output = check(good_env(own_redis.url, str(tmp_path)))
    assert code == 0, output
    assert "warning: appendonly: persistence is off" in output
    client.config_set("save", "3600 1")
    assert inspect_redis(client).persistence is Persistence.RDB


def test_a_wiped_redis_is_noticed_by_every_process_until_acknowledged(
    own_redis: RedisServer, tmp_path: object
) -> None:
    client = own_redis.client()
    assert inspect_redis(client).epoch_state is EpochState.MISSING  # `check` only looks
    worker, edge = RedisWatch(client), RedisWatch(own_redis.client())
    assert worker.check().epoch_state is EpochState.CREATED
    assert edge.check().epoch_state is EpochState.OK
    assert worker.epoch == edge.epoch
    client.flushall()  # or a failover to an empty replica
    late = RedisWatch(own_redis.client())  # a process started after the wipe
    assert late.check().epoch_state is EpochState.CREATED  # it cannot know by itself
    noticed = worker.check()
    assert noticed.epoch_state is EpochState.WIPED and not noticed.safe
    assert "Redis was wiped" in str(noticed.problems[0])
    assert noticed.summary()["wiped"] is True
    # Everyone else now says so too, including a one-off `exolegs check`.
    assert edge.check().epoch_state is EpochState.WIPED
    assert late.check().epoch_state is EpochState.WIPED
    code, output = check(good_env(own_redis.url, str(tmp_path)))
    assert code == 1 and "problem: Redis data: Redis was wiped" in output
    assert acknowledge_wipe(client)
    assert worker.check().safe and edge.check().safe and late.check().safe
    assert check(good_env(own_redis.url, str(tmp_path)))[0] == 0


def test_the_check_clears_a_wipe_notice_on_request(own_redis: RedisServer, tmp_path: str) -> None:
    watch = RedisWatch(own_redis.client())
    watch.check()
    own_redis.client().flushall()
    watch.check()
    env = good_env(own_redis.url, str(tmp_path))
    cli = [sys.executable, "-m", "worker.cli", "check"]
    run = {"env": {"PATH": "/usr/bin:/bin", **env}, "capture_output": True, "text": True,
           "timeout": 60, "cwd": str(tmp_path), "check": False}  # fmt: skip
    assert subprocess.run(cli, **run).returncode == 1  # type: ignore[call-overload]
    acked = subprocess.run([*cli, "--ack-wipe"], **run)  # type: ignore[call-overload]
    assert acked.returncode == 0, acked.stdout
    assert acked.stdout.startswith("wipe notice cleared")


def test_a_running_worker_says_loudly_once_that_redis_was_wiped(
    own_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    announced: list[int] = []
    dog = Watchdog(worker_start(own_redis.client()), chores=[lambda: announced.append(1)])
    with caplog.at_level(logging.WARNING, logger="exolegs.checks"):
        assert dog.look() is not None and dog.look() is not None
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
        own_redis.client().flushall()
        for _ in range(3):
            dog.look()
    [critical] = [r.getMessage() for r in caplog.records if r.levelno == logging.CRITICAL]
    assert "Redis was wiped" in critical
    assert len(announced) == 5
    own_redis.client().config_set("maxmemory-policy", "allkeys-lru")
    with caplog.at_level(logging.CRITICAL, logger="exolegs.checks"):
        dog.look()
    assert "maxmemory-policy: is allkeys-lru" in caplog.records[-1].getMessage()
