"""A third-party sink, installed as its own package, works through the registry.

``tests/plugin_example`` is a separate distribution (``pip install -e
tests/plugin_example``) whose ``pyproject.toml`` registers
``example = "exolegs_example_sink:ExampleSink"`` in the ``exolegs.sinks``
group. It also runs the whole contract suite (case ``example-plugin`` in
``conftest.py``).
"""

from __future__ import annotations

import json
from importlib.metadata import entry_points
from pathlib import Path

import pytest
import redis

from tests.unit.sinks.conftest import as_json, new_call_sid, sample_record
from worker.cli.sinks import list_sinks
from worker.errors import PermanentError, SettingsError
from worker.jobs import ledger
from worker.settings import Settings
from worker.sinks import registry
from worker.sinks.base import Sink, SinkContext


def test_the_plugin_is_installed_as_an_entry_point() -> None:
    [point] = [ep for ep in entry_points(group=registry.GROUP) if ep.name == "example"]
    assert point.value == "exolegs_example_sink:ExampleSink"
    assert point.dist is not None and point.dist.name == "exolegs-example-sink", (
        "run: .venv/bin/pip install -e tests/plugin_example"
    )


def test_a_record_is_delivered_through_the_registry(
    tmp_path: Path, settings: Settings, redis_client: redis.Redis
) -> None:
    context = SinkContext(settings=settings, redis=redis_client)
    sinks = registry.build_sinks([f"example://{tmp_path}/out?name=archive"], context)
    sink = sinks["archive"]
    assert isinstance(sink, Sink) and type(sink).__module__ == "exolegs_example_sink"
    call_sid = new_call_sid()
    record = sample_record(call_sid)

    keep = settings.retention_seconds
    assert ledger.deliver_once(redis_client, sink, record, retention_seconds=keep)
    assert not ledger.deliver_once(redis_client, sink, record, retention_seconds=keep)

    written = tmp_path / "out" / f"{call_sid}.json"
    assert json.loads(written.read_text()) == as_json(record)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [f"{call_sid}.json"]


def test_the_plugin_is_listed_and_its_errors_are_classified(
    tmp_path: Path, settings: Settings
) -> None:
    [row] = [r for r in list_sinks() if r["name"] == "example"]
    assert row["class"] == "exolegs_example_sink:ExampleSink" and row["error"] == ""
    assert "example://" in row["url_help"]

    context = SinkContext(settings=settings)
    sink = registry.build_sink(f"example://{tmp_path}/out", context)
    with pytest.raises(PermanentError, match="not a safe file name"):
        sink.deliver(sample_record("../escape"))
    with pytest.raises(SettingsError, match="names no directory"):
        registry.build_sink("example://", context)
