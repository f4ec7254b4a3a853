"""The fault suite's fast rows (bench/faults.py has them all, at scale): real processes."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.processes import ROOT
from tests.support.redis_server import RedisServer, start_redis


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    server = start_redis()
    yield server
    server.stop()


def test_a_worker_refuses_an_evicting_redis(
    own_redis: RedisServer, pipeline_env: dict[str, str], tmp_path: Path
) -> None:
    own_redis.client().config_set("maxmemory-policy", "volatile-lru")
    result = subprocess.run(
        [sys.executable, "-m", "worker.cli", "worker", "--concurrency", "1"],
        env={"PATH": "/usr/bin:/bin", **pipeline_env, "REDIS_URL": own_redis.url},
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        check=False,
    )
    assert result.returncode == 2, result.stdout + result.stderr
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("exolegs: maxmemory-policy: is volatile-lru")
    assert "noeviction" in line
