"""Fixtures for the pipeline: the simulator, a real worker process, the web app."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from flask.testing import FlaskClient

from tests.support.processes import Proc, Simulator, start_worker
from worker.calls.simulator import SimulatorConfig, start_in_thread
from worker.settings import Settings


@pytest.fixture(scope="session")
def simulator() -> Iterator[Simulator]:
    config = SimulatorConfig()
    server, url = start_in_thread(config)
    yield Simulator(url)
    server.shutdown()


@pytest.fixture
def pipeline_env(env: dict[str, str], simulator: Simulator, redis_client) -> dict[str, str]:  # type: ignore[no-untyped-def]
    simulator.reset()
    config = SimulatorConfig()
    return {
        **env,
        "EXOTEL_BASE_URL": simulator.url,
        "EXOTEL_ACCOUNT_SID": config.account_sid,
        "EXOTEL_API_KEY": config.api_key,
        "EXOTEL_API_TOKEN": config.api_token,
        "EXOTEL_TIMEOUT_SECONDS": "3",
    }


@pytest.fixture
def pipeline_settings(pipeline_env: dict[str, str]) -> Settings:
    return Settings.from_env(pipeline_env, dotenv=False)


@pytest.fixture
def jsonl_path(pipeline_settings: Settings) -> Path:
    return Path(pipeline_settings.sinks[0].removeprefix("jsonl://"))


@pytest.fixture
def worker(pipeline_env: dict[str, str], tmp_path: Path) -> Iterator[Proc]:
    proc = start_worker(pipeline_env, tmp_path / "worker.log")
    yield proc
    proc.stop()


@pytest.fixture
def web(pipeline_settings: Settings) -> Iterator[FlaskClient]:
    from web.app import create_app

    app = create_app(pipeline_settings)
    with app.test_client() as client:
        yield client
    app.extensions["exolegs"].drainer.stop()
