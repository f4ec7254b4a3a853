"""Append one JSON line per call to a file.

Several worker processes may append at once: each line is written with a
single ``write`` on an ``O_APPEND`` descriptor under an exclusive ``flock``,
so lines never interleave. Repeats are prevented by the delivery ledger.
"""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path
from urllib.parse import unquote, urlsplit

from worker.errors import PermanentError, TransientError
from worker.sinks.base import CallRecord, Sink, SinkContext


def path_from_url(url: str) -> Path:
    """``jsonl:///abs/x.jsonl`` is absolute; ``jsonl://./x.jsonl`` is relative."""
    parts = urlsplit(url)
    raw = unquote(parts.netloc + parts.path)
    if not raw:
        raise PermanentError(f"jsonl sink URL {url!r} names no file")
    return Path(raw)


class JsonlSink(Sink):
    scheme = "jsonl"
    url_help = "jsonl:///abs/path.jsonl or jsonl://./relative.jsonl - one JSON line per call"

    def __init__(self, url: str, context: SinkContext) -> None:
        super().__init__(url, context)
        self.path = path_from_url(url)

    def deliver(self, record: CallRecord) -> None:
        line = (json.dumps(record, separators=(",", ":"), ensure_ascii=False) + "\n").encode()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        except OSError as err:
            raise TransientError(f"jsonl sink cannot open {self.path}: {err}") from err
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            written = os.write(fd, line)
            if written != len(line):
                raise TransientError(f"jsonl sink: short write to {self.path}")
            os.fsync(fd)
        except OSError as err:
            raise TransientError(f"jsonl sink cannot write {self.path}: {err}") from err
        finally:
            os.close(fd)

    def lookup(self, call_sid: str) -> bool | None:
        """Scan the file for the call: only after a delivery whose outcome is unknown."""
        needle = f'"call_sid":{json.dumps(call_sid)}'.encode()
        try:
            with self.path.open("rb") as fh:
                return any(needle in line for line in fh)
        except FileNotFoundError:
            return False
        except OSError as err:
            raise TransientError(f"jsonl sink cannot read {self.path}: {err}") from err

    def check(self) -> str:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists() and not os.access(self.path, os.W_OK):
            raise PermanentError(f"jsonl sink: {self.path} is not writable")
        return f"{self.path} is writable"
