"""A newcomer's path, as the README tells it: ``exolegs dev``, paste the printed curl,
then ``exolegs dead list`` and ``check`` in a second terminal with no exports."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.support.processes import read_jsonl, wait_for
from tests.support.redis_server import free_port

# What a developer's shell may carry; a newcomer's has none of it.
SCRUB = ("REDIS_URL", "REDIS_TLS_URL", "CALLBACK_TOKEN", "SINKS", "PORT", "SPOOL_DIR",
         "EXOTEL_ACCOUNT_SID", "EXOTEL_API_KEY", "EXOTEL_API_TOKEN", "EXOTEL_BASE_URL",
         "FETCH_DELAY_SECONDS")


class Dev:
    def __init__(self, cwd: Path, port: int) -> None:
        self.cwd, self.port = cwd, port
        self.env = {k: v for k, v in os.environ.items() if k not in SCRUB}
        self.log = cwd / "dev.log"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "worker.cli", "dev"],
            cwd=cwd,
            env={**self.env, "PORT": str(port), "PYTHONUNBUFFERED": "1"},
            stdout=self.log.open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a terminal: Ctrl-C goes to the whole group
        )

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def second_terminal(self, *args: str) -> subprocess.CompletedProcess[str]:
        """``.venv/bin/exolegs ARGS`` in the same directory, with nothing exported."""
        return subprocess.run(
            [sys.executable, "-m", "worker.cli", *args],
            cwd=self.cwd, env=self.env, capture_output=True, text=True, timeout=60,
        )

    def ctrl_c(self) -> int:
        os.killpg(self.proc.pid, signal.SIGINT)
        return self.proc.wait(60)


@pytest.fixture
def dev(tmp_path: Path) -> Iterator[Dev]:
    running = Dev(tmp_path, free_port())
    try:
        wait_for(lambda: "Ctrl-C stops everything" in running.output() or running.proc.poll(), 60)
        assert running.proc.poll() is None, running.output()
        wait_for(lambda: _up(running.port), 60)
        yield running
    finally:
        if running.proc.poll() is None:
            os.killpg(running.proc.pid, signal.SIGKILL)
            running.proc.wait()


def _up(port: int) -> bool:
    try:
        return requests.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200
    except requests.RequestException:
        return False


def _listening_addresses(port: int) -> set[str]:
    """Local addresses with a listening TCP socket on ``port`` (Linux /proc/net/tcp)."""
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, hex_port = local.split(":")
        if state == "0A" and int(hex_port, 16) == port:
            found.add(".".join(str(int(address[i : i + 2], 16)) for i in (6, 4, 2, 0)))
    return found


def test_first_run_then_a_second_terminal(dev: Dev) -> None:
    banner = dev.output()
    assert "exolegs dev: Redis: its own redis-server, data kept in var/redis/" in banner
    assert ":6379/" not in banner  # never the machine's shared Redis
    assert "In a second terminal here, .venv/bin/exolegs check, dead list" in banner
    if Path("/proc/net/tcp").exists():
        assert _listening_addresses(dev.port) == {"127.0.0.1"}

    # Paste the printed curl, as printed.
    curl = re.search(r"^    (curl .*?)\n\n", banner, re.MULTILINE | re.DOTALL)
    assert curl, banner
    answer = subprocess.run(["bash", "-c", curl.group(1)], capture_output=True, text=True)
    assert '"accepted":true' in answer.stdout, answer
    sid = re.search(r'"call_sid":"([^"]+)"', answer.stdout).group(1)  # type: ignore[union-attr]

    calls = dev.cwd / "var" / "calls.jsonl"
    [record] = wait_for(lambda: [r for r in read_jsonl(calls) if r["call_sid"] == sid], 30)
    assert [p["phone_e164"] for p in record["from"]] == ["+919876543210"]  # the curl's From
    assert [p["phone_e164"] for p in record["to"]] == ["+919123456789"]  # and its To

    listed = dev.second_terminal("dead", "list")
    assert (listed.returncode, listed.stdout) == (0, "no dead letters\n"), listed
    assert "using the dev instance running here (var/dev.env: REDIS_URL" in listed.stderr
    checked = dev.second_terminal("check")
    assert checked.returncode == 0, checked
    redis_url = re.search(r"^REDIS_URL\s+(\S+)", checked.stdout, re.MULTILINE)
    assert redis_url and redis_url.group(1) in banner
    sinks = dev.second_terminal("sinks", "check")
    assert sinks.returncode == 0 and sinks.stdout.startswith("ok   jsonl"), sinks
    fetched = dev.second_terminal("fetch", sid)
    assert fetched.returncode == 0 and f'"call_sid": "{sid}"' in fetched.stdout, fetched

    assert dev.ctrl_c() == 0
    out = dev.output()
    assert out.count("Warm shutdown") <= 1, out
    assert "Traceback" not in out and "SecurityWarning" not in out, out
    assert not (dev.cwd / "var" / "dev.env").exists()
    after = dev.second_terminal("dead", "list")  # dev has stopped: var/dev.env is gone
    assert "REDIS_URL is not set and no exolegs dev runs here" in after.stderr
