"""``exolegs backfill``: list any range of the account's calls and book those never seen.

The same listing and intake as the sweeper (:mod:`worker.calls.reconcile`),
over a range an operator names: cut into pieces of at most 28 days (Exotel's
Bulk Call Details takes at most one month per request, over the last six
months), each listed page by page. Where it got to is kept in Redis after
every page (``exolegs:reconcile:<account>:backfill:<since>/<until>``), so an
interrupted backfill started again with the same range carries on from the
next page; booking is idempotent, so a page seen twice books nothing twice.

Booked calls are spread out in the job book at the backfill's share of the
account's rate, so a large backfill never crowds out live calls' fetches.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from worker import keys
from worker.calls.provenance import Source
from worker.calls.reconcile import INDIA, TIME_FORMAT, Tally, chunks, stamp
from worker.errors import SettingsError

if TYPE_CHECKING:
    from worker.runtime import Runtime
    from worker.settings import Account

#: Exotel lists calls at most this old.
HISTORY = timedelta(days=183)
STATE_TTL = 30 * 86400


@dataclass
class Progress:
    """Where a backfill is: the piece, the page after the last one done, the tally so far."""

    chunk: int
    page_uri: str | None
    tally: Tally
    pieces: int


def parse_time(text: str, *, end: bool = False) -> datetime:
    """``YYYY-MM-DD`` (the whole day) or ``YYYY-MM-DD HH:MM[:SS]``, read as India time."""
    value = text.strip()
    for fmt in (TIME_FORMAT, "%Y-%m-%d %H:%M", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d"):
        try:
            moment = datetime.strptime(value, fmt).replace(tzinfo=INDIA)
        except ValueError:
            continue
        if fmt == "%Y-%m-%d" and end:
            moment += timedelta(days=1, seconds=-1)
        return moment
    name = "--until" if end else "--since"
    raise SettingsError(name, f"expected YYYY-MM-DD or 'YYYY-MM-DD HH:MM:SS' (IST), got {text!r}")


def check_range(
    since: datetime, until: datetime, now: datetime, retention_hours: float, past_retention: bool
) -> datetime:
    """Refuse what would be wrong; returns ``until`` clamped to now."""
    until = min(until, now)
    if since > until:
        raise SettingsError("--since", "must be before --until (and not in the future)")
    if since < now - HISTORY:
        raise SettingsError("--since", "Exotel lists calls at most 6 months old")
    oldest_known = now - timedelta(hours=retention_hours)
    if since < oldest_known and not past_retention:
        raise SettingsError(
            "--since",
            f"reaches before {stamp(oldest_known)} IST (RETENTION_HOURS={retention_hours:g}): "
            "exolegs no longer remembers which of those calls it delivered, so any it did "
            "would be delivered again; start later, or add --past-retention if none of them "
            "ever reached the sinks (sinks that upsert are safe either way)",
        )
    return until


def state_key(account: str, since: datetime, until: datetime) -> str:
    return keys.reconcile(account, f"backfill:{stamp(since)}/{stamp(until)}")


def load(rt: Runtime, key: str, pieces: int) -> Progress | None:
    raw = rt.redis.get(key)
    if not raw:
        return None
    data = json.loads(raw)
    return Progress(
        int(data["chunk"]), data.get("page_uri"), Tally.from_json(data["tally"]), pieces
    )


class Spread:
    """Due times for booked fetches, ``spacing`` seconds apart from now on."""

    def __init__(self, spacing: float) -> None:
        self.spacing = spacing
        self.start = time.time()
        self.n = 0

    def __call__(self) -> float:
        delay = max(0.0, self.start + self.n * self.spacing - time.time())
        self.n += 1
        return delay


def _dump(progress: Progress) -> str:
    return json.dumps(
        {"chunk": progress.chunk, "page_uri": progress.page_uri, "tally": progress.tally.to_json()}
    )


def run(
    rt: Runtime,
    account: Account,
    since: datetime,
    until: datetime,
    *,
    dry_run: bool,
    share: float,
    on_page: Callable[[Progress, datetime, datetime], None],
    stop: threading.Event | None = None,
    asked_until: datetime | None = None,
) -> tuple[Tally, bool]:
    """List and book the range; returns (tally, resumed). Saves its place after every page.

    The place is kept under the range as asked (``asked_until``, before it
    was clamped to now), so the same command finds it again.
    """
    from worker.calls.reconcile import sweep_pages

    pieces = list(chunks(since, until))
    key = state_key(account.name, since, asked_until or until)
    saved = None if dry_run else load(rt, key, len(pieces))
    progress = saved or Progress(0, None, Tally(), len(pieces))
    spread = Spread(account.rate_limit.period / (account.rate_limit.count * share))
    for index in range(progress.chunk, len(pieces)):
        start, end = pieces[index]
        resume_at = progress.page_uri if index == progress.chunk else None
        for tally, after in sweep_pages(
            rt,
            account,
            start,
            end,
            source=Source.BACKFILL,
            dry_run=dry_run,
            page_uri=resume_at,
            share=share,
            fetch_delay=spread,
            stop=stop,
        ):
            progress.tally.add(tally)
            progress.chunk, progress.page_uri = index, after
            if after is None:  # this piece is done: the next one starts at its first page
                progress.chunk, progress.page_uri = index + 1, None
            if not dry_run:
                rt.redis.set(key, _dump(progress), ex=STATE_TTL)
            on_page(progress, start, end)
    if not dry_run:
        rt.redis.delete(key)
    return progress.tally, saved is not None
