"""Real processes for integration tests: the exolegs worker, web, and the simulator."""

from __future__ import annotations

import json
import os
import signal as signals
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests

ROOT = Path(__file__).resolve().parents[2]


def wait_for(predicate: Callable[[], Any], timeout: float = 30.0, interval: float = 0.1) -> Any:
    """Poll until ``predicate()`` is truthy; fail with its last value on timeout."""
    deadline = time.monotonic() + timeout
    value = None
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s (last value: {value!r})")


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class Proc:
    """A child process with its output in a file, stopped by signal on exit."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path, cwd: Path | None = None):
        self.args = args
        self.log_path = log
        self._log = log.open("ab")
        full_env = {**os.environ, **env, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            args, env=full_env, stdout=self._log, stderr=subprocess.STDOUT, cwd=cwd or ROOT
        )

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def send(self, sig: int) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)

    def stop(self, sig: int = signals.SIGTERM, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()
        return int(self.proc.returncode)

    def kill(self) -> None:
        """SIGKILL the worker and all its pool children, as a crash would."""
        try:
            children = subprocess.run(
                ["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True, check=False
            ).stdout.split()
        except FileNotFoundError:
            children = []
        self.proc.kill()
        for pid in children:
            try:
                os.kill(int(pid), signals.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait(10)
        self._log.close()


def start_worker(env: dict[str, str], log: Path, concurrency: int = 2) -> Proc:
    proc = Proc(
        [sys.executable, "-m", "worker.cli", "worker", "--concurrency", str(concurrency)], env, log
    )
    wait_for(lambda: "ready" in proc.output() or proc.proc.poll() is not None, timeout=60)
    if proc.proc.poll() is not None:
        raise AssertionError(f"worker exited early:\n{proc.output()}")
    return proc


def start_web(env: dict[str, str], log: Path, port: int) -> Proc:
    proc = Proc([sys.executable, "-m", "worker.cli", "web"], {**env, "PORT": str(port)}, log)

    def up() -> bool:
        if proc.proc.poll() is not None:
            raise AssertionError(f"web exited early:\n{proc.output()}")
        try:
            return requests.get(f"http://127.0.0.1:{port}/healthz", timeout=1).ok
        except requests.RequestException:
            return False

    wait_for(up, timeout=30)
    return proc


class Simulator:
    """Client for the simulator's /_sim/ control endpoints."""

    def __init__(self, base_url: str) -> None:
        self.url = base_url

    def reset(self) -> None:
        requests.post(f"{self.url}/_sim/reset", timeout=5).raise_for_status()

    def script(self, call_sid: str, responses: list[dict[str, Any]]) -> None:
        requests.post(
            f"{self.url}/_sim/script",
            json={"call_sid": call_sid, "responses": responses},
            timeout=5,
        ).raise_for_status()

    def mode(self, mode: str, delay: float = 0) -> None:
        requests.post(
            f"{self.url}/_sim/mode", json={"mode": mode, "delay": delay}, timeout=5
        ).raise_for_status()

    def requests_for(self, call_sid: str) -> list[float]:
        data = requests.get(f"{self.url}/_sim/requests", timeout=5).json()
        return list(data["by_call"].get(call_sid, []))

    def place(
        self,
        sids: list[str],
        *,
        callback_url: str | None = None,
        drop: float = 0.0,
        seed: int | None = None,
    ) -> dict[str, Any]:
        """Calls that just ended (listed by Calls.json); their callbacks, less a dropped share."""
        answer = requests.post(
            f"{self.url}/_sim/calls",
            json={"sids": sids, "callback_url": callback_url, "drop": drop, "seed": seed},
            timeout=120,
        )
        answer.raise_for_status()
        placed: dict[str, Any] = answer.json()
        return placed

    def total(self) -> int:
        """Every request: legs fetches and the sweeper's Calls.json listings."""
        return int(requests.get(f"{self.url}/_sim/requests", timeout=5).json()["total"])

    def legs_requests(self) -> dict[str, int]:
        """Legs fetches per call sid; the listings (logged as ``Calls.json:<account>``) left out."""
        by_call = requests.get(f"{self.url}/_sim/requests", timeout=5).json()["by_call"]
        return {
            sid: len(times) for sid, times in by_call.items() if not sid.startswith("Calls.json:")
        }
