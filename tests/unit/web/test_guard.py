"""The guard: client address behind proxies, allow-list, rate limit, token, Basic, their order."""

from __future__ import annotations

import base64
import hmac
import ipaddress
from collections.abc import Callable
from typing import Any

import pytest
import redis
from flask import Flask

from tests.conftest import CALLBACK_TOKEN
from tests.support.redis_server import RedisServer, free_port
from tests.unit.web.conftest import OLD_TOKEN, URL, state_keys
from web import guard as guard_module
from web.guard import (
    FORBIDDEN,
    NOT_ALLOWED,
    UNAUTHORIZED,
    Guard,
    client_address,
    limit_key,
    parse_address,
)
from worker.jobs.ratelimit import RateLimiter
from worker.settings import Settings

TERMINAL = {"CallSid": "guard-call", "Status": "completed", "EventType": "terminal"}


def settings_for(**env: str) -> Settings:
    return Settings.from_env({"CALLBACK_TOKEN": CALLBACK_TOKEN, **env}, dotenv=False)


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def environ(remote: str = "127.0.0.1", xff: str | None = None, **extra: str) -> dict[str, Any]:
    env: dict[str, Any] = {"REMOTE_ADDR": remote, **extra}
    if xff is not None:
        env["HTTP_X_FORWARDED_FOR"] = xff
    return env


# ----------------------------------------------------------- client address
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("203.0.113.7", "203.0.113.7"),
        (" 203.0.113.7 ", "203.0.113.7"),
        ("203.0.113.7:5123", "203.0.113.7"),
        ("2001:db8::1", "2001:db8::1"),
        ("[2001:db8::1]:443", "2001:db8::1"),
        ("::ffff:203.0.113.7", "203.0.113.7"),
        ("", None),
        ("unknown", None),
        ("203.0.113.300", None),
        ("[2001:db8::1", None),
        ("1" * 100, None),
    ],
)
def test_parse_address(text: str, expected: str | None) -> None:
    found = parse_address(text)
    assert (str(found) if found else None) == expected


def hops(n: int, proxies: str = "10.0.0.0/8", **env: str) -> Settings:
    extra = {"TRUSTED_PROXIES": str(n), "TRUSTED_PROXY_IPS": proxies} if n else {}
    return settings_for(**extra, **env)


def test_without_trusted_proxies_x_forwarded_for_is_ignored() -> None:
    forged = environ("198.51.100.9", xff="203.0.113.7")
    assert str(client_address(forged, hops(0))) == "198.51.100.9"


def test_one_proxy_takes_the_rightmost_entry() -> None:
    # Heroku's router appends the address it saw; anything left of it is the client's say-so.
    env = environ("10.0.0.1", xff="203.0.113.7, 198.51.100.9")
    assert str(client_address(env, hops(1))) == "198.51.100.9"


def test_two_proxies_take_the_second_from_the_right() -> None:
    env = environ("10.0.0.1", xff="1.1.1.1, 203.0.113.7, 10.0.0.2")
    assert str(client_address(env, hops(2))) == "203.0.113.7"


def test_fewer_entries_than_proxies_falls_back_to_the_peer() -> None:
    env = environ("10.0.0.9", xff="203.0.113.7")
    assert str(client_address(env, hops(2))) == "10.0.0.9"
    assert str(client_address(environ("10.0.0.9"), hops(1))) == "10.0.0.9"


def test_garbage_in_the_trusted_position_is_unknown() -> None:
    assert client_address(environ("10.0.0.1", xff="203.0.113.7, nonsense"), hops(1)) is None
    assert client_address({"REMOTE_ADDR": ""}, hops(0)) is None
    assert client_address({}, hops(0)) is None


def test_x_forwarded_for_from_a_peer_that_is_not_a_trusted_proxy_is_ignored() -> None:
    """A client connecting directly cannot pick its address by writing the header."""
    settings = hops(1, "10.0.0.0/8, 2001:db8:ffff::/48")
    direct = environ("198.51.100.9", xff="203.0.113.7")
    assert str(client_address(direct, settings)) == "198.51.100.9"
    assert str(client_address(environ("2001:db8:ffff::2", xff="203.0.113.7"), settings)) == (
        "203.0.113.7"
    )
    assert str(client_address(environ("2001:db8:fffe::2", xff="203.0.113.7"), settings)) == (
        "2001:db8:fffe::2"
    )
    single = hops(1, "192.0.2.10")
    assert str(client_address(environ("192.0.2.10", xff="203.0.113.7"), single)) == "203.0.113.7"
    assert str(client_address(environ("192.0.2.11", xff="203.0.113.7"), single)) == "192.0.2.11"


def test_proxy_hops_need_the_proxies_addresses_except_on_heroku() -> None:
    from worker.errors import SettingsError

    with pytest.raises(SettingsError, match="TRUSTED_PROXY_IPS"):
        settings_for(TRUSTED_PROXIES="1")
    with pytest.raises(SettingsError, match="TRUSTED_PROXY_IPS"):
        settings_for(TRUSTED_PROXIES="1", TRUSTED_PROXY_IPS="10.0.0.0/33")
    # Heroku: only the router can open a connection to a dyno, so any peer is the router.
    heroku = settings_for(TRUSTED_PROXIES="1", DYNO="web.1")
    assert str(client_address(environ("10.9.8.7", xff="203.0.113.7"), heroku)) == "203.0.113.7"


def test_forged_addresses_cannot_dodge_the_rate_limit(redis_client: redis.Redis) -> None:
    """Changing a forged X-Forwarded-For each time neither resets the limit nor adds keys."""
    guard = limited_guard(redis_client, "3/minute", TRUSTED_PROXIES="1",
                          TRUSTED_PROXY_IPS="10.0.0.0/8")
    before = set(redis_client.keys("exolegs:bucket:*"))
    answers = [guard.check(environ("198.51.100.9", xff=f"203.0.113.{n}"), CALLBACK_TOKEN)
               for n in range(10)]
    assert [a is None for a in answers] == [True] * 3 + [False] * 7
    assert len(set(redis_client.keys("exolegs:bucket:*")) - before) == 1


def test_ipv6_clients_share_a_bucket_per_64() -> None:
    one = limit_key(ipaddress.ip_address("2001:db8:1:2::1"))
    two = limit_key(ipaddress.ip_address("2001:db8:1:2:ffff::9"))
    other = limit_key(ipaddress.ip_address("2001:db8:1:3::1"))
    assert one == two != other
    assert limit_key(ipaddress.ip_address("203.0.113.7")) == "callback-client:203.0.113.7"
    assert limit_key(None) == "callback-client:unknown"


# -------------------------------------------------------------------- token
def test_every_configured_token_is_accepted_for_rotation() -> None:
    guard = Guard(settings_for(CALLBACK_TOKEN=f"{CALLBACK_TOKEN},{OLD_TOKEN}"))
    assert guard.token_ok(CALLBACK_TOKEN)
    assert guard.token_ok(OLD_TOKEN)
    for wrong in ("", CALLBACK_TOKEN[:-1], CALLBACK_TOKEN + "x", CALLBACK_TOKEN.upper(),
                  f"{CALLBACK_TOKEN},{OLD_TOKEN}", "\udcff" * 20, "é" * 30):
        assert not guard.token_ok(wrong), wrong


def test_token_check_compares_every_token_in_equal_length_digests(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No early exit on a match and nothing that depends on the tokens' lengths."""
    guard = Guard(settings_for(CALLBACK_TOKEN=f"{CALLBACK_TOKEN},{OLD_TOKEN}"))
    compared: list[tuple[int, int]] = []
    real = hmac.compare_digest

    def recording(a: bytes, b: bytes) -> bool:
        compared.append((len(a), len(b)))
        return real(a, b)

    monkeypatch.setattr("web.guard.hmac.compare_digest", recording)
    for token in (CALLBACK_TOKEN, OLD_TOKEN, "x", "y" * 500):
        compared.clear()
        guard.token_ok(token)
        assert compared == [(32, 32), (32, 32)]


# -------------------------------------------------------------------- Basic
@pytest.mark.parametrize(
    ("header", "ok"),
    [
        (basic("exotel", "s3cret-pass"), True),
        ("basic " + basic("exotel", "s3cret-pass")[6:], True),
        (basic("exotel", "wrong"), False),
        (basic("other", "s3cret-pass"), False),
        (basic("exotel", "s3cret-pass") + "AAAA", False),
        ("Bearer " + basic("exotel", "s3cret-pass")[6:], False),
        ("Basic !!!notbase64", False),
        ("Basic ", False),
        ("Basic " + "A" * 5000, False),
        ("Basic " + base64.b64encode(b"\xff\xfe:\x00").decode(), False),
        ("Basic é", False),
        (None, False),
        ("", False),
    ],
)
def test_basic_auth(header: str | None, ok: bool) -> None:
    guard = Guard(settings_for(CALLBACK_BASIC_AUTH="exotel:s3cret-pass"))
    assert guard.basic_ok(header) is ok


def test_basic_is_not_required_when_unset() -> None:
    assert Guard(settings_for()).basic_ok(None)


# -------------------------------------------------------------- the order
def test_wrong_token_is_403_before_basic_is_considered() -> None:
    guard = Guard(settings_for(CALLBACK_BASIC_AUTH="exotel:s3cret-pass"))
    assert guard.check(environ(), "not-the-token-000000") is FORBIDDEN
    assert guard.check(environ(), CALLBACK_TOKEN) is UNAUTHORIZED
    right = environ(HTTP_AUTHORIZATION=basic("exotel", "s3cret-pass"))
    assert guard.check(right, CALLBACK_TOKEN) is None
    assert ("WWW-Authenticate", guard_module.REALM) in UNAUTHORIZED.headers


def test_allow_list_refuses_others_even_with_the_right_token() -> None:
    guard = Guard(settings_for(CALLBACK_ALLOWED_IPS="203.0.113.0/24, 2001:db8::/32"))
    assert guard.check(environ("203.0.113.9"), CALLBACK_TOKEN) is None
    assert guard.check(environ("2001:db8::5"), CALLBACK_TOKEN) is None
    assert guard.check(environ("::ffff:203.0.113.9"), CALLBACK_TOKEN) is None
    assert guard.check(environ("198.51.100.1"), CALLBACK_TOKEN) is NOT_ALLOWED
    assert guard.check(environ("garbage"), CALLBACK_TOKEN) is NOT_ALLOWED
    # listed but the wrong token: still refused, by the token check
    assert guard.check(environ("203.0.113.9"), "nope-nope-nope-nope") is FORBIDDEN


def test_forged_x_forwarded_for_cannot_pass_the_allow_list() -> None:
    direct = Guard(settings_for(CALLBACK_ALLOWED_IPS="203.0.113.0/24"))
    forged = environ("198.51.100.1", xff="203.0.113.9")
    assert direct.check(forged, CALLBACK_TOKEN) is NOT_ALLOWED
    behind_router = Guard(settings_for(CALLBACK_ALLOWED_IPS="203.0.113.0/24", TRUSTED_PROXIES="1",
                                       TRUSTED_PROXY_IPS="10.0.0.0/8"))
    # the client forged the first entry; the router appended the real address
    spoof = environ("10.1.2.3", xff="203.0.113.9, 198.51.100.1")
    assert behind_router.check(spoof, CALLBACK_TOKEN) is NOT_ALLOWED
    real = environ("10.1.2.3", xff="198.51.100.1, 203.0.113.9")
    assert behind_router.check(real, CALLBACK_TOKEN) is None


def limited_guard(client: redis.Redis, rate: str = "3/minute", **env: str) -> Guard:
    settings = settings_for(CALLBACK_RATE_LIMIT=rate, **env)
    return Guard(settings, limiter=RateLimiter(client))


def test_rate_limit_runs_before_the_token_so_guessing_is_throttled(
    redis_client: redis.Redis,
) -> None:
    guard = limited_guard(redis_client)
    answers = [guard.check(environ("198.51.100.1"), f"guess-{n:016d}") for n in range(5)]
    assert answers[:3] == [FORBIDDEN] * 3
    for refusal in answers[3:]:
        assert refusal is not None and refusal.status == 429
        retry_after = dict(refusal.headers)["Retry-After"]
        assert 1 <= int(retry_after) <= 21  # one slot of 3/minute is 20 s
    # even the right token waits now; another client does not
    throttled = guard.check(environ("198.51.100.1"), CALLBACK_TOKEN)
    assert throttled is not None and throttled.status == 429
    assert guard.check(environ("198.51.100.2"), CALLBACK_TOKEN) is None


def test_the_limit_allows_a_full_period_at_once_then_the_rate(redis_client: redis.Redis) -> None:
    guard = limited_guard(redis_client, "10/minute")
    results = [guard.check(environ("198.51.100.1"), CALLBACK_TOKEN) for _ in range(12)]
    assert results[:10] == [None] * 10
    assert all(r is not None and r.status == 429 for r in results[10:])


def test_the_limit_is_shared_by_every_guard_on_the_same_redis(
    redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    """Two web processes = two guards with their own connections; one budget."""
    one = limited_guard(redis_server.client())
    two = limited_guard(redis_server.client())
    answers = [g.check(environ("198.51.100.1"), CALLBACK_TOKEN) for g in (one, two) * 3]
    assert answers[:3] == [None] * 3
    assert all(a is not None and a.status == 429 for a in answers[3:])


def test_allow_listed_clients_are_never_throttled(redis_client: redis.Redis) -> None:
    guard = limited_guard(redis_client, "1/hour", CALLBACK_ALLOWED_IPS="203.0.113.0/24")
    assert all(guard.check(environ("203.0.113.9"), CALLBACK_TOKEN) is None for _ in range(20))
    assert redis_client.keys("exolegs:bucket:*") == []


def test_the_limit_fails_open_for_a_while_when_redis_is_down(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    dead = redis.Redis(port=free_port(), socket_connect_timeout=0.5, retry=Retry(NoBackoff(), 0))
    guard = limited_guard(dead)
    assert guard.check(environ(), CALLBACK_TOKEN) is None
    # within the fail-open window the limiter is not even asked
    calls: list[str] = []

    def acquire(*args: object) -> float:
        calls.append("asked")
        return 9.0

    monkeypatch.setattr(guard.limiter, "acquire", acquire)
    assert guard.check(environ(), CALLBACK_TOKEN) is None
    assert calls == []
    monkeypatch.setattr(guard, "_limit_off_until", 0.0)
    refusal = guard.check(environ(), CALLBACK_TOKEN)
    assert refusal is not None and refusal.status == 429 and calls == ["asked"]


def test_a_rate_without_a_limiter_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="CALLBACK_RATE_LIMIT"):
        Guard(settings_for(CALLBACK_RATE_LIMIT="5/minute"))


# ---------------------------------------------- through the app, with Redis
class CountingConnection(redis.Connection):
    """A real connection that counts the requests it writes to Redis (round trips)."""

    sent = 0

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        CountingConnection.sent += 1
        super().send_packed_command(command, check_health)


def counting_app(redis_server: RedisServer, settings: Settings) -> Flask:
    from web.app import create_app
    from worker.runtime import Runtime

    pool = redis.ConnectionPool(
        host="127.0.0.1", port=redis_server.port, connection_class=CountingConnection
    )
    return create_app(settings, runtime=Runtime(settings, client=redis.Redis(connection_pool=pool)))


def round_trips(client: Any, *args: Any, **kwargs: Any) -> tuple[int, int]:
    before = CountingConnection.sent
    status = client.post(*args, **kwargs).status_code
    return status, CountingConnection.sent - before


@pytest.mark.parametrize("rate", [None, "1000/minute"])
def test_one_round_trip_per_callback_and_one_more_only_with_a_rate_limit(
    redis_server: RedisServer, redis_client: redis.Redis, tmp_path: Any, rate: str | None
) -> None:
    from tests.unit.web.conftest import base_env

    env = base_env(redis_server.url, tmp_path)
    if rate:
        env["CALLBACK_RATE_LIMIT"] = rate
    app = counting_app(redis_server, Settings.from_env(env, dotenv=False))
    try:
        assert (app.extensions["exolegs"].guard.limiter is None) is (rate is None)
        client = app.test_client()
        client.post(URL, data={**TERMINAL, "CallSid": "warm-up"})  # loads the Lua scripts
        extra = 1 if rate else 0
        assert round_trips(client, URL, data=TERMINAL) == (200, 1 + extra)
        assert round_trips(client, URL, data=TERMINAL) == (200, 1 + extra)  # duplicate
        wrong = round_trips(client, "/exotel/callback/wrong-token-0000000000", data=TERMINAL)
        assert wrong == (403, extra)
        assert round_trips(client, URL, data={"Status": "completed"}) == (400, extra)
    finally:
        app.extensions["exolegs"].drainer.stop()


def test_app_answers_429_with_retry_after_and_books_nothing(
    make_app: Callable[..., Flask], redis_client: redis.Redis
) -> None:
    client = make_app(CALLBACK_RATE_LIMIT="2/minute").test_client()
    assert client.post(URL, data={**TERMINAL, "CallSid": "flood-0"}).status_code == 200
    assert client.post(URL, data={**TERMINAL, "CallSid": "flood-1"}).status_code == 200
    before = state_keys(redis_client)
    answer = client.post(URL, data={**TERMINAL, "CallSid": "flood-2"})
    assert answer.status_code == 429
    assert answer.get_json() == {"error": "too many requests"}
    assert int(answer.headers["Retry-After"]) >= 1
    assert state_keys(redis_client) == before


def test_app_answers_401_with_a_challenge(make_app: Callable[..., Flask]) -> None:
    client = make_app(CALLBACK_BASIC_AUTH="exotel:s3cret-pass").test_client()
    answer = client.post(URL, data=TERMINAL)
    assert answer.status_code == 401
    assert answer.headers["WWW-Authenticate"].startswith("Basic realm=")
    assert answer.get_json() == {"error": "authentication required"}
    ok = client.post(URL, data=TERMINAL, headers={"Authorization": basic("exotel", "s3cret-pass")})
    assert ok.status_code == 200


def test_app_allow_list_sees_the_client_behind_one_proxy(make_app: Callable[..., Flask]) -> None:
    client = make_app(CALLBACK_ALLOWED_IPS="203.0.113.0/24", TRUSTED_PROXIES="1",
                      TRUSTED_PROXY_IPS="10.0.0.0/8").test_client()
    through_router = {"REMOTE_ADDR": "10.0.0.1"}
    ok = client.post(URL, data=TERMINAL, environ_overrides=through_router,
                     headers={"X-Forwarded-For": "203.0.113.50"})
    assert ok.status_code == 200
    spoofed = client.post(URL, data=TERMINAL, environ_overrides=through_router,
                          headers={"X-Forwarded-For": "203.0.113.50, 198.51.100.7"})
    assert spoofed.status_code == 403
    assert spoofed.get_json() == {"error": "client address not allowed"}


def test_old_and_new_tokens_both_work_through_the_app(make_app: Callable[..., Flask]) -> None:
    client = make_app(CALLBACK_TOKEN=f"{CALLBACK_TOKEN},{OLD_TOKEN}").test_client()
    assert client.post(URL, data=TERMINAL).status_code == 200
    again = client.post(f"/exotel/callback/{OLD_TOKEN}", data=TERMINAL)
    assert again.status_code == 200 and again.get_json()["duplicate"] is True


def test_an_old_token_in_use_is_noted_once_a_minute_without_the_token(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from worker.checks import fingerprint

    guard = Guard(settings_for(CALLBACK_TOKEN=f"{CALLBACK_TOKEN},{OLD_TOKEN}"))
    caplog.set_level("INFO", logger="exolegs.web.guard")
    assert guard.check(environ(), CALLBACK_TOKEN) is None
    assert caplog.records == []
    for _ in range(3):
        assert guard.check(environ(), OLD_TOKEN) is None
    notes = [r.getMessage() for r in caplog.records]
    assert len(notes) == 1
    assert "entry 2 of 2" in notes[0] and fingerprint(OLD_TOKEN) in notes[0]
    assert OLD_TOKEN not in notes[0]
    monkeypatch.setattr(guard_module, "OLD_TOKEN_NOTE_SECONDS", 0.0)  # a minute went by
    guard.check(environ(), OLD_TOKEN)
    assert len(caplog.records) == 2
