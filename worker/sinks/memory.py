"""An in-process sink that tests use instead of mocks.

``memory://bucket`` keeps delivered records in a list per bucket (one process
only). ``?fail=N&kind=transient|permanent|rate_limited|config`` fails the first N
deliveries, so retry paths can be exercised with real code.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from typing import ClassVar
from urllib.parse import urlsplit

from worker.errors import ConfigFaultError, PermanentError, RateLimitedError, TransientError
from worker.sinks.base import CallRecord, Sink, SinkContext


class MemorySink(Sink):
    scheme = "memory"
    url_help = "memory://BUCKET[?fail=N&kind=transient|permanent|rate_limited|config] - tests"
    native_idempotency = True

    buckets: ClassVar[dict[str, dict[str, CallRecord]]] = defaultdict(dict)
    attempts: ClassVar[dict[str, int]] = defaultdict(int)
    _lock = threading.Lock()

    def __init__(self, url: str, context: SinkContext) -> None:
        super().__init__(url, context)
        self.bucket = urlsplit(url).netloc or "default"
        self.fail = int(self.query.get("fail", "0"))
        self.kind = self.query.get("kind", "transient")

    def deliver(self, record: CallRecord) -> None:
        with self._lock:
            self.attempts[self.bucket] += 1
            if self.attempts[self.bucket] <= self.fail:
                message = f"memory sink {self.bucket}: injected failure"
                if self.kind == "permanent":
                    raise PermanentError(message)
                if self.kind == "rate_limited":
                    raise RateLimitedError(message, retry_after=1.0)
                if self.kind == "config":
                    raise ConfigFaultError(message)
                raise TransientError(message)
            self.buckets[self.bucket][record["call_sid"]] = record

    @classmethod
    def records(cls, bucket: str = "default") -> list[CallRecord]:
        return list(cls.buckets[bucket].values())

    @classmethod
    def reset(cls) -> None:
        with cls._lock:
            cls.buckets.clear()
            cls.attempts.clear()
