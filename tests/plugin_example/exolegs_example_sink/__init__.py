"""A third-party exolegs sink: one JSON file per call in a directory.

``example:///abs/dir`` or ``example://./relative/dir`` writes
``<dir>/<call_sid>.json``. Writing the same call again replaces the file
atomically, so the sink is idempotent on ``call_sid`` by construction.

It is registered the way any plugin is, in this package's ``pyproject.toml``::

    [project.entry-points."exolegs.sinks"]
    example = "exolegs_example_sink:ExampleSink"

and exolegs finds it by the URL scheme (``example``) once the package is
installed next to exolegs.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from urllib.parse import unquote, urlsplit

from worker.errors import PermanentError, SettingsError, TransientError
from worker.sinks.base import CallRecord, Sink, SinkContext

__all__ = ["ExampleSink"]

_CALL_SID = re.compile(r"[A-Za-z0-9_-]{1,64}")


class ExampleSink(Sink):
    scheme = "example"
    url_help = "example:///abs/dir or example://./dir - one <call_sid>.json file per call"
    native_idempotency = True  # a call always lands in the same file

    def __init__(self, url: str, context: SinkContext) -> None:
        super().__init__(url, context)
        parts = urlsplit(url)
        raw = unquote(parts.netloc + parts.path)
        if not raw:
            raise SettingsError("SINKS", f"example sink {self.name}: {url} names no directory")
        self.directory = Path(raw)

    def path_for(self, call_sid: str) -> Path:
        return self.directory / f"{call_sid}.json"

    def deliver(self, record: CallRecord) -> None:
        call_sid = str(record.get("call_sid"))
        if not _CALL_SID.fullmatch(call_sid):
            # Never retried: the same record would fail the same way.
            raise PermanentError(
                f"example sink {self.name}: call sid {call_sid[:80]!r} is not a safe file name"
            )
        if self.directory.is_file():
            # Retrying cannot turn a file into a directory: an operator must fix the URL.
            raise PermanentError(
                f"example sink {self.name}: {self.directory} is a file, not a directory: "
                f"fix the sink URL, then replay call {call_sid}"
            )
        data = json.dumps(record, ensure_ascii=False, sort_keys=True).encode()
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=f".{call_sid}.")
            try:
                with os.fdopen(fd, "wb") as fh:
                    fh.write(data)
                    fh.flush()
                    os.fsync(fh.fileno())
                os.replace(tmp, self.path_for(call_sid))
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        except OSError as err:
            # A full disk or a missing mount may recover: let the pipeline retry.
            raise TransientError(
                f"example sink {self.name}: cannot write call {call_sid} to "
                f"{self.directory}: {err.strerror or err}: will retry"
            ) from err

    def lookup(self, call_sid: str) -> bool | None:
        return self.path_for(call_sid).is_file()

    def check(self) -> str:
        if self.directory.exists() and not self.directory.is_dir():
            raise PermanentError(f"example sink {self.name}: {self.directory} is not a directory")
        return f"writes one JSON file per call into {self.directory}"
