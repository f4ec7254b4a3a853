"""Fixtures for in-process pipeline tests: the simulator and Runtimes built on it."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import redis

from tests.support.processes import Simulator
from worker.calls.simulator import SimulatorConfig, start_in_thread
from worker.runtime import Runtime
from worker.settings import Settings
from worker.sinks.memory import MemorySink


@pytest.fixture(scope="module")
def sim() -> Iterator[Simulator]:
    server, url = start_in_thread(SimulatorConfig())
    yield Simulator(url)
    server.shutdown()


@pytest.fixture
def runtime_env() -> dict[str, str]:
    """What a module's Runtimes add to ``env``; a module overrides it for its own sinks."""
    return {"SINKS": "memory://a memory://b"}


@pytest.fixture
def make_rt(
    env: dict[str, str], runtime_env: dict[str, str], sim: Simulator, redis_client: redis.Redis
) -> Iterator[Callable[..., Runtime]]:
    """Build Runtimes against the simulator and the private Redis; each is closed afterwards."""
    sim.reset()
    MemorySink.reset()
    made: list[Runtime] = []
    config = SimulatorConfig()

    def build(**extra: str) -> Runtime:
        settings = Settings.from_env(
            {
                **env,
                "EXOTEL_BASE_URL": sim.url,
                "EXOTEL_ACCOUNT_SID": config.account_sid,
                "EXOTEL_API_KEY": config.api_key,
                "EXOTEL_API_TOKEN": config.api_token,
                **runtime_env,
                **extra,
            },
            dotenv=False,
        )
        rt = Runtime(settings, client=redis_client)
        made.append(rt)
        return rt

    yield build
    for rt in made:
        rt.close()
