"""Dead letters: work that ran out of retries or can never succeed, kept for replay.

A dead letter may be replayed days later, long after ``RETENTION_HOURS``. So
while a call has one, the call's state (record, ledger, callbacks) is kept
with no TTL, and the letter keeps its own copy of the terminal callback: a
replay still knows which sinks have the call, and a record fetched again
still carries the callback's ``status`` and fields. When a call's last dead
letter is replayed or purged, its state gets ``RETENTION_HOURS`` again.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Any

from worker import keys
from worker.calls.intake import restore_callback, terminal_callback
from worker.jobs.book import DELIVER, JOBS, JobBook, JobId, job_key, lock_key
from worker.jobs.ledger import state_keys
from worker.keys import PREFIX
from worker.settings import DEFAULT_ACCOUNT

if TYPE_CHECKING:
    from redis import Redis

DEFAULT_RETENTION = 48 * 3600

DEAD = f"{PREFIX}:dead"  # sorted set: job id -> failed-at (Redis clock)


def dead_key(job_id: str) -> str:
    """The dead letter of one job (JSON)."""
    return f"{PREFIX}:dead:{job_id}"


@dataclass
class DeadLetter:
    job_id: str
    call_sid: str
    sink: str | None  # None for the legs fetch
    reason: str
    attempts: int
    last_error: str
    first_attempt_at: float | None
    last_attempt_at: float | None
    failed_at: float
    upstream_status: int | None = None
    upstream_code: int | str | None = None
    callback: dict[str, Any] | None = None  # the terminal callback's fields
    status: str | None = None  # its normalised status, for a record fetched again
    direction: str | None = None
    account: str = DEFAULT_ACCOUNT

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> DeadLetter:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def _text(raw: Any) -> str:
    return raw.decode() if isinstance(raw, bytes) else str(raw)


def _f(value: str | None) -> float | None:
    return float(value) if value else None


# KEYS: letter, dead zset, jobs zset, job hash, dead-of set, job lock, then the
# call's state keys. ARGV: letter json, job id, fencing token ('' = unfenced).
# Only the run that owns the job (holds its lock, or nobody does and its claim
# is current) may: then it stores the letter, takes the job out of the book,
# and holds the call's state with no TTL. Returns failed-at, or '' if not owner.
_ADD = """
if ARGV[3] ~= '' then
  local holder = redis.call('GET', KEYS[6])
  local owns = holder == ARGV[3]
  if not holder then
    local score = redis.call('ZSCORE', KEYS[3], ARGV[2])
    owns = score ~= false and tonumber(score) == tonumber(ARGV[3])
  end
  if not owns then return '' end
end
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local letter = cjson.decode(ARGV[1])
letter['failed_at'] = now
redis.call('SET', KEYS[1], cjson.encode(letter))
redis.call('ZADD', KEYS[2], now, ARGV[2])
redis.call('ZREM', KEYS[3], ARGV[2])
redis.call('DEL', KEYS[4], KEYS[6])
redis.call('SADD', KEYS[5], ARGV[2])
for i = 7, #KEYS do redis.call('PERSIST', KEYS[i]) end
return tostring(now)
"""

# KEYS: letter, dead zset, dead-of set, then the call's state keys. ARGV: job
# id, retention. Drops the letter; once the call has none left, its state
# gets RETENTION_HOURS again. Returns 1 if the letter was there.
_RELEASE = """
local had = redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('SREM', KEYS[3], ARGV[1])
if redis.call('SCARD', KEYS[3]) == 0 then
  for i = 4, #KEYS do
    if redis.call('TTL', KEYS[i]) == -1 then redis.call('EXPIRE', KEYS[i], ARGV[2]) end
  end
end
return had
"""


class DeadLetters:
    def __init__(
        self, redis: Redis, book: JobBook, *, retention_seconds: int = DEFAULT_RETENTION
    ) -> None:
        self.redis = redis
        self.book = book
        self.retention_seconds = retention_seconds
        self._add = redis.register_script(_ADD)
        self._release = redis.register_script(_RELEASE)

    def add(
        self,
        job: JobId,
        *,
        token: str | None = None,
        reason: str,
        error: str,
        upstream_status: int | None = None,
        upstream_code: int | str | None = None,
        callback: dict[str, Any] | None = None,
    ) -> DeadLetter | None:
        """Dead-letter a job, with a copy of its call's terminal callback (read here).

        Fenced by the run's ``token`` when given: None when that run no longer
        owns the job (another claim's run has it), and nothing is changed.
        """
        job_id = str(job)
        info = self.book.info(job_id)
        fields_, status, direction = terminal_callback(self.redis, job.call_sid, job.account)
        letter = DeadLetter(
            job_id=job_id,
            call_sid=job.call_sid,
            sink=job.sink if job.kind == DELIVER else None,
            reason=reason,
            attempts=int(info.get("attempts", "0") or 0),
            last_error=error,
            first_attempt_at=_f(info.get("first_attempt")),
            last_attempt_at=_f(info.get("last_attempt")),
            failed_at=0.0,
            upstream_status=upstream_status,
            upstream_code=upstream_code,
            callback=callback if callback is not None else (fields_ or None),
            status=status,
            direction=direction,
            account=job.account,
        )
        raw = self._add(
            keys=[
                dead_key(job_id),
                DEAD,
                JOBS,
                job_key(job_id),
                keys.dead_of(job.call_sid, job.account),
                lock_key(job_id),
                *state_keys(job.call_sid, job.account),
            ],
            args=[json.dumps(letter.to_json(), default=str), job_id, token or ""],
        )
        if not _text(raw):
            return None
        letter.failed_at = float(_text(raw))
        return letter

    def __iter__(self) -> Iterator[DeadLetter]:
        return self.listed()

    def listed(self, account: str | None = None) -> Iterator[DeadLetter]:
        """Every dead letter, oldest first; only one account's with ``account``."""
        for raw_id in self.redis.zrange(DEAD, 0, -1):
            job_id = _text(raw_id)
            if account is not None and JobId.parse(job_id).account != account:
                continue
            letter = self.get(job_id)
            if letter is not None:
                yield letter

    def get(self, job_id: str) -> DeadLetter | None:
        raw = self.redis.get(dead_key(job_id))
        return DeadLetter.from_json(json.loads(raw)) if raw else None

    def for_call(self, call_sid: str, account: str | None = None) -> list[DeadLetter]:
        return [d for d in self.listed(account) if d.call_sid == call_sid]

    def count(self) -> int:
        return int(self.redis.zcard(DEAD))

    def _drop(self, job_id: str) -> bool:
        job = JobId.parse(job_id)
        sid, account = job.call_sid, job.account
        raw = self._release(
            keys=[
                dead_key(job_id),
                DEAD,
                keys.dead_of(sid, account),
                *state_keys(sid, account),
            ],
            args=[job_id, self.retention_seconds],
        )
        return bool(raw)

    def replay(self, letter: DeadLetter, *, force: bool = False) -> None:
        """Book the job again, now, with a fresh attempt count; ``force`` ignores the ledger.

        If the call's hash has lost its terminal callback, the letter's copy
        goes back first, so a record fetched again keeps ``status`` and
        ``callback``.
        """
        if letter.callback is not None or letter.status is not None:
            restore_callback(
                self.redis,
                letter.call_sid,
                letter.callback or {},
                status=letter.status,
                direction=letter.direction,
                retention_seconds=self.retention_seconds,
                account=letter.account,
            )
        self.book.requeue(letter.job_id, force=force)
        self._drop(letter.job_id)

    def discard(self, job_ids: list[str]) -> int:
        """Remove these dead letters for good (the console's purge, after its confirmation).

        Each goes as in :meth:`purge`: the call's state gets its TTL back once
        its last letter is gone.
        """
        return sum(1 for job_id in job_ids if self._drop(job_id))

    def ids(self) -> list[str]:
        """Every dead letter's job id, oldest first (no letter is read)."""
        return [_text(raw) for raw in self.redis.zrange(DEAD, 0, -1)]

    def purge(
        self,
        older_than_seconds: float,
        account: str | None = None,
        *,
        on_progress: Callable[[int], None] | None = None,
    ) -> int:
        """Drop dead letters older than that (only one account's with ``account``).

        ``on_progress(n)`` is called as letters go, for a progress display.
        """
        ids = self.book.older_than(DEAD, older_than_seconds)
        if account is not None:
            ids = [i for i in ids if JobId.parse(i).account == account]
        removed = 0
        for job_id in ids:
            removed += self._drop(job_id)
            if on_progress is not None:
                on_progress(1)
        return removed
