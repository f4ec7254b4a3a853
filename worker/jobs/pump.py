"""The pump: moves due jobs from the book to Celery, one per worker process."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from worker.jobs.book import JobBook, JobId

log = logging.getLogger("exolegs.jobs")


class Pump:
    """Moves due jobs from the book to Celery; one per worker process, all cooperating.

    Jobs of the same kind, account (and sink) go to Celery in small batches, so a
    backlog does not pay a task's overhead per job, while one slow sink or
    one account's failing Exotel only ever holds up its own jobs. The pump tops
    the broker queue up to ``high_water`` messages and no further: a job waiting in the queue longer
    than its lease would otherwise be claimed and sent a second time.
    """

    def __init__(
        self,
        book: JobBook,
        dispatch: Callable[[list[JobId]], None],
        *,
        queued: Callable[[], int] = lambda: 0,
        interval: float = 0.05,
        high_water: int = 64,
        batch: int = 16,
    ) -> None:
        self.book = book
        self.dispatch = dispatch
        self.queued = queued
        self.interval = interval
        self.high_water = high_water
        self.batch = batch
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def run_once(self) -> int:
        room = self.high_water - self.queued()
        if room <= 0:
            return 0
        claimed = self.book.claim(room * self.batch)
        groups: dict[tuple[str, str, str | None], list[JobId]] = {}
        for raw in claimed:
            job = JobId.parse(raw)
            groups.setdefault((job.kind, job.account, job.sink), []).append(job)
        for group in groups.values():
            # Small backlogs go one job per message, for latency and spread.
            size = max(1, min(self.batch, len(group) // 4))
            for start in range(0, len(group), size):
                self.dispatch(group[start : start + size])
        return len(claimed)

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
