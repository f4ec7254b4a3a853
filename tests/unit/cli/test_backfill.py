"""``exolegs backfill`` against the simulator: summary, dry run, resume, refusals."""

from __future__ import annotations

import argparse
import io
from datetime import datetime, timedelta

import pytest
import redis

from tests.support.processes import Simulator
from worker.calls import backfill
from worker.calls.intake import call_facts
from worker.calls.provenance import Source
from worker.calls.reconcile import INDIA, stamp
from worker.calls.simulator import SimulatorConfig
from worker.cli.backfill import Reporter, cmd_backfill
from worker.errors import SettingsError
from worker.jobs import JOBS


@pytest.fixture
def environ(
    env: dict[str, str], sim: Simulator, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> redis.Redis:
    sim.reset()
    config = SimulatorConfig()
    for name, value in {
        **env,
        "EXOTEL_BASE_URL": sim.url,
        "EXOTEL_ACCOUNT_SID": config.account_sid,
        "EXOTEL_API_KEY": config.api_key,
        "EXOTEL_API_TOKEN": config.api_token,
        "EXOTEL_RATE_LIMIT": "100/second",
        "RECONCILE_GRACE": "0",
        "SINKS": "memory://a",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(env["SPOOL_DIR"].rsplit("/", 1)[0])  # no .env from the repo
    return redis_client


def args(**extra: object) -> argparse.Namespace:
    today = datetime.now(INDIA).strftime("%Y-%m-%d")
    values: dict[str, object] = {
        "since": today, "until": today, "dry_run": False, "account": None,
        "share": 0.5, "past_retention": False,
    }  # fmt: skip
    values.update(extra)
    return argparse.Namespace(**values)


def test_dry_run_books_nothing_and_says_what_it_would(environ: redis.Redis, sim: Simulator) -> None:
    sim.place([f"bf{n:03d}" for n in range(12)])
    out = io.StringIO()
    assert cmd_backfill(args(dry_run=True), out=out) == 0
    text = out.getvalue()
    assert "dry run: nothing will be booked" in text and "would book 12" in text
    assert environ.zcard(JOBS) == 0


def test_books_the_unseen_and_prints_the_summary(environ: redis.Redis, sim: Simulator) -> None:
    from worker.calls.callbacks import event_from_fields
    from worker.calls.intake import Intake

    sim.place([f"bs{n:03d}" for n in range(12)])
    Intake(environ, retention_seconds=3600, fetch_delay=0).accept(
        event_from_fields({"CallSid": "bs000", "Status": "completed"})
    )
    out = io.StringIO()
    assert cmd_backfill(args(), out=out) == 0
    text = out.getvalue()
    assert "listed 12, already known 1, booked 11" in text
    assert "backfill: piece 1/1" in text  # plain progress lines when not a terminal
    assert call_facts(environ, "bs011").source is Source.BACKFILL
    out = io.StringIO()
    assert cmd_backfill(args(), out=out) == 0
    assert "already known 12, booked 0" in out.getvalue()


def test_ctrl_c_then_the_same_command_carries_on(
    environ: redis.Redis, sim: Simulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    sim.place([f"br{n:03d}" for n in range(250)])
    pages: list[int] = []
    original = Reporter.page

    def page(self: Reporter, *a: object) -> None:
        pages.append(1)
        if len(pages) == 2:
            raise KeyboardInterrupt
        original(self, *a)  # type: ignore[arg-type]

    monkeypatch.setattr(Reporter, "page", page)
    out = io.StringIO()
    assert cmd_backfill(args(), out=out) == 130
    assert "run the same command again" in out.getvalue()
    assert environ.zcard(JOBS) == 200
    out = io.StringIO()
    assert cmd_backfill(args(), out=out) == 0
    text = out.getvalue()
    assert "resumed" in text and "booked 250" in text
    assert environ.zcard(JOBS) == 250
    assert len(pages) == 3  # the third page only: the first two were not listed again


def test_resume_state_is_kept_per_range(environ: redis.Redis, sim: Simulator) -> None:
    """After every page the place is saved; a second run starts there."""
    from worker.runtime import Runtime
    from worker.settings import Settings

    sim.place([f"bk{n:03d}" for n in range(250)])
    rt = Runtime(Settings.from_env(), client=environ)
    account = rt.settings.all_accounts[0]
    now = datetime.now(INDIA)
    since, until = now - timedelta(hours=1), now
    seen: list[str | None] = []

    def stop_after_first(progress: backfill.Progress, *_: object) -> None:
        seen.append(progress.page_uri)
        if len(seen) == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        backfill.run(rt, account, since, until, dry_run=False, share=0.5, on_page=stop_after_first)
    saved = backfill.load(rt, backfill.state_key("default", since, until), 1)
    assert saved is not None and saved.page_uri == seen[0] and saved.tally.booked == 100
    tally, resumed = backfill.run(
        rt, account, since, until, dry_run=False, share=0.5, on_page=lambda *a: None
    )
    assert resumed and tally.listed == 250 and tally.booked == 250
    assert environ.get(backfill.state_key("default", since, until)) is None
    due = sorted(s for _, s in environ.zrange(JOBS, 0, -1, withscores=True))
    assert due[-1] - due[0] > 1.0  # spread out at the backfill's share, not all due at once


@pytest.mark.parametrize(
    ("since", "until", "problem"),
    [
        ("2025-13-01", "2025-03-02", "--since"),
        ("2025-03-02", "yesterday", "--until"),
    ],
)
def test_bad_times_name_the_option(since: str, until: str, problem: str) -> None:
    with pytest.raises(SettingsError, match=f"^{problem}:"):
        backfill.parse_time(since)
        backfill.parse_time(until, end=True)


def test_ranges_that_would_deliver_again_are_refused() -> None:
    now = datetime.now(INDIA)
    with pytest.raises(SettingsError, match="RETENTION_HOURS=48"):
        backfill.check_range(now - timedelta(days=3), now, now, 48, False)
    assert backfill.check_range(now - timedelta(days=3), now, now, 48, True) == now
    with pytest.raises(SettingsError, match="6 months"):
        backfill.check_range(now - timedelta(days=200), now, now, 48, True)
    with pytest.raises(SettingsError, match="before --until"):
        backfill.check_range(now, now - timedelta(days=1), now, 48, False)
    assert stamp(backfill.parse_time("2025-03-02", end=True)) == "2025-03-02 23:59:59"


def test_on_a_terminal_the_progress_is_one_redrawn_line() -> None:
    out = io.StringIO()
    report = Reporter(out, tty=True)
    now = datetime.now(INDIA)
    report.page(backfill.Progress(0, "/v1/next", backfill.Tally(listed=100, booked=3), 3), now, now)
    report.page(backfill.Progress(1, None, backfill.Tally(listed=150, booked=5), 3), now, now)
    report.end()
    text = out.getvalue()
    assert text.count("\r") == 2 and text.endswith("\n") and text.count("\n") == 1
    assert "booked 5" in text and "1/3" in text
