"""The edge's safety net: callbacks that arrive while Redis is down go to disk.

Each callback is one file, written to a temporary name, fsynced and renamed
into place, so a crash never leaves half a callback. A drainer in every web
process moves spooled callbacks into Redis as soon as it answers again.
Several drainers may run at once: each claims a file by renaming it (after
refreshing its mtime, so a fresh claim never looks abandoned), and a file
another drainer took or finished is skipped. Acceptance is idempotent too
(the dedupe key). A file that cannot be parsed is set aside as ``*.bad``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from worker.settings import DEFAULT_ACCOUNT

log = logging.getLogger("exolegs.spool")

CLAIM_TIMEOUT = 60.0


def account_of(path: Path) -> str:
    """``<time>-<id>.json`` is the default account's, ``<time>-<id>.<account>.json`` another's."""
    parts = path.name.removesuffix(".json").split(".")
    return parts[2] if len(parts) == 3 else DEFAULT_ACCOUNT


class Spool:
    def __init__(self, directory: Path) -> None:
        self.dir = Path(directory)

    def write(self, fields: dict[str, Any], account: str = DEFAULT_ACCOUNT) -> Path:
        """Persist one callback durably; raises OSError when the disk cannot take it.

        The account it arrived for is in the file name (``<time>-<id>.<account>.json``),
        never in the body, which is only what the client sent.
        """
        self.dir.mkdir(parents=True, exist_ok=True)
        name = f"{time.time():.6f}-{uuid.uuid4().hex}"
        if account != DEFAULT_ACCOUNT:
            name = f"{name}.{account}"
        tmp = self.dir / f".{name}.tmp"
        final = self.dir / f"{name}.json"
        data = json.dumps(fields, separators=(",", ":"), default=str).encode()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, final)
        dir_fd = os.open(self.dir, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        return final

    def pending(self) -> list[Path]:
        if not self.dir.is_dir():
            return []
        return sorted(self.dir.glob("*.json"))

    def count(self) -> int:
        return (
            len(self.pending()) + len(list(self.dir.glob("*.claimed-*")))
            if self.dir.is_dir()
            else 0
        )

    def bad(self) -> list[Path]:
        """Files set aside because they could not be parsed: an operator must look."""
        return sorted(self.dir.glob("*.bad")) if self.dir.is_dir() else []

    def _reclaim_stale(self) -> None:
        for path in self.dir.glob("*.claimed-*"):
            if path.name.endswith(".bad"):
                continue
            try:
                if time.time() - path.stat().st_mtime > CLAIM_TIMEOUT:
                    os.replace(path, path.with_name(path.name.split(".claimed-")[0]))
            except FileNotFoundError:
                continue  # its drainer finished it, or another reclaimed it first

    def _claim(self, path: Path) -> Path | None:
        """Rename ``path`` to a name of our own; None if another drainer got it first.

        The mtime is refreshed first: a callback spooled long ago would
        otherwise look like an abandoned claim the moment it is claimed, and
        another drainer would take it back and accept it a second time.
        """
        claimed = path.with_name(f"{path.name}.claimed-{os.getpid()}-{uuid.uuid4().hex[:6]}")
        try:
            os.utime(path)
            os.replace(path, claimed)
        except FileNotFoundError:
            return None
        return claimed

    def _set_aside(self, path: Path, claimed: Path, why: str) -> None:
        bad = path.with_name(path.name + ".bad")
        try:
            os.replace(claimed, bad)
        except FileNotFoundError:
            return
        log.error(
            "spooled callback %s cannot be accepted (%s); set aside as %s, the others carry on. "
            "Fix or delete it by hand (renamed back to .json it is tried again)",
            path.name,
            why,
            bad,
        )

    def drain(self, accept: Callable[[dict[str, Any], str], None]) -> int:
        """Hand every spooled callback to ``accept``; stops at the first Redis failure.

        A file that is not a JSON object, or that ``accept`` refuses as bad
        input (ValueError, TypeError), is set aside as ``*.bad`` and never
        holds up the rest. Any other error (Redis away) puts the file back
        and ends the round.
        """
        if not self.dir.is_dir():
            return 0
        self._reclaim_stale()
        moved = 0
        for path in self.pending():
            claimed = self._claim(path)
            if claimed is None:
                continue  # another drainer took it
            try:
                fields = json.loads(claimed.read_bytes())
            except FileNotFoundError:
                continue  # reclaimed from under us: its new owner has it
            except (OSError, ValueError) as err:
                self._set_aside(path, claimed, f"unreadable: {err}")
                continue
            if not isinstance(fields, dict):
                self._set_aside(path, claimed, f"not a JSON object but {type(fields).__name__}")
                continue
            try:
                accept(fields, account_of(path))
            except (ValueError, TypeError) as err:
                self._set_aside(path, claimed, f"refused: {err}")
                continue
            except Exception:
                with contextlib.suppress(FileNotFoundError):
                    os.replace(claimed, path)  # keep it for the next round
                raise
            claimed.unlink(missing_ok=True)
            moved += 1
        return moved


class Drainer:
    """Background thread that empties the spool whenever Redis is reachable."""

    def __init__(
        self, spool: Spool, accept: Callable[[dict[str, Any], str], None], interval: float = 1.0
    ) -> None:
        self.spool = spool
        self.accept = accept
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def run(self) -> None:
        failing = False
        while not self._stop.wait(self.interval):
            try:
                moved = self.spool.drain(self.accept)
            except Exception as err:  # noqa: BLE001 - Redis still down: try again later
                (log.debug if failing else log.warning)(
                    "spool %s waits: cannot hand callbacks to Redis (%s)", self.spool.dir, err
                )
                failing = True
                continue
            failing = False
            if moved:
                log.warning("moved %d spooled callback(s) from %s to Redis", moved, self.spool.dir)

    def start(self) -> Drainer:
        if self._thread is None:
            self._thread = threading.Thread(target=self.run, name="exolegs-spool", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
