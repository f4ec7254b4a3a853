"""``exolegs sinks list`` / ``sinks check`` data: every sink reported, no secret shown."""

from __future__ import annotations

from importlib.metadata import EntryPoint
from pathlib import Path

import pytest
import redis

from tests.unit.sinks.conftest import WebhookReceiver, free_port, new_whsec
from worker.cli import sinks as cli
from worker.redact import url_secrets
from worker.settings import Settings
from worker.sinks import registry


def test_list_sinks_names_every_builtin_with_its_class_and_url_form() -> None:
    rows = {row["name"]: row for row in cli.list_sinks()}
    for name, cls in [
        ("jsonl", "worker.sinks.jsonl:JsonlSink"),
        ("webhook", "worker.sinks.webhook:WebhookSink"),
        ("sql", "worker.sinks.sql:SqlSink"),
        ("memory", "worker.sinks.memory:MemorySink"),
        ("null", "worker.sinks.null:NullSink"),
    ]:
        assert rows[name]["class"] == cls
        assert rows[name]["error"] == ""
        assert rows[name]["url_help"]
    assert set(rows["jsonl"]) == {"name", "package", "class", "url_help", "error", "note"}


def test_a_plugin_that_fails_to_import_is_listed_with_its_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = registry.entry_point_map

    def with_a_broken_plugin() -> dict[str, EntryPoint]:
        points = real()
        points["broken"] = EntryPoint("broken", "no_such_package.sinks:Broken", registry.GROUP)
        return points

    monkeypatch.setattr(registry, "entry_point_map", with_a_broken_plugin)
    rows = {row["name"]: row for row in cli.list_sinks()}
    assert rows["broken"]["class"] == "no_such_package.sinks:Broken"
    assert "failed to import" in rows["broken"]["error"]
    assert rows["broken"]["url_help"] == ""
    assert rows["jsonl"]["error"] == ""


def test_check_sinks_reports_each_sink_in_order_with_secrets_masked(
    tmp_path: Path, redis_client: redis.Redis
) -> None:
    good_secret, bad_secret = new_whsec(), "whsec_bad+key/not*base64"
    pg_password = "hunter2-password"
    with WebhookReceiver([good_secret]) as receiver:
        sinks = [
            f"jsonl://{tmp_path}/calls.jsonl",
            receiver.sink_url(query="name=hook"),
            f"webhook+https://hooks.example.com/in?secret={bad_secret}&name=badhook",
            f"sql+sqlite://{tmp_path}/calls.db?name=lite",
            f"sql+postgresql://app:{pg_password}@127.0.0.1:{free_port()}/db"
            "?name=pg&connect_timeout=2",
            "nosuchsink://x?token=tok-1234567890",
        ]
        settings = Settings.from_env({"SINKS": " ".join(sinks)}, dotenv=False)

        results = cli.check_sinks(settings, redis_client)

        assert receiver.received == [], "check must not deliver anything"
    names = [name for name, _, _ in results]
    assert names == ["jsonl", "hook", "badhook", "lite", "pg", "nosuchsink"]
    ok = {name: passed for name, passed, _ in results}
    assert ok == {
        "jsonl": True,
        "hook": True,
        "badhook": False,
        "lite": True,
        "pg": False,
        "nosuchsink": False,
    }
    messages = dict((name, message) for name, _, message in results)
    assert "valid base64" in messages["badhook"]
    assert "retryable" in messages["pg"]
    assert "no sink is registered" in messages["nosuchsink"]
    everything = repr(results)
    for secret in (
        good_secret,
        good_secret[6:],
        bad_secret,
        bad_secret[6:],
        pg_password,
        "tok-1234567890",
    ):
        assert secret not in everything, f"{secret!r} leaked"


def test_url_secrets_covers_every_spelling() -> None:
    found = url_secrets(
        "webhook+https://u:pw%2Fx@h/p?secret=whsec_abcd+efgh%20whsec_ijkl&q=12345"
    )
    for value in ("pw%2Fx", "pw/x", "whsec_abcd+efgh", "whsec_ijkl", "abcd+efgh", "ijkl"):
        assert value in found
    assert "12345" not in found
