"""``exolegs backfill``: the command around :mod:`worker.calls.backfill`.

On a terminal it shows one self-redrawing progress line; otherwise (a log, a
pipe, a one-off dyno) it prints one plain line per page, so the progress is
in the log. Ctrl-C stops after the page in hand: the same command resumes.
"""

from __future__ import annotations

import argparse
import sys
import threading
from datetime import datetime
from typing import TextIO

from worker.calls import backfill
from worker.calls.reconcile import INDIA, Tally, stamp
from worker.cli.progress import Progress
from worker.errors import ExolegsError, SettingsError
from worker.settings import Settings

EXAMPLES = """examples:
  exolegs backfill --since 2025-03-01 --until 2025-03-31 --dry-run
  exolegs backfill --since "2025-03-01 09:00" --until "2025-03-01 18:00" --account north
"""


class Reporter:
    """The shared progress line (worker/cli/progress.py) on a terminal; plain lines otherwise."""

    def __init__(self, stream: TextIO, tty: bool | None = None) -> None:
        self.stream = stream
        self.tty = stream.isatty() if tty is None else tty
        self.bar: Progress | None = None

    def page(self, progress: backfill.Progress, start: datetime, end: datetime) -> None:
        t = progress.tally
        # chunk: the piece in hand (mid-piece) or the next one (a piece just finished)
        piece = min(progress.chunk + (1 if progress.page_uri else 0), progress.pieces)
        counts = f"listed {t.listed}, known {t.known}, booked {t.booked}"
        where = f"{stamp(start)[:10]}..{stamp(end)[:10]}"
        if not self.tty:
            self.stream.write(f"backfill: piece {piece}/{progress.pieces} {where}: {counts}\n")
            self.stream.flush()
            return
        if self.bar is None:
            self.bar = Progress("backfill", total=progress.pieces, stream=self.stream, enabled=True)
        self.bar.label = f"backfill {where} ({counts}), pieces done"
        self.bar.advance(progress.chunk - self.bar.done)

    def end(self) -> None:
        if self.bar is not None:
            self.bar.close()


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    b = sub.add_parser(
        "backfill",
        help="list the account's calls in a range from Exotel and book those never seen",
        description="Lists calls through Exotel's Bulk Call Details, 28 days at a time "
        "(Exotel allows a month per request), and books every finished call exolegs "
        "never accepted (record source: backfill). "
        "Times are India time. Interrupted? Run the same command again to resume.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    b.add_argument("--since", required=True, help="YYYY-MM-DD or 'YYYY-MM-DD HH:MM[:SS]' (IST)")
    b.add_argument("--until", required=True, help="YYYY-MM-DD (the whole day) or a time (IST)")
    b.add_argument("--dry-run", action="store_true", help="book nothing; say what it would do")
    b.add_argument("--account", help="an account name from EXOTEL_ACCOUNTS (default: the first)")
    b.add_argument(
        "--share",
        type=float,
        default=0.5,
        help="share of the account's EXOTEL_RATE_LIMIT for listing and for the booked "
        "fetches (default 0.5: live calls keep the rest)",
    )
    b.add_argument(
        "--past-retention",
        action="store_true",
        help="allow a range older than RETENTION_HOURS (only if none of it reached the sinks)",
    )
    b.set_defaults(func=cmd_backfill)


def cmd_backfill(args: argparse.Namespace, *, out: TextIO | None = None) -> int:
    from worker.runtime import Runtime

    stream = out or sys.stdout
    if not 0 < args.share <= 0.9:
        raise SettingsError("--share", "must be above 0 and at most 0.9")
    settings = Settings.from_env()
    rt = Runtime(settings)
    account = rt.account(args.account or rt.first_account)
    if not account.configured:
        raise SettingsError("EXOTEL_ACCOUNT_SID", f"account {account.name} has no credentials")
    now = datetime.now(INDIA)
    since = backfill.parse_time(args.since)
    asked_until = backfill.parse_time(args.until, end=True)
    until = backfill.check_range(
        since,
        asked_until,
        now,
        settings.retention_hours,
        args.past_retention,
    )
    report = Reporter(sys.stderr if stream is sys.stdout else stream)
    what = "dry run: nothing will be booked" if args.dry_run else "booking"
    print(f"backfill {account.name}: {stamp(since)} to {stamp(until)} IST ({what})", file=stream)
    stop = threading.Event()
    try:
        tally, resumed = backfill.run(
            rt,
            account,
            since,
            until,
            dry_run=args.dry_run,
            share=args.share,
            on_page=report.page,
            stop=stop,
            asked_until=asked_until,
        )
    except KeyboardInterrupt:
        stop.set()
        report.end()
        print(
            "interrupted: what was listed so far is booked; run the same command again "
            "to carry on from the next page",
            file=stream,
        )
        return 130
    except ExolegsError as err:
        report.end()
        print(f"backfill stopped: {err.message}; run the same command again to resume", file=stream)
        return 1
    report.end()
    _summary(stream, tally, resumed=resumed, dry_run=args.dry_run)
    return 0


def _summary(stream: TextIO, tally: Tally, *, resumed: bool, dry_run: bool) -> None:
    head = "dry run" if dry_run else "done"
    if resumed:
        head += " (resumed; counts include the earlier run)"
    print(f"{head}: {tally.describe(dry_run=dry_run)}", file=stream)
    print(f"  listed         {tally.listed}", file=stream)
    print(f"  already known  {tally.known}", file=stream)
    print(f"  {'would book' if dry_run else 'booked':<14} {tally.booked}", file=stream)
    for why, n in sorted(tally.skipped.items()):
        print(f"  skipped        {n} ({why})", file=stream)
    if dry_run and tally.booked:
        print("run it again without --dry-run to book them", file=stream)
