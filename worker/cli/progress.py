"""Progress for long CLI actions: one self-updating line on a terminal, nothing elsewhere.

Use it around any loop a person may wait on (``dead replay --all``,
``dead purge``, ``backfill``)::

    with Progress("replaying", total=len(letters)) as progress:
        for letter in letters:
            dead.replay(letter)
            progress.advance()

On a terminal (stderr is a TTY) it redraws ``replaying 120/500 (24%)`` at
most ten times a second and ends the line when done; redirected to a file or
a pipe it prints nothing, so scripts and logs see only the command's result.
"""

from __future__ import annotations

import sys
import time
from types import TracebackType
from typing import TextIO


class Progress:
    def __init__(
        self,
        label: str,
        total: int | None = None,
        *,
        stream: TextIO | None = None,
        interval: float = 0.1,
        enabled: bool | None = None,
    ) -> None:
        self.label = label
        self.total = total
        self.done = 0
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.interval = interval
        self._last = 0.0
        self._drawn = False

    def advance(self, n: int = 1) -> None:
        self.done += n
        now = time.monotonic()
        if self.enabled and (now - self._last >= self.interval or self.done == self.total):
            self._last = now
            self._draw()

    def _draw(self) -> None:
        if self.total:
            text = f"{self.label} {self.done}/{self.total} ({100 * self.done // self.total}%)"
        else:
            text = f"{self.label} {self.done}"
        self.stream.write(f"\r\x1b[2K{text}")
        self.stream.flush()
        self._drawn = True

    def close(self) -> None:
        """Draw the final count and end the line (only if anything was drawn)."""
        if self.enabled and (self._drawn or self.done):
            self._draw()
            self.stream.write("\n")
            self.stream.flush()

    def __enter__(self) -> Progress:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
