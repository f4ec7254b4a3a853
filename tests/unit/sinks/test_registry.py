"""Sink names: built-ins win over plugins, a name two plugins claim is refused, packages named.

Real (if tiny) distributions are put on ``sys.path``: a ``.dist-info`` with
``entry_points.txt`` and a module, as ``pip install`` would leave them.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from worker.cli import sinks as cli
from worker.errors import SettingsError
from worker.settings import Settings
from worker.sinks import registry
from worker.sinks.base import SinkContext
from worker.sinks.webhook import WebhookSink

PLUGIN = """
from worker.sinks.base import Sink


class Grabber(Sink):
    # would receive the webhook URL, secret included, if it could take the name

    url_help = "{name}://"
    seen: list[str] = []

    def __init__(self, url, context):
        super().__init__(url, context)
        Grabber.seen.append(url)

    def deliver(self, record):
        pass
"""


def install(site: Path, package: str, module: str, names: list[str]) -> None:
    (site / f"{module}.py").write_text(PLUGIN.format(name=names[0]))
    info = site / f"{package.replace('-', '_')}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {package}\nVersion: 1.0\n")
    lines = "\n".join(f"{n} = {module}:Grabber" for n in names)
    (info / "entry_points.txt").write_text(f"[exolegs.sinks]\n{lines}\n")


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def context() -> SinkContext:
    return SinkContext(Settings.from_env({}, dotenv=False))


def test_a_plugin_cannot_take_a_builtin_name(site: Path, caplog: pytest.LogCaptureFixture) -> None:
    install(site, "evil-sinks", "evil_sinks", ["webhook", "evilonly"])
    url = "webhook+https://hooks.example.com/x?secret=whsec_c2VjcmV0LXNlY3JldC1zZWNyZXQ=&name=crm"
    sink = registry.build_sink(url, context())
    assert isinstance(sink, WebhookSink)
    assert "evil_sinks" not in sys.modules  # never even imported for a built-in name
    assert any("evil-sinks also registers it (ignored)" in r.message for r in caplog.records)
    rows = {row["name"]: row for row in cli.list_sinks()}
    assert rows["webhook"]["package"] == "exolegs"
    assert "evil-sinks" in rows["webhook"]["note"]
    assert rows["evilonly"]["package"] == "evil-sinks"  # its own names still work


def test_a_name_two_plugins_register_is_refused_in_one_line(site: Path) -> None:
    install(site, "crm-one", "crm_one", ["crmx"])
    install(site, "crm-two", "crm_two", ["crmx"])
    with pytest.raises(SettingsError) as caught:
        registry.build_sink("crmx://host/path?token=abcdef123456", context())
    message = str(caught.value)
    assert message.startswith("SINKS: sink name 'crmx' is registered by several packages")
    assert "crm-one" in message and "crm-two" in message and "\n" not in message
    assert "abcdef123456" not in message
    rows = {row["name"]: row for row in cli.list_sinks()}
    assert rows["crmx"]["package"] == "(several)" and "several packages" in rows["crmx"]["error"]


def test_sinks_list_names_the_package_of_every_sink() -> None:
    rows = {row["name"]: row for row in cli.list_sinks()}
    assert rows["jsonl"]["package"] == "exolegs"
    assert rows["webhook"]["package"] == "exolegs"
    example = [r for r in rows.values() if r["class"].startswith("exolegs_example_sink")]
    assert example and all(r["package"] != "exolegs" for r in example)


def test_the_cli_prints_the_package(capsys: pytest.CaptureFixture[str]) -> None:
    from worker.cli import main

    assert main(["sinks", "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert any(line.split()[:2] == ["jsonl", "exolegs"] for line in lines), lines
