"""A sink that accepts everything and keeps nothing: for benchmarks and dry runs."""

from __future__ import annotations

from worker.sinks.base import CallRecord, Sink


class NullSink(Sink):
    scheme = "null"
    url_help = "null:// - accepts every record and discards it"
    native_idempotency = True

    def deliver(self, record: CallRecord) -> None:
        return None
