from __future__ import annotations

import logging
import os
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import redis

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


def _aged(spool: Spool, n: int, age: float = 3600) -> list[Path]:
    """Callbacks spooled ``age`` seconds ago (a long Redis outage)."""
    paths = [spool.write({"CallSid": f"c{i}"}) for i in range(n)]
    for path in paths:
        os.utime(path, (time.time() - age, time.time() - age))
    return paths


def test_an_unparseable_file_is_set_aside_and_never_blocks_the_others(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spool = Spool(tmp_path)
    spool.write({"CallSid": "before"})
    (tmp_path / "0000000001.000000-truncated.json").write_bytes(b'{"CallSid": "ha')
    (tmp_path / "0000000002.000000-list.json").write_bytes(b'["not", "an", "object"]')
    spool.write({"NoSid": "x"})  # parses, but the intake refuses it
    spool.write({"CallSid": "after"})
    got: list[str] = []

    def accept(fields: dict[str, Any], account: str) -> None:
        if "CallSid" not in fields:
            raise ValueError("missing call sid (CallSid or call_sid)")
        got.append(fields["CallSid"])

    with caplog.at_level(logging.ERROR, logger="exolegs.spool"):
        assert spool.drain(accept) == 2
    assert sorted(got) == ["after", "before"]
    bad = sorted(p.name for p in spool.bad())
    assert len(bad) == 3 and all(name.endswith(".json.bad") for name in bad)
    assert "0000000001.000000-truncated.json.bad" in bad
    assert spool.count() == 0  # nothing left waiting; the .bad files wait for a person
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 3
    assert any("0000000001.000000-truncated.json" in e and "set aside" in e for e in errors)
    assert spool.drain(accept) == 0  # the .bad files are not tried again


def test_a_redis_failure_puts_the_file_back_and_ends_the_round(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.write({"CallSid": "a"})

    def down(_: dict[str, Any], __: str) -> None:
        raise redis.ConnectionError("Error 111 connecting")

    with pytest.raises(redis.ConnectionError):
        spool.drain(down)
    assert [p.name.endswith(".json") for p in tmp_path.iterdir()] == [True]
    assert spool.bad() == []


def test_a_claim_refreshes_the_mtime_so_a_second_drainer_leaves_it_alone(tmp_path: Path) -> None:
    first, second = Spool(tmp_path), Spool(tmp_path)
    _aged(first, 3)
    accepted: list[str] = []

    def accept(fields: dict[str, Any], account: str) -> None:
        # While the first drainer is busy with this file, the second one runs.
        second.drain(lambda f, _: accepted.append(f["CallSid"]))
        accepted.append(fields["CallSid"])

    first.drain(accept)
    assert sorted(accepted) == ["c0", "c1", "c2"]  # each once


def test_a_file_that_vanishes_mid_drain_is_skipped(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.write({"CallSid": "taken"})
    spool.write({"CallSid": "kept"})
    got: list[str] = []

    def accept(fields: dict[str, Any], account: str) -> None:
        got.append(fields["CallSid"])
        for claimed in tmp_path.glob("*.claimed-*"):
            claimed.unlink()  # another drainer reclaimed and finished it meanwhile

    assert spool.drain(accept) == 2
    assert got == ["taken", "kept"]
    original = Spool.pending

    def racing(self: Spool) -> list[Path]:
        listed = original(self)
        for path in listed:
            path.unlink()  # gone between the listing and the claim
        return listed

    spool.write({"CallSid": "gone"})
    Spool.pending = racing  # type: ignore[method-assign]
    try:
        assert spool.drain(lambda f, _: got.append(f["CallSid"])) == 0
    finally:
        Spool.pending = original  # type: ignore[method-assign]


def test_several_drainers_at_once_accept_each_file_exactly_once(tmp_path: Path) -> None:
    _aged(Spool(tmp_path), 200)
    accepted: Counter[str] = Counter()
    lock = threading.Lock()

    def accept(fields: dict[str, Any], account: str) -> None:
        time.sleep(0.001)
        with lock:
            accepted[fields["CallSid"]] += 1

    def drainer() -> None:
        spool = Spool(tmp_path)
        for _ in range(5):
            spool.drain(accept)

    threads = [threading.Thread(target=drainer) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(accepted) == 200 and set(accepted.values()) == {1}
    assert list(tmp_path.iterdir()) == []
