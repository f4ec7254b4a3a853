"""``var/dev.env``: how a second terminal reaches the running ``exolegs dev``.

``exolegs dev`` writes the settings it chose for its web and worker (its
Redis, the callback token it generated, the simulator's address and
credentials) to ``var/dev.env``, readable by its owner only, and removes it on
exit. The one-shot commands (``check``, ``fetch``, ``dead``, ``sinks``) run in
the same directory take from it what the environment and ``.env`` leave unset,
while the process that wrote it is alive. A group of variables that belong
together (the Redis URLs; the Exotel address and credentials) is taken whole
or not at all, so an explicit setting is never mixed with a dev one.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path

DEV_ENV = Path("var") / "dev.env"
GROUPS: tuple[tuple[str, ...], ...] = (
    ("REDIS_URL", "REDIS_TLS_URL"),
    ("EXOTEL_BASE_URL", "EXOTEL_ACCOUNT_SID", "EXOTEL_API_KEY", "EXOTEL_API_TOKEN"),
    ("CALLBACK_TOKEN",),
    ("FETCH_DELAY_SECONDS",),
    ("SPOOL_DIR",),
    ("PORT",),
)
_EXOTEL = GROUPS[1]
_PID_LINE = re.compile(r"^# written by exolegs dev, pid (\d+)$", re.MULTILINE)


def write_private(path: Path, text: str) -> None:
    """Replace ``path`` with ``text``, readable by its owner only from the first byte.

    The file is written under a temporary name created with mode 0600 in the
    same directory and renamed over ``path``, so no reader ever sees a partial
    or world-readable file.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def explicit_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """What the user set: the environment over ``.env``, empty values dropped."""
    merged: dict[str, str] = {}
    if Path(".env").is_file():
        from dotenv import dotenv_values

        merged.update({k: v for k, v in dotenv_values(".env").items() if v is not None})
    merged.update(os.environ if environ is None else environ)
    return {k: v for k, v in merged.items() if v.strip()}


def write_dev_env(values: Mapping[str, str], *, pid: int, path: Path = DEV_ENV) -> None:
    lines = [
        f"# written by exolegs dev, pid {pid}",
        "# Removed when it stops. exolegs check, fetch, dead and sinks run in this",
        "# directory take from here what the environment and .env leave unset.",
        *(f"{k}={v}" for k, v in values.items()),
    ]
    write_private(path, "\n".join(lines) + "\n")


def _alive(pid: int) -> bool:
    """Is ``pid`` still an exolegs process? (A reused pid is another program.)"""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True  # no /proc (macOS): the pid alone has to do
    return b"exolegs" in cmdline or b"worker.cli" in cmdline


def dev_values(path: Path = DEV_ENV) -> tuple[int | None, dict[str, str]]:
    """(pid of the dev instance that wrote ``path``, its values); (None, {}) if none is running."""
    try:
        text = path.read_text()
    except OSError:
        return None, {}
    match = _PID_LINE.search(text)
    if not match or not _alive(int(match.group(1))):
        return None, {}
    from dotenv import dotenv_values

    values = {k: v for k, v in dotenv_values(path).items() if v is not None}
    return int(match.group(1)), values


def overlay(explicit: Mapping[str, str], path: Path = DEV_ENV) -> dict[str, str]:
    """The variables of a running dev instance that ``explicit`` leaves unset, by whole group."""
    _, values = dev_values(path)
    taken: dict[str, str] = {}
    for group in GROUPS:
        if any(name in explicit for name in group):
            continue
        taken.update({name: values[name] for name in group if name in values})
    return taken


def describe(taken: Mapping[str, str]) -> str:
    """The names taken, short: ``REDIS_URL, CALLBACK_TOKEN, EXOTEL_*``."""
    names = [n for n in taken if n not in _EXOTEL]
    if any(n in taken for n in _EXOTEL):
        names.append("EXOTEL_*")
    return ", ".join(names)


def apply_dev_env(path: Path = DEV_ENV) -> dict[str, str]:
    """Put a running dev instance's settings into ``os.environ`` where nothing explicit is set."""
    taken = overlay(explicit_env(), path)
    os.environ.update(taken)
    return taken
