"""The Procfile's own commands, run as Heroku would, make a record from a callback."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.conftest import CALLBACK_TOKEN
from tests.support.processes import ROOT, read_jsonl, wait_for
from tests.support.redis_server import free_port


def procfile() -> dict[str, str]:
    lines = (ROOT / "Procfile").read_text().splitlines()
    return dict(line.split(": ", 1) for line in lines if line.strip() and not line.startswith("#"))


@pytest.fixture
def dyno_env(pipeline_env: dict[str, str]) -> dict[str, str]:
    """What a dyno sees: our variables, PORT, and the venv's bin on PATH."""
    bin_dir = str(Path(sys.executable).parent)
    return {
        **os.environ,
        **pipeline_env,
        "PORT": str(free_port()),
        "WEB_CONCURRENCY": "2",
        "PATH": f"{bin_dir}:{os.environ.get('PATH', '')}",
        "PYTHONUNBUFFERED": "1",
    }


@pytest.fixture
def dynos(dyno_env: dict[str, str], tmp_path: Path) -> Iterator[dict[str, subprocess.Popen[bytes]]]:
    started = {}
    for name, command in procfile().items():
        log = (tmp_path / f"{name}.log").open("wb")
        started[name] = subprocess.Popen(
            ["bash", "-c", command],
            env=dyno_env,
            cwd=tmp_path,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    yield started
    for proc in started.values():  # Heroku's shutdown: SIGTERM to every process, 30 s
        os.killpg(proc.pid, signal.SIGTERM)
    for proc in started.values():
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def test_procfile_processes_turn_a_callback_into_a_record(
    dynos: dict[str, subprocess.Popen[bytes]], dyno_env: dict[str, str], tmp_path: Path
) -> None:
    assert set(dynos) == {"web", "worker"}
    base = f"http://127.0.0.1:{dyno_env['PORT']}"

    def web_up() -> bool:
        assert dynos["web"].poll() is None, (tmp_path / "web.log").read_text()
        try:
            return requests.get(f"{base}/readyz", timeout=1).ok
        except requests.RequestException:
            return False

    wait_for(web_up, timeout=30)
    wait_for(lambda: "ready" in (tmp_path / "worker.log").read_text(), timeout=60)
    answer = requests.post(
        f"{base}/exotel/callback/{CALLBACK_TOKEN}",
        data={"CallSid": "procfile1", "Status": "completed", "Direction": "inbound"},
        timeout=5,
    )
    assert answer.status_code == 200 and answer.json()["duplicate"] is False
    out = Path(dyno_env["SINKS"].removeprefix("jsonl://"))
    records = wait_for(lambda: [r for r in read_jsonl(out) if r["call_sid"] == "procfile1"])
    assert len(records) == 1 and records[0]["direction"] == "inbound"
