"""Dead letters: work that ran out of retries or can never succeed, kept for replay."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from worker import keys
from worker.jobs import DELIVER, JobBook, JobId
from worker.settings import DEFAULT_ACCOUNT

if TYPE_CHECKING:
    from redis import Redis


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
    callback: dict[str, Any] | None = None
    account: str = DEFAULT_ACCOUNT

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _text(raw: Any) -> str:
    return raw.decode() if isinstance(raw, bytes) else str(raw)


def _f(value: str | None) -> float | None:
    return float(value) if value else None


class DeadLetters:
    def __init__(self, redis: Redis, book: JobBook) -> None:
        self.redis = redis
        self.book = book

    def add(
        self,
        job: JobId,
        *,
        reason: str,
        error: str,
        upstream_status: int | None = None,
        upstream_code: int | str | None = None,
        callback: dict[str, Any] | None = None,
    ) -> DeadLetter:
        job_id = str(job)
        info = self.book.info(job_id)
        letter = DeadLetter(
            job_id=job_id,
            call_sid=job.call_sid,
            sink=job.sink if job.kind == DELIVER else None,
            reason=reason,
            attempts=int(info.get("attempts", "0") or 0),
            last_error=error,
            first_attempt_at=_f(info.get("first_attempt")),
            last_attempt_at=_f(info.get("last_attempt")),
            failed_at=time.time(),
            upstream_status=upstream_status,
            upstream_code=upstream_code,
            callback=callback,
            account=job.account,
        )
        pipe = self.redis.pipeline()
        pipe.set(keys.dead(job_id), json.dumps(letter.to_json(), default=str))
        pipe.zadd(keys.DEAD, {job_id: letter.failed_at})
        pipe.zrem(keys.JOBS, job_id)
        pipe.delete(keys.job(job_id))
        pipe.execute()
        return letter

    def __iter__(self) -> Iterator[DeadLetter]:
        return self.listed()

    def listed(self, account: str | None = None) -> Iterator[DeadLetter]:
        """Every dead letter, oldest first; only one account's with ``account``."""
        for raw_id in self.redis.zrange(keys.DEAD, 0, -1):
            job_id = _text(raw_id)
            if account is not None and JobId.parse(job_id).account != account:
                continue
            letter = self.get(job_id)
            if letter is not None:
                yield letter

    def get(self, job_id: str) -> DeadLetter | None:
        raw = self.redis.get(keys.dead(job_id))
        return DeadLetter(**json.loads(raw)) if raw else None

    def for_call(self, call_sid: str, account: str | None = None) -> list[DeadLetter]:
        return [d for d in self.listed(account) if d.call_sid == call_sid]

    def count(self) -> int:
        return int(self.redis.zcard(keys.DEAD))

    def replay(self, letter: DeadLetter, *, force: bool = False) -> None:
        """Book the job again, now, with a fresh attempt count; ``force`` ignores the ledger."""
        pipe = self.redis.pipeline()
        pipe.delete(keys.job(letter.job_id))
        if force:
            pipe.hset(keys.job(letter.job_id), "force", "1")
        pipe.zadd(keys.JOBS, {letter.job_id: time.time()})
        pipe.delete(keys.dead(letter.job_id))
        pipe.zrem(keys.DEAD, letter.job_id)
        pipe.execute()

    def discard(self, job_ids: list[str]) -> int:
        """Remove these dead letters for good (the console's purge, after its confirmation)."""
        if not job_ids:
            return 0
        pipe = self.redis.pipeline()
        for job_id in job_ids:
            pipe.zrem(keys.DEAD, job_id)
            pipe.delete(keys.dead(job_id))
        return sum(int(r) for r in pipe.execute()[0::2])

    def purge(self, older_than_seconds: float, account: str | None = None) -> int:
        """Drop dead letters older than that (only one account's with ``account``)."""
        cutoff = time.time() - older_than_seconds
        ids = [_text(i) for i in self.redis.zrangebyscore(keys.DEAD, "-inf", cutoff)]
        if account is not None:
            ids = [i for i in ids if JobId.parse(i).account == account]
        if not ids:
            return 0
        pipe = self.redis.pipeline()
        for raw_id in ids:
            job_id = _text(raw_id)
            pipe.delete(keys.dead(job_id))
            pipe.zrem(keys.DEAD, job_id)
        pipe.execute()
        return len(ids)
