from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from worker.spool import Spool


def test_written_callbacks_drain_in_order(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    for n in range(5):
        spool.write({"CallSid": f"c{n}"})
    assert spool.count() == 5
    got: list[dict[str, Any]] = []
    assert spool.drain(lambda fields, _account: got.append(fields)) == 5
    assert [g["CallSid"] for g in got] == [f"c{n}" for n in range(5)]
    assert spool.count() == 0


def test_a_failed_drain_keeps_everything_for_next_time(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.write({"CallSid": "a"})
    spool.write({"CallSid": "b"})

    def down(_: dict[str, Any], _account: str) -> None:
        raise ConnectionError("redis still down")

    with pytest.raises(ConnectionError):
        spool.drain(down)
    assert spool.count() == 2
    got: list[dict[str, Any]] = []
    spool.drain(lambda fields, _account: got.append(fields))
    assert {g["CallSid"] for g in got} == {"a", "b"}


def test_no_temporary_files_left_and_stale_claims_reclaimed(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    path = spool.write({"CallSid": "x"})
    assert [p.name for p in tmp_path.iterdir()] == [path.name]
    claimed = path.with_name(path.name + ".claimed-999-abc")
    os.replace(path, claimed)
    os.utime(claimed, (1, 1))  # a drainer that died long ago
    got: list[tuple[dict[str, Any], str]] = []
    spool.drain(lambda fields, account: got.append((fields, account)))
    assert got == [({"CallSid": "x"}, "default")]


def test_unwritable_spool_raises(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(OSError):
        Spool(blocker / "spool").write({"CallSid": "x"})


def test_each_spooled_callback_keeps_the_account_its_url_named(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.write({"CallSid": "a1", "AccountSid": "someone_else"}, "north")
    spool.write({"CallSid": "d1"})
    got: list[tuple[str, str]] = []
    spool.drain(lambda fields, account: got.append((fields["CallSid"], account)))
    assert sorted(got) == [("a1", "north"), ("d1", "default")]
