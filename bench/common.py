"""What both benchmarks share: child processes, a private Redis, tables, machine details.

Every child runs in its own session, so the whole process tree it starts
(gunicorn or Celery workers) is stopped through its process group, whose id is
the pid we started. ``interrupts_as_keyboard()`` turns SIGTERM and SIGHUP into
KeyboardInterrupt, so ``finally`` blocks clean up on any polite way of stopping
a run, Ctrl-C included.
"""

from __future__ import annotations

import os
import platform
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from importlib.metadata import version
from pathlib import Path
from types import FrameType
from typing import Any

import redis

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def interrupts_as_keyboard() -> Iterator[None]:
    """SIGTERM and SIGHUP raise KeyboardInterrupt, so cleanup runs as on Ctrl-C."""

    def raise_interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    previous = {sig: signal.signal(sig, raise_interrupt) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class Child:
    """A process (and everything it forks) with its output in a log file."""

    def __init__(self, name: str, args: Sequence[str], env: dict[str, str], log: Path) -> None:
        self.name = name
        self.log_path = log
        self._log = log.open("ab")
        self.proc = subprocess.Popen(
            list(args),
            env={**os.environ, **env, "PYTHONUNBUFFERED": "1"},
            cwd=ROOT,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # its own process group, id == pid: see stop()
        )

    @property
    def running(self) -> bool:
        return self.proc.poll() is None

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.output().splitlines()[-lines:])

    def _signal_group(self, sig: int) -> None:
        try:
            os.killpg(self.proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
        """Signal the group, wait, then SIGKILL whatever is left of it."""
        if self.running:
            self._signal_group(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        self._signal_group(signal.SIGKILL)  # stragglers: pool children, gunicorn workers
        if self.running:
            self.proc.wait(5)
        self._log.close()


def wait_until(
    predicate: Callable[[], Any],
    what: str,
    *,
    timeout: float = 30.0,
    interval: float = 0.05,
    child: Child | None = None,
) -> Any:
    """Poll ``predicate`` until truthy; fail early if ``child`` dies."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if child is not None and not child.running:
            raise RuntimeError(f"{child.name} exited while waiting for {what}:\n{child.tail()}")
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    tail = f"\n{child.tail()}" if child is not None else ""
    raise RuntimeError(f"timed out after {timeout:.0f}s waiting for {what}{tail}")


class PrivateRedis:
    """A redis-server of our own on a free port, its data in a temporary directory.

    AOF is on with ``appendfsync everysec`` (Redis's default AOF policy, and
    Heroku Redis's) unless told otherwise; nothing else shares it, so the
    benchmark may write whatever it likes and the directory is removed on stop.
    Automatic AOF rewrites are off: a benchmark writes tens of MB in a minute,
    and a rewrite forks a child that would steal one of this machine's cores
    from whichever run it lands in (in production Redis has its own host).
    """

    def __init__(self, workdir: Path, *, appendfsync: str = "everysec") -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise SystemExit("redis-server is not on PATH; the benchmarks need a real Redis")
        self.port = free_port()
        self.dir = workdir / "redis"
        self.dir.mkdir()
        self.appendfsync = appendfsync
        self.child = Child(
            "redis-server",
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                appendfsync,
                "--dir",
                str(self.dir),
                "--maxmemory-policy",
                "noeviction",
                "--auto-aof-rewrite-percentage",
                "0",
            ],
            {},
            workdir / "redis.log",
        )
        wait_until(self._ping, "redis-server to answer", timeout=10, child=self.child)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url)

    def _ping(self) -> bool:
        try:
            return bool(self.client().ping())
        except redis.ConnectionError:
            return False

    def cpu(self) -> float:
        """CPU seconds used so far by the server process itself (not by fork children)."""
        return leader_cpu(self.child.proc.pid)[0]

    def version(self) -> str:
        return str(self.client().info("server")["redis_version"])

    def stop(self) -> None:
        self.child.stop()


@contextmanager
def workdir(prefix: str, keep: bool = False) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield path
    finally:
        if keep:
            print(f"kept {path}", file=sys.stderr)
        else:
            shutil.rmtree(path, ignore_errors=True)


# ------------------------------------------------------------------ CPU time
_TICK = os.sysconf("SC_CLK_TCK")


def _cpu_by_pid(pgid: int) -> dict[int, float]:
    """CPU seconds (user+system) so far of each live process in a process group."""
    found: dict[int, float] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:  # fields[0] is stat field 3 (state); [2] is pgrp
            found[int(stat.parent.name)] = (int(fields[11]) + int(fields[12])) / _TICK
    return found


def cpu_by_pid(pgid: int) -> dict[int, float]:
    """CPU seconds so far of each live process of a group (a gunicorn master and its workers)."""
    return _cpu_by_pid(pgid)


def group_cpu(pgid: int) -> float:
    """CPU seconds used so far by the live processes of a process group."""
    return sum(_cpu_by_pid(pgid).values())


def leader_cpu(pgid: int) -> tuple[float, float]:
    """(the group leader's, everyone else's) CPU seconds: a Celery main process vs its pool."""
    cpu = _cpu_by_pid(pgid)
    leader = cpu.pop(pgid, 0.0)
    return leader, sum(cpu.values())


def children_cpu() -> float:
    """CPU seconds of this process's reaped children (the load generator processes)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def self_cpu() -> float:
    """CPU seconds of this process, every thread (an in-process simulator included)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# ------------------------------------------------------------------ reporting
def percentile(sorted_values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile of an already sorted sequence (0 when empty)."""
    if not sorted_values:
        return 0.0
    rank = max(1, min(len(sorted_values), round(pct / 100.0 * len(sorted_values) + 0.5)))
    return sorted_values[rank - 1]


def _numeric(cell: str) -> bool:
    try:
        float(cell.replace(",", ""))
    except ValueError:
        return cell == "-"
    return True


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub-flavoured Markdown table (numbers right-aligned), ready to paste into docs."""
    body = [[str(c) for c in row] for row in rows]
    cells = [[str(h) for h in headers], *body]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    right = [all(_numeric(row[i]) for row in body) for i in range(len(headers))]

    def line(row: Sequence[str]) -> str:
        padded = (
            c.rjust(w) if r else c.ljust(w) for c, w, r in zip(row, widths, right, strict=True)
        )
        return "| " + " | ".join(padded) + " |"

    rule = (
        "|"
        + "|".join(
            ("-" * (w + 1) + ":") if r else "-" * (w + 2)
            for w, r in zip(widths, right, strict=True)
        )
        + "|"
    )
    return "\n".join([line(cells[0]), rule, *(line(r) for r in body)])


def machine(redis_version: str) -> str:
    """One line describing where the numbers came from."""
    cpu = "unknown CPU"
    try:
        for text in Path("/proc/cpuinfo").read_text().splitlines():
            if text.startswith("model name"):
                cpu = text.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return (
        f"{os.cpu_count()} CPUs ({cpu}), Linux {platform.release()}, "
        f"Python {platform.python_version()}, Redis {redis_version}, "
        f"gunicorn {version('gunicorn')}, Flask {version('flask')}, "
        f"Celery {version('celery')}, redis-py {version('redis')}; load average {load}"
    )
