"""The helpers every CRM sink shares (worker/sinks/crm/).

Agents file (JSON and CSV), phone formats, the status table, durations and
times, the leg summary, and the OAuth token cache: one mint shared through
Redis by several sink instances (as several workers would), one re-mint on an
expired token, and the in-process fallback without Redis.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from tests.unit.sinks.fakes import ADITYA_SIP, SANJAY, make_record
from tests.unit.sinks.fakes.zoho import FakeZoho
from worker.calls.exotel import parse_retry_after as exotel_parse_retry_after
from worker.errors import ConfigFaultError, RateLimitedError, SettingsError, TransientError
from worker.settings import Settings
from worker.sinks.base import SinkContext
from worker.sinks.crm import (
    HUBSPOT_CONNECTED,
    OUTCOMES,
    AgentDirectory,
    Token,
    cache_seconds,
    call_direction,
    call_outcome,
    call_title,
    customer_phone,
    drop_token,
    duration_mmss,
    duration_ms,
    forget_local_tokens,
    get_token,
    iso_utc,
    iso_with_offset,
    leg_summary,
    normalise_agent_key,
    parse_retry_after,
    phone_formats,
    seconds_until_utc_midnight,
    talk_seconds,
    token_key,
    utc_text,
)
from worker.sinks.registry import build_sink
from worker.sinks.zoho import ZohoSink

# --------------------------------------------------------------- agents file


@pytest.mark.parametrize(
    ("value", "key"),
    [
        ("+919876543210", "+919876543210"),
        ("09876543210", "+919876543210"),
        ("+91 98765-43210", "+919876543210"),
        ("9876543210", "+919876543210"),
        ("sip:Aditya.Sharma@Acme.sip.exotel.com", "sip:aditya.sharma@acme.sip.exotel.com"),
        ("aditya.sharma@acme.sip.exotel.com", "sip:aditya.sharma@acme.sip.exotel.com"),
        ("  Sanjay   MISHRA ", "name:sanjay mishra"),
        ("", None),
    ],
)
def test_agent_keys_are_normalised(value: str, key: str | None) -> None:
    assert normalise_agent_key(value, "IN") == key


def test_agents_from_json_match_answering_agent_by_contact_uri(tmp_path: Path) -> None:
    path = tmp_path / "agents.json"
    path.write_text(json.dumps({"09876543210": "u-sanjay", ADITYA_SIP.upper(): 42}))
    agents = AgentDirectory(path, "IN")
    assert agents.owner_for(make_record()) == "u-sanjay"  # answered by Sanjay
    assert agents.owner_for(make_record(answered=False)) == "42"  # missed: the first agent dialled


def test_agents_from_csv_with_header_comments_and_names(tmp_path: Path) -> None:
    path = tmp_path / "agents.csv"
    path.write_text(
        f"contact_uri,crm_user_id\n# the sales floor\n\nSanjay Mishra, 005A\n{ADITYA_SIP},005B\n"
    )
    agents = AgentDirectory(path, "IN")
    assert agents.mapping == {"name:sanjay mishra": "005A", f"sip:{ADITYA_SIP[4:]}": "005B"}
    assert agents.owner_for(make_record()) == "005A"  # by Exotel user name


def test_an_unmapped_answering_agent_gives_no_owner(tmp_path: Path) -> None:
    path = tmp_path / "agents.json"
    path.write_text(json.dumps({ADITYA_SIP: "a"}))
    # Sanjay answered and is not in the file: the call is not pinned on Aditya.
    assert AgentDirectory(path, "IN").owner_for(make_record()) is None


def test_the_agents_file_is_reread_when_it_changes(tmp_path: Path) -> None:
    path = tmp_path / "agents.json"
    path.write_text(json.dumps({SANJAY: "old"}))
    agents = AgentDirectory(path, "IN")
    path.write_text(json.dumps({SANJAY: "new"}))
    os.utime(path, (time.time() + 5, time.time() + 5))
    assert agents.owner_for(make_record()) == "new"
    path.write_text("{broken")
    os.utime(path, (time.time() + 10, time.time() + 10))
    assert agents.owner_for(make_record()) == "new"  # a broken edit keeps the last good map


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("{not json", "not valid JSON"),
        ('["+919876543210"]', "JSON object"),
        ('{"+919876543210": {"id": 1}}', "must be a string"),
        ("+919876543210,1,extra\n", "contact_uri,crm_user_id"),
        ('{"+919876543210": ""}', "empty agent or user"),
    ],
)
def test_bad_agents_files_are_settings_errors(tmp_path: Path, text: str, problem: str) -> None:
    path = tmp_path / "agents.txt"
    path.write_text(text)
    with pytest.raises(SettingsError, match=problem):
        AgentDirectory(path, "IN")


def test_a_missing_agents_file_stops_the_sink_at_start(settings: Settings, tmp_path: Path) -> None:
    url = f"hubspot://?token=pat-x&agents={tmp_path / 'nope.json'}"
    with pytest.raises(SettingsError, match="agents file"):
        build_sink(url, SinkContext(settings))


# --------------------------------------------------------------- phones


def test_phone_formats_for_lookups() -> None:
    formats = phone_formats("09812345678", "IN")
    assert formats is not None
    assert formats.variants() == ["+919812345678", "9812345678", "09812345678", "919812345678"]
    assert formats.dashed == "+91-9812345678"
    us = phone_formats("+1 (201) 555-0123", "IN")
    assert us is not None and us.variants() == ["+12015550123", "2015550123", "12015550123"]
    assert phone_formats("0987xxxxxxx", "IN") is None
    assert phone_formats("sip:a@b.c", "IN") is None


def test_customer_phone_uses_the_record() -> None:
    formats = customer_phone(make_record(), "IN")
    assert formats is not None and formats.e164 == "+919812345678"
    assert customer_phone(make_record(customer="sip:caller@x.example"), "IN") is None


# --------------------------------------------------------------- status table


def test_the_status_table_covers_exotels_terminal_statuses() -> None:
    assert set(OUTCOMES) == {"completed", "no-answer", "busy", "failed", "canceled"}
    table = {
        k: (o.hubspot_status, o.salesforce_disposition, o.leadsquared_status)
        for k, o in OUTCOMES.items()
    }
    assert table == {
        "completed": ("COMPLETED", "Connected", "Answered"),
        "no-answer": ("NO_ANSWER", "No answer", "NotAnswered"),
        "busy": ("BUSY", "Busy", "NotAnswered"),
        "failed": ("FAILED", "Failed", "NotAnswered"),
        "canceled": ("CANCELED", "Canceled", "NotAnswered"),
    }
    assert OUTCOMES["completed"].hubspot_disposition == HUBSPOT_CONNECTED


@pytest.mark.parametrize(
    ("changes", "outcome"),
    [
        ({}, "completed"),
        ({"status": "busy"}, "busy"),
        ({"status": "cancelled"}, "canceled"),
        ({"status": None}, "completed"),
        # Exotel says completed (the IVR took the call) but no agent answered: missed.
        ({"answered_by": None}, "no-answer"),
    ],
)
def test_call_outcome(changes: dict[str, Any], outcome: str) -> None:
    record = make_record()
    record.update(changes)
    assert call_outcome(record).key == outcome


def test_direction_falls_back_to_where_the_agents_are() -> None:
    inbound, outbound = make_record(), make_record(direction="outbound")
    inbound["direction"] = outbound["direction"] = None
    assert call_direction(inbound) == "inbound"
    assert call_direction(outbound) == "outbound"


# --------------------------------------------------------------- durations, times


def test_durations_and_times() -> None:
    assert duration_ms(61) == 61000
    assert [duration_mmss(s) for s in (0, 59, 60, 4503)] == ["00:00", "00:59", "01:00", "75:03"]
    moment = datetime.fromisoformat("2020-09-15T11:01:20.5+05:30")
    assert utc_text(moment) == "2020-09-15 05:31:20"
    assert iso_utc(moment) == "2020-09-15T05:31:20Z"
    assert iso_with_offset(moment) == "2020-09-15T11:01:20+05:30"
    assert talk_seconds(make_record()) == 60
    assert talk_seconds(make_record(direction="outbound")) == 105
    assert talk_seconds(make_record(answered=False)) == 0


def test_retry_after_is_exotels_parser() -> None:
    assert parse_retry_after is exotel_parse_retry_after
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0) == 10.0
    assert parse_retry_after("soon") is None


def test_seconds_until_utc_midnight() -> None:
    assert seconds_until_utc_midnight(datetime(2024, 1, 1, 23, 59, 0, tzinfo=UTC)) == 60
    assert seconds_until_utc_midnight(datetime(2024, 1, 1, 0, 0, 0, tzinfo=UTC)) == 86400


def test_summary_and_title_describe_every_agent_leg() -> None:
    record = make_record()
    lines = leg_summary(record)
    assert (
        lines[0]
        == "Exotel call f1ca1057692d586b23b4e7ffcc3216mk: inbound, connected, talk time 60 s"
    )
    assert (
        "1. Aditya Sharma (sip:aditya.sharma@acme.sip.exotel.com) [Sales]: no-answer, 60 s" in lines
    )
    assert "2. Sanjay Mishra (+919876543210) [Sales]: completed, 60 s" in lines
    assert call_title(record).endswith("- Exotel f1ca1057692d586b23b4e7ffcc3216mk")


# --------------------------------------------------------------- token cache


def test_cache_seconds_keeps_a_margin() -> None:
    assert cache_seconds(3600) == 3480
    assert cache_seconds(100) == 50


def test_one_worker_mints_while_the_others_wait(redis_client: redis.Redis) -> None:
    calls: list[float] = []

    def mint() -> tuple[str, float, dict[str, Any]]:
        calls.append(time.time())
        time.sleep(0.3)
        return f"token-{len(calls)}", 3600, {"api_domain": "https://x"}

    key = token_key("test", "concurrent")
    results: list[Token] = []
    threads = [
        threading.Thread(target=lambda: results.append(get_token(redis_client, key, mint)))
        for _ in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(calls) == 1
    assert {t.value for t in results} == {"token-1"}
    assert results[0].extra == {"api_domain": "https://x"}
    assert 3470 < redis_client.pttl(key) / 1000 <= 3480
    assert not redis_client.exists(f"{key}:lock")


def test_drop_token_forgets_only_the_stale_one(redis_client: redis.Redis) -> None:
    key = token_key("test", "drop")
    counter = iter(range(1, 100))

    def mint() -> tuple[str, float, dict[str, Any]]:
        return f"t{next(counter)}", 3600, {}

    first = get_token(redis_client, key, mint)
    drop_token(redis_client, key, first.value)
    second = get_token(redis_client, key, mint)
    assert (first.value, second.value) == ("t1", "t2")
    drop_token(redis_client, key, first.value)  # a late worker with the old token
    assert get_token(redis_client, key, mint).value == "t2"


def test_a_stuck_minter_makes_the_others_retry_later(redis_client: redis.Redis) -> None:
    key = token_key("test", "stuck")
    redis_client.set(f"{key}:lock", "someone-else", px=10_000)
    with pytest.raises(TransientError, match="another worker"):
        get_token(redis_client, key, lambda: ("never", 1, {}), wait_seconds=0.2)


def test_redis_down_is_transient() -> None:
    dead = redis.Redis(
        host="127.0.0.1", port=1, socket_connect_timeout=0.2, retry=Retry(NoBackoff(), 0)
    )
    with pytest.raises(TransientError, match="Redis"):
        get_token(dead, "k", lambda: ("t", 60, {}))


def test_without_redis_the_token_is_cached_in_process() -> None:
    forget_local_tokens()
    minted: list[int] = []

    def mint() -> tuple[str, float, dict[str, Any]]:
        minted.append(1)
        return f"local-{len(minted)}", 3600, {}

    key = token_key("test", "local")
    assert get_token(None, key, mint).value == "local-1"
    assert get_token(None, key, mint).value == "local-1"
    drop_token(None, key, "local-1")
    assert get_token(None, key, mint).value == "local-2"

    def refused() -> tuple[str, float, dict[str, Any]]:
        minted.append(1)
        raise ConfigFaultError("bad client")

    other = token_key("test", "local-refused")
    for _ in range(2):
        with pytest.raises(ConfigFaultError):
            get_token(None, other, refused)
    assert len(minted) == 3  # the refusal is remembered: asked once
    forget_local_tokens()


# --------------------------------------------------------------- Zoho across workers


@pytest.fixture
def zoho() -> Iterator[FakeZoho]:
    fake = FakeZoho()
    with fake.running():
        yield fake
    fake.assert_clean()


def _worker(zoho: FakeZoho, settings: Settings, client: redis.Redis | None) -> ZohoSink:
    sink = build_sink(zoho.url(), SinkContext(settings=settings, redis=client))
    assert isinstance(sink, ZohoSink)
    return sink


def test_zoho_token_is_minted_once_and_shared_by_two_workers(
    zoho: FakeZoho, settings: Settings, redis_server: Any
) -> None:
    # Two sink instances with their own Redis connections: two worker processes.
    one, two = redis_server.client(), redis_server.client()
    one.flushall()
    first, second = _worker(zoho, settings, one), _worker(zoho, settings, two)
    first.deliver(make_record("call-a"))
    second.deliver(make_record("call-b"))
    assert len(zoho.accounts.minted) == 1
    tokens = {s.headers["authorization"] for s in zoho.crm.seen("POST", "/crm/v8/Calls")}
    assert len(tokens) == 1


def test_zoho_workers_racing_for_a_token_mint_once(
    zoho: FakeZoho, settings: Settings, redis_server: Any
) -> None:
    zoho.accounts.mint_delay = 0.3
    clients = [redis_server.client() for _ in range(4)]
    clients[0].flushall()
    workers = [_worker(zoho, settings, c) for c in clients]
    errors: list[BaseException] = []

    def run(sink: ZohoSink, n: int) -> None:
        try:
            sink.deliver(make_record(f"race-{n}"))
        except BaseException as err:
            errors.append(err)

    threads = [threading.Thread(target=run, args=(w, n)) for n, w in enumerate(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(zoho.accounts.minted) == 1
    assert len(zoho.crm.calls) == 4


def test_zoho_expired_token_is_reminted_once_for_everyone(
    zoho: FakeZoho, settings: Settings, redis_client: redis.Redis
) -> None:
    first, second = _worker(zoho, settings, redis_client), _worker(zoho, settings, redis_client)
    first.deliver(make_record("before"))
    zoho.crm.expire_tokens()
    first.deliver(make_record("after-1"))  # 401 INVALID_TOKEN -> drop, mint, retry
    second.deliver(make_record("after-2"))  # uses the fresh token from Redis
    assert len(zoho.accounts.minted) == 2
    assert len(zoho.crm.calls) == 3


def test_zoho_without_redis_caches_the_token_in_process(zoho: FakeZoho, settings: Settings) -> None:
    forget_local_tokens()
    sink = _worker(zoho, settings, None)
    sink.deliver(make_record("x"))
    sink.deliver(make_record("y"))
    assert len(zoho.accounts.minted) == 1
    forget_local_tokens()


def test_a_refused_refresh_token_is_not_retried_by_every_worker(
    zoho: FakeZoho, settings: Settings, redis_client: redis.Redis
) -> None:
    revoked = zoho.url().replace(zoho.accounts.refresh_token, "1000.revoked")
    for _ in range(3):
        sink = build_sink(revoked, SinkContext(settings=settings, redis=redis_client))
        with pytest.raises(ConfigFaultError, match="invalid_code"):
            sink.deliver(make_record("x"))
    assert len(zoho.accounts.seen("POST", "/oauth/v2/token")) == 1


def test_rate_limited_minting_is_remembered(redis_client: redis.Redis) -> None:
    key = token_key("test", "throttled")
    asked: list[int] = []

    def throttled() -> tuple[str, float, dict[str, Any]]:
        asked.append(1)
        raise RateLimitedError("too many tokens", retry_after=30)

    for _ in range(2):
        with pytest.raises(RateLimitedError) as caught:
            get_token(redis_client, key, throttled)
    assert len(asked) == 1
    assert caught.value.retry_after is not None and 28 < caught.value.retry_after <= 30
