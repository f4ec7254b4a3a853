"""The simulator's call log: v1 Bulk Call Details (``Calls.json``) and placed calls.

Exotel lists an account's finished calls at ``GET /v1/Accounts/<sid>/Calls.json``
(https://developer.exotel.com/api/call-details, "bulk"): filtered by
``DateCreated=gte:YYYY-MM-DD HH:MM:SS;lte:…`` in IST (no offset), sorted by
``SortBy=DateCreated:asc|desc`` (descending by default), ``PageSize`` 1-100
(50 by default), and paged through ``Metadata.NextPageUri``, a relative URI
carrying an ``After`` cursor. Calls in progress are not listed. Without the
filter the last 31 days are listed.

``POST /_sim/calls`` (not Exotel's) places calls: they join the log as if
they had just ended, and each one's v1 StatusCallback is POSTed to
``callback_url``, except a ``drop`` share, which Exotel "loses": the demo
and the tests then show the sweeper catching them.
"""

from __future__ import annotations

import hashlib
import random
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any
from urllib.parse import urlencode

import requests

IST = timezone(timedelta(hours=5, minutes=30), "IST")
TIME_FORMAT = "%Y-%m-%d %H:%M:%S"
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 100
DEFAULT_WINDOW = timedelta(days=31)
_OUTCOMES = ("completed",) * 7 + ("no-answer", "busy", "failed")


class ListingError(ValueError):
    """A listing request Exotel would refuse (400)."""


@dataclass
class _Logged:
    call: dict[str, Any]
    created: datetime
    ended: datetime


@dataclass
class CallLog:
    """Every placed call per account, for ``Calls.json``; thread-safe."""

    _calls: dict[str, dict[str, _Logged]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def add(
        self, account_sid: str, call: dict[str, Any], created: datetime, ended: datetime
    ) -> None:
        with self._lock:
            self._calls.setdefault(account_sid, {})[call["Sid"]] = _Logged(call, created, ended)

    def ended_at(self, account_sid: str, call_sid: str) -> datetime | None:
        with self._lock:
            logged = self._calls.get(account_sid, {}).get(call_sid)
        return logged.ended if logged else None

    def clear(self) -> None:
        with self._lock:
            self._calls.clear()

    def page(self, account_sid: str, args: dict[str, str], now: datetime) -> dict[str, Any]:
        """The ``Calls.json`` body for these query arguments (the documented envelope)."""
        since, until = _date_filter(args.get("DateCreated"), now)
        order = (args.get("SortBy") or "DateCreated:desc").lower()
        if order not in ("datecreated:asc", "datecreated:desc"):
            raise ListingError(f"SortBy must be DateCreated:asc or DateCreated:desc, got {order!r}")
        try:
            size = int(args.get("PageSize") or DEFAULT_PAGE_SIZE)
        except ValueError:
            raise ListingError("PageSize must be a number") from None
        if not 1 <= size <= MAX_PAGE_SIZE:
            raise ListingError(f"PageSize must be 1-{MAX_PAGE_SIZE}")
        with self._lock:
            found = [
                c for c in self._calls.get(account_sid, {}).values() if since <= c.created <= until
            ]
        found.sort(key=lambda c: (c.created, c.call["Sid"]), reverse=order.endswith("desc"))
        start = 0
        after = args.get("After")
        if after:
            ids = [c.call["Sid"] for c in found]
            start = ids.index(after) + 1 if after in ids else len(ids)
        chunk = found[start : start + size]
        base = f"/v1/Accounts/{account_sid}/Calls.json"
        keep = {k: v for k, v in args.items() if k in ("DateCreated", "SortBy", "PageSize")}
        keep["PageSize"] = str(size)
        more = start + size < len(found)
        return {
            "Metadata": {
                "Total": len(found),
                "PageSize": size,
                "FirstPageUri": f"{base}?{urlencode(keep)}",
                "PrevPageUri": (
                    f"{base}?{urlencode({**keep, 'Before': chunk[0].call['Sid']})}"
                    if start and chunk
                    else None
                ),
                "NextPageUri": (
                    f"{base}?{urlencode({**keep, 'After': chunk[-1].call['Sid']})}"
                    if more and chunk
                    else None
                ),
            },
            "Calls": [c.call for c in chunk],
        }


def _parse(text: str) -> datetime:
    try:
        return datetime.strptime(text.strip(), TIME_FORMAT).replace(tzinfo=IST)
    except ValueError:
        raise ListingError(f"DateCreated time {text[:40]!r} is not YYYY-MM-DD HH:MM:SS") from None


def _date_filter(raw: str | None, now: datetime) -> tuple[datetime, datetime]:
    """``gte:…;lte:…`` (either part optional) -> (since, until); at most one month apart."""
    if not raw:
        return now - DEFAULT_WINDOW, now
    since, until = now - DEFAULT_WINDOW, now
    for part in raw.split(";"):
        op, sep, value = part.partition(":")
        if not sep or op not in ("gte", "lte", "gt", "lt"):
            raise ListingError(f"DateCreated part {part[:40]!r} is not gte:/lte:")
        if op.startswith("gt"):
            since = _parse(value)
        else:
            until = _parse(value)
    if until - since > timedelta(days=31):
        raise ListingError("DateCreated range is over 1 month")
    return since, until


def _number(rng: random.Random) -> str:
    return "0" + rng.choice("9876") + "".join(rng.choice("0123456789") for _ in range(9))


def place(
    log: CallLog,
    account_sid: str,
    sids: list[str],
    *,
    now: datetime,
    duration: int = 60,
    direction: str = "outbound-api",
) -> list[dict[str, Any]]:
    """Put calls that just ended into the log; returns their Calls.json entries."""
    placed = []
    for sid in sids:
        rng = random.Random(hashlib.sha256(sid.encode()).digest())
        status = rng.choice(_OUTCOMES)
        talk = duration if status == "completed" else 0
        created = now - timedelta(seconds=duration + 5)
        call = {
            "Sid": sid,
            "ParentCallSid": "",
            "DateCreated": created.strftime(TIME_FORMAT),
            "DateUpdated": now.strftime(TIME_FORMAT),
            "AccountSid": account_sid,
            "To": _number(rng),
            "From": _number(rng),
            "PhoneNumberSid": "08047112345",
            "Status": status,
            "StartTime": created.strftime(TIME_FORMAT),
            "EndTime": now.strftime(TIME_FORMAT),
            "Duration": str(duration + 5),
            "Price": "1.500" if talk else "0.000",
            "Direction": direction,
            "AnsweredBy": "human" if talk else None,
            "ForwardedFrom": None,
            "CallerName": None,
            "Uri": f"/v1/Accounts/{account_sid}/Calls/{sid}.json",
            "RecordingUrl": None,
        }
        log.add(account_sid, call, created, now)
        placed.append(call)
    return placed


def status_callback(call: dict[str, Any]) -> dict[str, str]:
    """The v1 StatusCallback Exotel POSTs for a finished call (terminal event fields)."""
    fields = {
        "CallSid": call["Sid"],
        "EventType": "terminal",
        "Status": call["Status"],
        "DateUpdated": call["DateUpdated"],
        "DateCreated": call["DateCreated"],
        "Direction": call["Direction"],
        "From": call["From"],
        "To": call["To"],
        "StartTime": call["StartTime"],
        "EndTime": call["EndTime"],
        "ConversationDuration": call["Duration"] if call["Status"] == "completed" else "0",
    }
    return fields


def send_callbacks(
    url: str, calls: list[dict[str, Any]], drop: float, seed: int | None = None
) -> tuple[list[str], list[str]]:
    """POST each call's StatusCallback to ``url`` except a ``drop`` share; (sent, dropped)."""
    rng = random.Random(seed)
    dropped = {c["Sid"] for c in calls if rng.random() < drop}
    to_send = [c for c in calls if c["Sid"] not in dropped]
    local = threading.local()

    def one(call: dict[str, Any]) -> None:
        session = getattr(local, "session", None) or requests.Session()
        local.session = session
        for _ in range(20):  # Exotel retries a failed callback; so do we, briefly
            try:
                if session.post(url, data=status_callback(call), timeout=10).status_code < 500:
                    return
            except requests.RequestException:
                pass
            threading.Event().wait(0.5)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(one, to_send))
    return [c["Sid"] for c in to_send], sorted(dropped)
