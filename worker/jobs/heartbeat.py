"""Keeps the locks of this process's running jobs alive, so the pump leaves them alone.

One daemon thread per worker process (started after fork, on first use)
renews, every few seconds, the lock of each run in progress and the
concurrency slot of each message in progress. A process that dies stops
renewing: its locks lapse within one lease and the pump claims the work
again. A run is never longer than the task's hard time limit.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from worker.jobs.book import JobBook

log = logging.getLogger("exolegs.jobs")


class Heartbeat:
    def __init__(self, book: JobBook, *, interval: float | None = None) -> None:
        self.book = book
        self.interval = interval if interval is not None else max(0.2, book.lease_seconds / 4)
        self._runs: dict[str, str] = {}
        self._slots: dict[str, str] = {}
        self._mutex = threading.Lock()
        self._pid = 0
        self._stop = threading.Event()

    def _ensure_thread(self) -> None:
        if self._pid == os.getpid():
            return
        self._pid = os.getpid()
        self._stop = threading.Event()
        threading.Thread(target=self._loop, name="exolegs-heartbeat", daemon=True).start()

    @contextmanager
    def run(self, job_id: str, token: str) -> Iterator[None]:
        """Renew the lock of the run of ``job_id`` under claim ``token`` while inside."""
        with self._mutex:
            self._ensure_thread()
            self._runs[job_id] = token
        try:
            yield
        finally:
            self.ended(job_id)

    def ended(self, job_id: str) -> None:
        """The run's end is being committed (its lock goes with it): stop renewing it now,
        so a beat in between does not count the lock as lost."""
        with self._mutex:
            self._runs.pop(job_id, None)

    @contextmanager
    def slot(
        self,
        sink: str | None,
        member: str | None,
        on_free: Callable[[int], object] | None = None,
    ) -> Iterator[None]:
        """Hold a message's place under its sink's cap while inside; free it after.

        ``on_free`` is told how many of the sink's waiting jobs the freed slot made due.
        """
        if sink is None or member is None:
            yield
            return
        with self._mutex:
            self._ensure_thread()
            self._slots[member] = sink
        try:
            yield
        finally:
            with self._mutex:
                self._slots.pop(member, None)
            try:
                woken = self.book.free_slot(sink, member)
            except Exception as err:  # noqa: BLE001 - the slot expires within a lease anyway
                log.warning("could not free a %s slot (%s); it expires within a lease", sink, err)
            else:
                if on_free is not None:
                    on_free(woken)

    def beat(self) -> int:
        """Renew everything this process runs now; returns how many locks were lost."""
        with self._mutex:
            runs = list(self._runs.items())
            slots = [(sink, member) for member, sink in self._slots.items()]
        if not runs and not slots:
            return 0
        lost = self.book.renew(runs, slots)
        if lost:
            log.warning(
                "%d running job(s) lost their lock (a pause longer than JOB_LEASE_SECONDS?); "
                "their result will not be recorded twice, but another worker may run them",
                lost,
            )
        return lost

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.beat()
            except Exception as err:  # noqa: BLE001 - keep beating through a Redis blip
                log.warning("heartbeat cannot reach Redis (%s); locks lapse after the lease", err)

    def stop(self) -> None:
        self._stop.set()
