"""Redis key names outside the job book (see worker/jobs for the book's own)."""

from __future__ import annotations

from worker.settings import DEFAULT_ACCOUNT

PREFIX = "exolegs"


def namespace(account: str = DEFAULT_ACCOUNT) -> str:
    """Where one account's calls live: ``exolegs`` for ``default``, ``exolegs:acct:<name>`` else.

    A callback on one account's URL can then never mark, fetch or deliver a
    call of another account, even with the same call sid.
    """
    return PREFIX if account == DEFAULT_ACCOUNT else f"{PREFIX}:acct:{account}"


def call(call_sid: str, account: str = DEFAULT_ACCOUNT) -> str:
    """Hash of everything received for a call: events seen, callbacks, whether a fetch is booked."""
    return f"{namespace(account)}:call:{call_sid}"


def record(call_sid: str, account: str = DEFAULT_ACCOUNT) -> str:
    """The enriched record (JSON) once fetched, kept for deliveries and replays."""
    return f"{namespace(account)}:record:{call_sid}"


def ledger(call_sid: str, account: str = DEFAULT_ACCOUNT) -> str:
    """Hash sink name -> delivered-at: each sink gets each call once."""
    return f"{namespace(account)}:ledger:{call_sid}"


# The job book's keys (jobs, job state, locks, sink slots, dead letters) are
# named in worker/jobs/book.py and worker/jobs/deadletters.py, which alone write them.

EPOCH = f"{PREFIX}:epoch"  # hash: id, created_at[, wiped_at, previous]; see worker/checks.py


def dead_of(call_sid: str, account: str = DEFAULT_ACCOUNT) -> str:
    """Set of a call's dead job ids: while it is not empty the call's state has no TTL."""
    return f"{namespace(account)}:dead-of:{call_sid}"


SINKS = f"{PREFIX}:sinks"  # hash: <account>/<sink> -> when a running worker last announced it


def bucket(name: str) -> str:
    """Token bucket state for a rate limit (Exotel account, sink, callback client)."""
    return f"{PREFIX}:bucket:{name}"


def circuit(name: str) -> str:
    return f"{PREFIX}:circuit:{name}"


#: Set of the names of the open circuits; worker/jobs/circuit.py alone writes it.
CIRCUITS = f"{PREFIX}:circuits"


def token_cache(name: str) -> str:
    """Shared OAuth access tokens (Zoho, Salesforce), so workers do not each mint one."""
    return f"{PREFIX}:oauth:{name}"


READINESS_DELAY = f"{PREFIX}:readiness:delay"  # the raised first-fetch delay (seconds)


def readiness(minute: int) -> str:
    """Hash of one minute's first legs fetches: how many, how many not ready, time to ready."""
    return f"{PREFIX}:readiness:{minute}"


def readiness_prefix() -> str:
    """:func:`readiness` without its minute, for Lua that reads the minute off Redis's clock."""
    return readiness(0)[:-1]


def reconcile(account: str, what: str) -> str:
    """The sweeper's state per account: ``lock:<tier>``, ``last:<tier>``, ``backfill:<id>``."""
    return f"{PREFIX}:reconcile:{account}:{what}"
