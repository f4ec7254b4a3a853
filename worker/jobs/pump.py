"""The pump: moves due jobs from the book to Celery, one per worker process."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from worker.jobs.book import Batch, JobBook

log = logging.getLogger("exolegs.jobs")


class Pump:
    """Moves due jobs from the book to Celery; one per worker process, all cooperating.

    The book's claim groups jobs of the same kind (and sink) into small
    batches, so a backlog does not pay a task's overhead per job, and caps
    each sink's messages in flight, so one slow sink only holds up its own
    deliveries. The pump tops the broker ``queue`` up only while it holds
    fewer than ``high_water`` messages and its oldest has waited less than a
    quarter of the lease: the limit is in time, not only in messages, so no
    message waits in the queue anywhere near its lease.
    """

    def __init__(
        self,
        book: JobBook,
        dispatch: Callable[[Batch], None],
        *,
        queue: str = "",
        interval: float = 0.05,
        high_water: int = 64,
        limit: int = 1024,
    ) -> None:
        self.book = book
        self.dispatch = dispatch
        self.queue = queue
        self.interval = interval
        self.high_water = high_water
        self.limit = limit
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def run_once(self) -> int:
        batches = self.book.claim(self.limit, queue=self.queue, high_water=self.high_water)
        for batch in batches:
            self.dispatch(batch)
        return sum(len(b.jobs) for b in batches)

    def run(self) -> None:
        failures = 0
        while not self._stop.is_set():
            try:
                moved = self.run_once()
                failures = 0
            except Exception as err:  # noqa: BLE001 - the pump must outlive Redis outages
                failures += 1
                if failures == 1 or failures % 50 == 0:
                    log.warning("job pump cannot reach Redis (%s); jobs wait in the book", err)
                self._stop.wait(min(5.0, self.interval * failures))
                continue
            if moved == 0:
                self._stop.wait(self.interval)

    def start(self) -> Pump:
        self._thread = threading.Thread(target=self.run, name="exolegs-pump", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
