"""var/dev.env: a second terminal reaches a running dev instance, and explicit settings win."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from worker.cli.devenv import (
    apply_dev_env,
    describe,
    dev_values,
    explicit_env,
    overlay,
    write_dev_env,
    write_private,
)

DEV = {
    "REDIS_URL": "redis://127.0.0.1:50001/0",
    "CALLBACK_TOKEN": "dev-token-abcdefghijklmnop",
    "EXOTEL_BASE_URL": "http://127.0.0.1:50002",
    "EXOTEL_ACCOUNT_SID": "exotel_sim",
    "EXOTEL_API_KEY": "sim_key",
    "EXOTEL_API_TOKEN": "sim_token",
    "FETCH_DELAY_SECONDS": "2",
}


@pytest.fixture
def here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    for name in (*DEV, "REDIS_TLS_URL", "SPOOL_DIR", "PORT"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


@pytest.fixture
def dev_pid() -> Iterator[int]:
    """A running process that looks like ``exolegs dev`` (its command line says so)."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "exolegs", "dev"])
    yield proc.pid
    proc.kill()
    proc.wait()


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_private_files_are_owner_only_even_with_a_lax_umask(here: Path) -> None:
    old = os.umask(0)
    try:
        write_private(here / "var" / "secret", "one\n")
        write_private(here / "var" / "secret", "two\n")  # replaces, still private
    finally:
        os.umask(old)
    assert mode(here / "var" / "secret") == 0o600
    assert (here / "var" / "secret").read_text() == "two\n"
    assert [p.name for p in (here / "var").iterdir()] == ["secret"]  # no temporary left


def test_a_running_instance_fills_what_nothing_explicit_sets(here: Path, dev_pid: int) -> None:
    write_dev_env(DEV, pid=dev_pid)
    assert mode(here / "var" / "dev.env") == 0o600
    assert dev_values() == (dev_pid, DEV)
    assert overlay({}) == DEV


def test_an_explicit_setting_wins_and_keeps_its_group_whole(here: Path, dev_pid: int) -> None:
    write_dev_env(DEV, pid=dev_pid)
    taken = overlay({"REDIS_TLS_URL": "rediss://prod:6380", "EXOTEL_API_KEY": "real"})
    assert "REDIS_URL" not in taken  # the Redis URLs go together
    assert not any(name.startswith("EXOTEL_") for name in taken)  # never a mixed Exotel
    assert taken == {"CALLBACK_TOKEN": DEV["CALLBACK_TOKEN"], "FETCH_DELAY_SECONDS": "2"}


def test_dotenv_counts_as_explicit(here: Path) -> None:
    (here / ".env").write_text("REDIS_URL=redis://from-dotenv:6379/0\nSINKS=\n")
    assert explicit_env({}) == {"REDIS_URL": "redis://from-dotenv:6379/0"}
    assert explicit_env({"REDIS_URL": "redis://env:1/0"})["REDIS_URL"] == "redis://env:1/0"


def test_a_stopped_instance_is_ignored(here: Path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    write_dev_env(DEV, pid=dead.pid)
    assert dev_values() == (None, {})
    assert overlay({}) == {}


def test_apply_sets_only_the_unset_variables(
    here: Path, monkeypatch: pytest.MonkeyPatch, dev_pid: int
) -> None:
    write_dev_env(DEV, pid=dev_pid)
    monkeypatch.setattr(os, "environ", {**os.environ, "CALLBACK_TOKEN": "mine-0123456789abcdef"})
    taken = apply_dev_env()
    assert os.environ["CALLBACK_TOKEN"] == "mine-0123456789abcdef"
    assert os.environ["REDIS_URL"] == DEV["REDIS_URL"]
    assert describe(taken) == "REDIS_URL, FETCH_DELAY_SECONDS, EXOTEL_*"


def test_a_pid_reused_by_another_program_is_ignored(here: Path) -> None:
    if not Path("/proc/self/cmdline").exists():
        pytest.skip("needs /proc")
    other = subprocess.Popen(["sleep", "30"])
    try:
        write_dev_env(DEV, pid=other.pid)
        assert dev_values() == (None, {})
    finally:
        other.kill()
        other.wait()


def test_no_file_changes_nothing(here: Path) -> None:
    assert apply_dev_env() == {}
