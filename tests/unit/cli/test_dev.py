"""``exolegs dev`` picks its Redis in the open and keeps its token private."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.support.redis_server import RedisServer, free_port
from worker.cli import dev
from worker.errors import SettingsError
from worker.settings import Settings


@pytest.fixture
def here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("REDIS_URL", raising=False)
    monkeypatch.delenv("REDIS_TLS_URL", raising=False)
    return tmp_path


def stop(handle: Any) -> None:
    if isinstance(handle, subprocess.Popen):
        handle.terminate()
        handle.wait(10)
    elif handle is not None:
        handle.shutdown()


def test_explicit_redis_url_is_used_and_named(here: Path, redis_server: RedisServer) -> None:
    explicit = {"REDIS_URL": redis_server.url}
    url, desc, handle = dev.find_redis(explicit, Settings.from_env(explicit))
    assert (url, handle) == (redis_server.url, None)
    assert desc == "REDIS_URL from .env"  # not in os.environ here: it came from .env


def test_explicit_redis_url_that_does_not_answer_stops_dev(here: Path) -> None:
    explicit = {"REDIS_URL": f"redis://:hunter22pass@127.0.0.1:{free_port()}/0"}
    with pytest.raises(SettingsError) as err:
        dev.find_redis(explicit, Settings.from_env(explicit))
    message = str(err.value)
    assert message.startswith("REDIS_URL: is set in .env but nothing answers at")
    assert "hunter22pass" not in message


def test_without_redis_url_the_default_localhost_is_never_borrowed(here: Path) -> None:
    settings = Settings.from_env({})
    assert settings.redis_url == "redis://localhost:6379/0"  # may well answer on this machine
    url, desc, handle = dev.find_redis({}, settings)
    try:
        assert ":6379/" not in url
        if handle is not None and isinstance(handle, subprocess.Popen):
            assert desc == "its own redis-server, data kept in var/redis/"
            assert (here / "var" / "redis").is_dir()
        else:
            assert desc.startswith("embedded in this process")
    finally:
        stop(handle)


def test_without_redis_server_it_embeds_and_says_it_is_not_durable(
    here: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(dev.shutil, "which", lambda name: None)
    url, desc, handle = dev.find_redis({}, Settings.from_env({}))
    try:
        assert desc == (
            "embedded in this process (no redis-server on PATH); "
            "NOT durable: queued work is lost when dev stops"
        )
        from worker.runtime import connect

        assert connect(url).ping()
    finally:
        stop(handle)


def test_without_redis_server_or_the_embedded_extra_it_says_what_to_install(
    here: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import builtins

    real_import = builtins.__import__

    def no_fakeredis(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "fakeredis":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(dev.shutil, "which", lambda name: None)
    monkeypatch.setattr(builtins, "__import__", no_fakeredis)
    with pytest.raises(SettingsError, match="install redis-server, or run `make run`"):
        dev.find_redis({}, Settings.from_env({}))


def test_dev_token_is_private_from_its_first_byte_and_stable(here: Path) -> None:
    old = os.umask(0)
    try:
        token = dev.dev_token()
    finally:
        os.umask(old)
    path = here / "var" / "dev-callback-token"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(token) >= 32 and dev.dev_token() == token


def test_banner_masks_every_secret_but_the_callback_token() -> None:
    secrets = [
        "whsecDUMMY0123456789abcdef",
        "s3ntrykey0123456789",
        "redispass0123",
        "simtoken98765",
    ]
    settings = Settings.from_env(
        {
            "CALLBACK_TOKEN": "callbacktoken-0123456789",
            "SINKS": f"webhook+https://hooks.example.com/x?secret={secrets[0]},jsonl://./var/c.jsonl",
            "SENTRY_DSN": f"https://{secrets[1]}@o1.ingest.sentry.io/1",
            "REDIS_URL": f"redis://:{secrets[2]}@127.0.0.1:6390/0",
            "EXOTEL_ACCOUNT_SID": "acme1",
            "EXOTEL_API_KEY": "key1",
            "EXOTEL_API_TOKEN": secrets[3],
        }
    )
    text = dev.banner(
        settings,
        exotel=f"the simulator (token {secrets[3]})",
        redis=f"REDIS_URL from .env ({settings.redis_url})",
        host="127.0.0.1",
    )
    assert not [s for s in secrets if s in text]
    assert "webhook+https://hooks.example.com/x?secret=***" in text
    assert "http://127.0.0.1:8000/exotel/callback/callbacktoken-0123456789" in text
    assert (
        "curl -s -X POST 'http://127.0.0.1:8000/exotel/callback/callbacktoken-0123456789'" in text
    )


def test_banner_shows_the_console_and_its_dev_password_only_when_dev_made_it() -> None:
    env = {"CALLBACK_TOKEN": "callbacktoken-0123456789", "OPS_PASSWORD": "dev-made-password"}
    settings = Settings.from_env(env)
    text = dev.banner(
        settings, exotel="sim", redis="r", host="0.0.0.0", ops_password="dev-made-password"
    )
    assert "Ops console: http://127.0.0.1:8000/ops  (user ops, password dev-made-password)" in text
    own = Settings.from_env({**env, "OPS_PASSWORD": "operator-chosen-password"})
    text = dev.banner(own, exotel="sim", redis="r", host="127.0.0.1")
    assert "Ops console: http://127.0.0.1:8000/ops  (your OPS_* credential)" in text
    assert "operator-chosen-password" not in text
