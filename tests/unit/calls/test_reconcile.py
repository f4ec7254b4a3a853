"""The reconciliation sweeper against the simulator's Calls.json, with a real Redis."""

from __future__ import annotations

from datetime import datetime, timedelta
from itertools import pairwise
from typing import Any

import pytest

from tests.support.processes import Simulator
from worker import jobs, keys
from worker.calls import reconcile
from worker.calls.callbacks import event_from_fields
from worker.calls.intake import call_facts
from worker.calls.provenance import Source
from worker.calls.reconcile import INDIA, Tier
from worker.runtime import Runtime
from worker.settings import Settings


@pytest.fixture
def runtime_env() -> dict[str, str]:
    return {
        "SINKS": "memory://a",
        "RECONCILE_GRACE": "0",
        "EXOTEL_RATE_LIMIT": "100/second",  # the sweeper gets a tenth of it
    }


def default(rt: Runtime) -> Any:
    return rt.settings.all_accounts[0]


def booked(rt: Runtime) -> set[str]:
    return {j.decode().split(":", 1)[1] for j in rt.redis.zrange(jobs.JOBS, 0, -1)}


def test_calls_never_accepted_are_booked_once_as_reconcile(make_rt, sim: Simulator) -> None:  # type: ignore[no-untyped-def]
    rt = make_rt()
    sids = [f"rc{n:03d}" for n in range(10)]
    sim.place(sids)
    for sid in sids[:3]:  # their callbacks came
        rt.intake.accept(event_from_fields({"CallSid": sid, "Status": "completed"}))
    tally = reconcile.run_tier(rt, default(rt), Tier.RECENT)
    assert tally is not None
    assert (tally.listed, tally.known, tally.booked) == (10, 3, 7)
    assert booked(rt) == set(sids)
    assert call_facts(rt.redis, "rc009").source is Source.RECONCILE
    assert call_facts(rt.redis, "rc000").source is Source.CALLBACK
    again = reconcile.run_tier(rt, default(rt), Tier.RECENT)
    assert again is not None and (again.known, again.booked) == (10, 0)
    # the console and /metrics see both runs
    from worker import metrics

    totals = metrics.totals(rt.redis)
    labels = f'{{account="default",tier="{Tier.RECENT}"}}'
    assert totals[f"exolegs_reconcile_listed_total{labels}"] == 20
    assert totals[f"exolegs_reconcile_missing_total{labels}"] == 7
    run = metrics.reconcile_runs(rt.redis)[f"default:{Tier.RECENT}"]
    assert (run["listed"], run["missing"]) == (10, 0)
    # a callback arriving after the sweep is a duplicate and books nothing new
    late = rt.intake.accept(event_from_fields({"CallSid": "rc009", "Status": "completed"}))
    assert not late.fetch_booked


def test_pages_are_followed_to_the_end(make_rt, sim: Simulator) -> None:  # type: ignore[no-untyped-def]
    rt = make_rt()
    sids = [f"pg{n:03d}" for n in range(230)]
    sim.place(sids)
    tally = reconcile.run_tier(rt, default(rt), Tier.RECENT)
    assert tally is not None and tally.pages == 3 and tally.booked == 230


def test_a_call_that_just_ended_waits_for_its_callback(make_rt, sim: Simulator) -> None:  # type: ignore[no-untyped-def]
    rt = make_rt(RECONCILE_GRACE="60")
    sim.place(["fresh1"])
    tally = reconcile.run_tier(rt, default(rt), Tier.RECENT)
    assert tally is not None and tally.booked == 0
    assert tally.skipped[reconcile.Skip.JUST_ENDED] == 1


def test_one_run_per_tier_at_a_time(make_rt) -> None:  # type: ignore[no-untyped-def]
    rt = make_rt()
    held = rt.redis.lock(keys.reconcile("default", "lock:recent"), timeout=30)
    assert held.acquire(blocking=False)
    assert reconcile.run_tier(rt, default(rt), Tier.RECENT) is None
    held.release()
    assert reconcile.run_tier(rt, default(rt), Tier.RECENT) is not None


def test_tick_runs_what_is_due_and_remembers_it(make_rt, sim: Simulator) -> None:  # type: ignore[no-untyped-def]
    rt = make_rt()
    sim.place(["tk1"])
    ran = reconcile.tick(rt)
    assert {tier for _, tier, _ in ran} >= {Tier.RECENT, Tier.HOURLY}
    assert reconcile.tick(rt) == []  # nothing is due again yet
    assert reconcile.last_run(rt.redis, "default", Tier.RECENT) is not None


def test_legs_unavailable_calls_are_asked_again_by_the_hourly_tier(make_rt, sim: Simulator) -> None:  # type: ignore[no-untyped-def]
    from worker.tasks import run_batch

    rt = make_rt(RETRY_MAX_ATTEMPTS="1")
    sim.place(["lu1"])
    sim.script("lu1", [{"status": 500, "code": 10743}])
    rt.intake.accept(event_from_fields({"CallSid": "lu1", "Status": "completed"}))
    for _ in range(2):  # the fetch gives up (legs unavailable), then the delivery
        for batch in rt.book.claim():
            run_batch(rt, batch)
    assert rt.book.size() == 0
    recent = reconcile.run_tier(rt, default(rt), Tier.RECENT)
    assert recent is not None and recent.refetch == 0 and booked(rt) == set()
    hourly = reconcile.run_tier(rt, default(rt), Tier.HOURLY)
    assert hourly is not None and hourly.refetch == 1 and booked(rt) == {"lu1"}


def test_a_listing_error_is_reported_and_retried_next_tick(make_rt, sim: Simulator) -> None:  # type: ignore[no-untyped-def]
    rt = make_rt()
    sim.mode("unauthorized")
    tally = reconcile.run_tier(rt, default(rt), Tier.RECENT)
    assert tally is not None and tally.booked == 0
    assert reconcile.last_run(rt.redis, "default", Tier.RECENT) is None


# --- pure scheduling ---------------------------------------------------------------


def at(text: str) -> float:
    return datetime.strptime(text, "%Y-%m-%d %H:%M").replace(tzinfo=INDIA).timestamp()


def test_windows_of_each_tier() -> None:
    s = Settings.from_env({}, dotenv=False)
    now = at("2025-03-02 10:00")
    since, until = reconcile.window(Tier.RECENT, now, s)
    assert until - since == timedelta(minutes=60)
    since, until = reconcile.window(Tier.HOURLY, now, s)
    assert until - since == timedelta(hours=5)
    since, until = reconcile.window(Tier.NIGHTLY, now, s)
    assert reconcile.stamp(since) == "2025-03-01 00:00:00"
    assert reconcile.stamp(until) == "2025-03-01 23:59:59"


def test_nightly_is_due_once_a_day_after_its_time() -> None:
    s = Settings.from_env({"RECONCILE_NIGHTLY_AT": "01:30"}, dotenv=False)
    assert not reconcile.due(Tier.NIGHTLY, at("2025-03-02 01:00"), None, s)
    assert reconcile.due(Tier.NIGHTLY, at("2025-03-02 01:31"), None, s)
    assert not reconcile.due(Tier.NIGHTLY, at("2025-03-02 09:00"), at("2025-03-02 01:31"), s)
    assert reconcile.due(Tier.NIGHTLY, at("2025-03-03 01:30"), at("2025-03-02 01:31"), s)
    assert reconcile.due(Tier.RECENT, at("2025-03-02 01:05"), at("2025-03-02 01:00"), s)
    assert not reconcile.due(Tier.RECENT, at("2025-03-02 01:04"), at("2025-03-02 01:00"), s)


def test_any_range_is_cut_into_pieces_of_at_most_a_month() -> None:
    since = datetime(2025, 1, 1, tzinfo=INDIA)
    until = datetime(2025, 4, 15, 23, 59, 59, tzinfo=INDIA)
    pieces = list(reconcile.chunks(since, until))
    assert pieces[0][0] == since and pieces[-1][1] == until
    assert all(b - a < timedelta(days=28) for a, b in pieces)
    assert all(b + timedelta(seconds=1) == c for (_, b), (c, _) in pairwise(pieces))


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"RETENTION_HOURS": "2"}, "RECONCILE_HOURLY_LOOKBACK"),
        ({"RETENTION_HOURS": "6", "RECONCILE_HOURLY_LOOKBACK": "5h"}, "RECONCILE_NIGHTLY_AT"),
        ({"RECONCILE_RECENT_LOOKBACK": "49h"}, "RECONCILE_RECENT_LOOKBACK"),
        ({"RECONCILE_RATE_SHARE": "0.9"}, "RECONCILE_RATE_SHARE"),
        ({"RECONCILE_RECENT_EVERY": "soon"}, "RECONCILE_RECENT_EVERY"),
        ({"RECONCILE_NIGHTLY_AT": "25:00"}, "RECONCILE_NIGHTLY_AT"),
        ({"RECONCILE": "maybe"}, "RECONCILE"),
    ],
)
def test_bad_or_too_long_settings_stop_start_up_naming_the_variable(
    env: dict[str, str], variable: str
) -> None:
    from worker.errors import SettingsError

    with pytest.raises(SettingsError) as caught:
        Settings.from_env(env, dotenv=False)
    assert str(caught.value).startswith(f"{variable}:")
    assert "\n" not in str(caught.value)


def test_the_sweeper_can_be_turned_off_with_a_short_retention() -> None:
    s = Settings.from_env({"RETENTION_HOURS": "2", "RECONCILE": "off"}, dotenv=False)
    assert not s.reconcile


def test_listing_cost_per_day_at_the_documented_volumes() -> None:
    """The numbers docs/reconciliation.md publishes."""
    s = Settings.from_env({}, dotenv=False)
    assert [reconcile.listing_requests_per_day(n, s) for n in (1_000, 10_000, 100_000)] == [
        370,
        2_044,
        18_112,
    ]
    busy = [
        reconcile.listing_requests_per_day(n, s, busy_hours=10) for n in (1_000, 10_000, 100_000)
    ]
    assert busy == [418, 4_180, 41_800]


def test_each_tier_checks_in_to_a_sentry_cron_monitor_when_sentry_is_on(
    make_rt, sim: Simulator, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    import sentry_sdk.crons

    checkins: list[dict[str, Any]] = []

    def capture_checkin(**kwargs: Any) -> str:
        checkins.append(kwargs)
        return "checkin-1"

    monkeypatch.setattr(sentry_sdk.crons, "capture_checkin", capture_checkin)
    quiet = make_rt()
    reconcile.run_tier(quiet, default(quiet), Tier.RECENT)
    assert checkins == []  # no SENTRY_DSN, no check-in
    rt = make_rt(SENTRY_DSN="https://public@o1.ingest.sentry.io/1")
    rt.redis.delete(keys.reconcile("default", "last:hourly"))
    reconcile.run_tier(rt, default(rt), Tier.HOURLY)
    assert [(c["monitor_slug"], c["status"]) for c in checkins] == [
        ("exolegs-reconcile-default-hourly", "in_progress"),
        ("exolegs-reconcile-default-hourly", "ok"),
    ]
    assert checkins[1]["check_in_id"] == "checkin-1"
    assert checkins[0]["monitor_config"]["schedule"] == {
        "type": "interval",
        "value": 60,
        "unit": "minute",
    }
    sim.mode("unauthorized")
    reconcile.run_tier(rt, default(rt), Tier.RECENT)
    assert checkins[-1]["status"] == "error"


def test_a_failed_tier_is_not_hammered_at_every_tick(make_rt, sim: Simulator) -> None:  # type: ignore[no-untyped-def]
    rt = make_rt(CIRCUIT_PROBE_SECONDS="60")
    sim.mode("unauthorized")
    first = reconcile.tick(rt)
    assert {tier for _, tier, _ in first} >= {Tier.RECENT, Tier.HOURLY}
    listed = sim.total()
    assert reconcile.tick(rt) == []  # paused after the failure
    assert sim.total() == listed


def test_the_sweeper_waits_while_live_fetches_have_a_backlog(make_rt, sim: Simulator) -> None:  # type: ignore[no-untyped-def]
    import threading

    rt = make_rt()
    account = default(rt)
    rt.limiter.block(account.limit_name, 30)  # e.g. Exotel said 429 + Retry-After: 30
    assert rt.limiter.backlog(account.limit_name) > 20
    stop = threading.Event()
    threading.Timer(0.3, stop.set).start()
    listed = sim.total()
    with pytest.raises(InterruptedError):
        reconcile.Budget(rt, account, 0.1).wait_turn(stop)
    assert sim.total() == listed  # it never asked Exotel
    assert reconcile.run_tier(rt, account, Tier.RECENT, stop=stop) is not None
    assert sim.total() == listed
