"""Fixtures shared by every test: a private Redis and settings built on it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from tests.support.redis_server import RedisServer, start_redis
from worker.settings import Settings

CALLBACK_TOKEN = "test-callback-token-0123456789"


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = start_redis()
    yield server
    server.stop()


@pytest.fixture
def redis_client(redis_server: RedisServer) -> Iterator[redis.Redis]:
    client = redis_server.client()
    client.flushall()  # our own private server, never a shared one
    yield client
    client.close()


@pytest.fixture
def env(redis_server: RedisServer, tmp_path) -> dict[str, str]:  # type: ignore[no-untyped-def]
    """The environment a test runs exolegs with; tests add to it."""
    return {
        "REDIS_URL": redis_server.url,
        "CALLBACK_TOKEN": CALLBACK_TOKEN,
        "SINKS": f"jsonl://{tmp_path}/calls.jsonl",
        "FETCH_DELAY_SECONDS": "0",
        "RETRY_BASE_SECONDS": "0.2",
        "RETRY_MAX_SECONDS": "2",
        "SPOOL_DIR": str(tmp_path / "spool"),
    }


@pytest.fixture
def settings(env: dict[str, str], redis_client: redis.Redis) -> Settings:
    return Settings.from_env(env, dotenv=False)
