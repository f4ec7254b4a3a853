"""``exolegs web`` says where it listens and which sinks it has, secrets masked."""

from __future__ import annotations

from typing import Any

import pytest

from worker import cli

SECRET = "whsec_ZXhvbGVncy1kb2NzLWV4YW1wbGUta2V5LTMyYnl0ZXM="


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """What gunicorn would have been started with (the web entry point, replaced)."""
    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(cli, "_web_server", lambda: lambda settings, **kw: calls.append(kw))
    for name, value in {
        "CALLBACK_TOKEN": "abcdefghijklmnopqrstuvwxyz",
        "SINKS": f"jsonl://./var/x.jsonl webhook+https://h.example.com/x?secret={SECRET}",
        "PORT": "8123",
        "WEB_CONCURRENCY": "3",
    }.items():
        monkeypatch.setenv(name, value)
    return calls


def test_one_start_up_line_with_the_address_and_masked_sinks(
    served: list[dict[str, Any]], caplog: pytest.LogCaptureFixture
) -> None:
    assert cli.main(["web", "--host", "127.0.0.1"]) == 0
    assert served == [{"bind": "127.0.0.1:8123"}]
    [line] = [r.getMessage() for r in caplog.records if r.name == "exolegs.web"]
    assert line == (
        "exolegs web listening on http://127.0.0.1:8123 (3 workers; sinks: "
        "jsonl://./var/x.jsonl, webhook+https://h.example.com/x?secret=***)"
    )
    assert SECRET not in caplog.text


def test_listens_on_every_address_by_default(served: list[dict[str, Any]]) -> None:
    assert cli.main(["web"]) == 0
    assert served == [{"bind": "0.0.0.0:8123"}]
