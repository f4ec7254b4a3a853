"""The SQL sink on a real SQLite file and a real local PostgreSQL."""

from __future__ import annotations

import json
import sqlite3
import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import inspect

from tests.unit.sinks.conftest import (
    as_json,
    free_port,
    new_call_sid,
    postgres_exec,
    postgres_url,
    sample_record,
    with_params,
)
from worker.errors import PermanentError, SettingsError, TransientError
from worker.settings import Settings
from worker.sinks.base import SinkContext
from worker.sinks.registry import build_sink
from worker.sinks.sql import SqlSink

COLUMNS = {
    "call_sid",
    "account_sid",
    "direction",
    "status",
    "customer_phone",
    "customer_contact",
    "answered_by_name",
    "answered_by_contact",
    "missed",
    "started_at",
    "ended_at",
    "duration_seconds",
    "recording_url",
    "fetched_at",
    "record",
    "updated_at",
}


@pytest.fixture
def context() -> SinkContext:
    return SinkContext(settings=Settings.from_env({}, dotenv=False))


def sql_sink(url: str, context: SinkContext) -> SqlSink:
    sink = build_sink(url, context)
    assert isinstance(sink, SqlSink)
    return sink


# A backend is: a sink URL for a fresh table, and "SELECT ... FROM <table>" -> rows.
Query = Callable[[str], list[tuple[Any, ...]]]


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, str, Query]]:
    table = f"exolegs_sqltest_{uuid.uuid4().hex[:10]}"
    if request.param == "sqlite":
        path = tmp_path / "calls.db"

        def query(sql: str) -> list[tuple[Any, ...]]:
            with sqlite3.connect(path) as conn:
                return conn.execute(sql.replace("{table}", table)).fetchall()

        yield "sqlite", f"sql+sqlite://{path}?table={table}", query
    else:
        base = postgres_url()

        def pg_query(sql: str) -> list[tuple[Any, ...]]:
            return postgres_exec(sql.replace("{table}", table))

        yield "postgresql", with_params(f"sql+{base}", table=table), pg_query
        postgres_exec(f"DROP TABLE IF EXISTS {table}")


def test_upsert_leaves_one_row_with_the_latest_record(
    backend: tuple[str, str, Query], context: SinkContext
) -> None:
    _, url, query = backend
    sink = sql_sink(url, context)
    call_sid = new_call_sid()

    sink.deliver(sample_record(call_sid, status="no-answer"))
    sink.deliver(sample_record(call_sid, status="completed"))
    sink.deliver(sample_record(new_call_sid()))
    sink.close()

    rows = query(f"SELECT status FROM {{table}} WHERE call_sid = '{call_sid}'")
    assert rows == [("completed",)]
    assert query("SELECT count(*) FROM {table}") == [(2,)]


def test_columns_hold_the_record_fields(
    backend: tuple[str, str, Query], context: SinkContext
) -> None:
    dialect, url, query = backend
    sink = sql_sink(url, context)
    call_sid = new_call_sid()
    record = sample_record(call_sid)

    sink.deliver(record)

    with sink.engine().connect() as conn:
        columns = {c["name"] for c in inspect(conn).get_columns(sink.table_name)}
        pk = inspect(conn).get_pk_constraint(sink.table_name)["constrained_columns"]
    assert columns == COLUMNS
    assert pk == ["call_sid"]
    [row] = query(
        "SELECT account_sid, direction, status, customer_phone, customer_contact, "
        "answered_by_name, answered_by_contact, missed, duration_seconds, recording_url "
        f"FROM {{table}} WHERE call_sid = '{call_sid}'"
    )
    customer, answered = record["customer"], record["answered_by"]
    assert row == (
        record["account_sid"],
        record["direction"],
        record["status"],
        customer["phone_e164"],
        customer["contact_uri"],
        answered["name"],
        answered["contact_uri"],
        record["missed"] if dialect == "postgresql" else int(record["missed"]),
        record["duration_seconds"],
        record["recording_url"],
    )
    sink.close()


def test_timestamps_are_the_same_instants(
    backend: tuple[str, str, Query], context: SinkContext
) -> None:
    dialect, url, query = backend
    sink = sql_sink(url, context)
    call_sid = new_call_sid()
    record = sample_record(call_sid)
    sink.deliver(record)
    sink.close()

    [(started, ended, fetched)] = query(
        f"SELECT started_at, ended_at, fetched_at FROM {{table}} WHERE call_sid = '{call_sid}'"
    )
    for stored, original in (
        (started, record["started_at"]),
        (ended, record["ended_at"]),
        (fetched, record["fetched_at"]),
    ):
        instant = datetime.fromisoformat(original)
        if dialect == "postgresql":
            assert isinstance(stored, datetime) and stored.tzinfo is not None
            assert stored == instant
        else:  # SQLite has no time zones: stored as UTC
            assert datetime.fromisoformat(stored).replace(tzinfo=UTC) == instant


def test_the_whole_record_round_trips_as_json(
    backend: tuple[str, str, Query], context: SinkContext
) -> None:
    dialect, url, query = backend
    sink = sql_sink(url, context)
    call_sid = new_call_sid()
    record = sample_record(call_sid, custom_field="Añjali — नमस्ते", callback={"nested": [1, None]})
    sink.deliver(record)
    sink.close()

    [(stored,)] = query(f"SELECT record FROM {{table}} WHERE call_sid = '{call_sid}'")
    held = stored if dialect == "postgresql" else json.loads(stored)
    assert held == as_json(record)
    if dialect == "postgresql":
        [(kind,)] = query(
            f"SELECT jsonb_typeof(record -> 'from') FROM {{table}} WHERE call_sid = '{call_sid}'"
        )
        assert kind == "array"  # JSONB, queryable


def test_concurrent_first_deliveries_create_the_table_once(
    backend: tuple[str, str, Query], context: SinkContext
) -> None:
    _, url, query = backend
    sinks = [sql_sink(url, context) for _ in range(4)]
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(sinks))

    def run(sink: SqlSink) -> None:
        barrier.wait()
        try:
            sink.deliver(sample_record(new_call_sid()))
        except BaseException as err:
            errors.append(err)

    threads = [threading.Thread(target=run, args=(s,)) for s in sinks]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for s in sinks:
        s.close()
    # SQLite may briefly report "locked" between writers: that is a retryable fault.
    assert all(isinstance(e, TransientError) for e in errors), errors
    assert query("SELECT count(*) FROM {table}")[0][0] == len(sinks) - len(errors)


def test_check_connects(backend: tuple[str, str, Query], context: SinkContext) -> None:
    _, url, _ = backend
    sink = sql_sink(url, context)
    said = sink.check()
    assert said.startswith("connected to ") and "will be created" in said
    sink.deliver(sample_record(new_call_sid()))
    assert sink.check().endswith("exists")
    sink.close()


# ---------------------------------------------------------------- URLs


def test_sqlite_paths(
    tmp_path: Path, context: SinkContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    absolute = sql_sink(f"sql+sqlite://{tmp_path}/a/calls.db", context)
    assert absolute.db_url.database == f"{tmp_path}/a/calls.db"
    four = sql_sink(f"sql+sqlite:///{tmp_path}/a/calls.db", context)
    assert four.db_url.database == f"{tmp_path}/a/calls.db"
    relative = sql_sink("sql+sqlite:///./var/calls.db", context)
    assert relative.db_url.database == "./var/calls.db"
    assert relative.display_url == "sql+sqlite:///./var/calls.db"

    monkeypatch.chdir(tmp_path)
    relative.deliver(sample_record(new_call_sid()))
    assert (tmp_path / "var" / "calls.db").is_file()
    relative.close()


def test_postgresql_uses_psycopg3_and_keeps_driver_params(context: SinkContext) -> None:
    sink = sql_sink(
        "sql+postgresql://app:s3cret-pw@db.example:5433/crm"
        "?table=calls&sslmode=require&name=warehouse&rate_limit=5/second",
        context,
    )
    assert sink.db_url.drivername == "postgresql+psycopg"
    assert (sink.db_url.host, sink.db_url.port, sink.db_url.database) == ("db.example", 5433, "crm")
    assert dict(sink.db_url.query) == {"sslmode": "require", "connect_timeout": "10"}
    assert sink.table_name == "calls" and sink.name == "warehouse"
    assert "s3cret-pw" not in sink.display_url and "s3cret-pw" not in repr(sink)
    heroku = sql_sink("sql+postgres://u@h/d", context)
    assert heroku.db_url.drivername == "postgresql+psycopg"
    assert heroku.table_name == "exolegs_calls"


def test_constructing_does_not_connect(context: SinkContext) -> None:
    sink = sql_sink(f"sql+postgresql://nobody@127.0.0.1:{free_port()}/none", context)
    assert sink._engine is None
    engine = sink.engine()
    assert sink.engine() is engine, "one engine per sink"
    assert engine.pool._pre_ping
    sink.close()


@pytest.mark.parametrize(
    "url",
    [
        "sql+mysql://u@h/d",
        "sql://u@h/d",
        "sql+sqlite://",
        "sql+sqlite:///",
    ],
)
def test_unsupported_urls_are_settings_errors(url: str, context: SinkContext) -> None:
    with pytest.raises(SettingsError) as caught:
        build_sink(url, context)
    assert caught.value.variable == "SINKS"


@pytest.mark.parametrize(
    "table",
    ["calls;drop table users", "1calls", "calls-2", "public.calls", "a" * 64, "calls%20x", ""],
)
def test_table_names_must_be_plain_identifiers(
    table: str, context: SinkContext, tmp_path: Path
) -> None:
    url = f"sql+sqlite://{tmp_path}/c.db?table={table}"
    if table == "":
        assert sql_sink(url, context).table_name == "exolegs_calls"
        return
    with pytest.raises(SettingsError, match="identifier"):
        build_sink(url, context)


def test_good_table_names(context: SinkContext, tmp_path: Path) -> None:
    for table in ("calls", "Exolegs_Calls_2", "_x", "a" * 63):
        assert sql_sink(f"sql+sqlite://{tmp_path}/c.db?table={table}", context).table_name == table


# ---------------------------------------------------------------- failures


def test_database_down_is_transient_and_masks_the_password(context: SinkContext) -> None:
    sink = sql_sink(
        f"sql+postgresql://app:hunter2-pw@127.0.0.1:{free_port()}/db?connect_timeout=2", context
    )
    call_sid = new_call_sid()
    with pytest.raises(TransientError) as caught:
        sink.deliver(sample_record(call_sid))
    assert call_sid in caught.value.message
    assert "hunter2-pw" not in str(caught.value)
    assert caught.value.__cause__ is not None
    with pytest.raises(TransientError):
        sink.check()
    sink.close()


def test_sqlite_locked_is_transient(tmp_path: Path, context: SinkContext) -> None:
    path = tmp_path / "calls.db"
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        sink = sql_sink(f"sql+sqlite://{path}?timeout=0.1", context)
        with pytest.raises(TransientError, match="locked"):
            sink.deliver(sample_record(new_call_sid()))
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    sink.deliver(sample_record(new_call_sid()))  # the lock is gone: it works
    sink.close()


def test_a_table_with_another_layout_is_permanent(
    backend: tuple[str, str, Query], context: SinkContext
) -> None:
    _, url, query = backend
    query("CREATE TABLE {table} (call_sid varchar(64) PRIMARY KEY, note text)")
    sink = sql_sink(url, context)
    call_sid = new_call_sid()
    with pytest.raises(PermanentError) as caught:
        sink.deliver(sample_record(call_sid))
    assert call_sid in caught.value.message
    assert "replay" in caught.value.message
    assert "INSERT" not in caught.value.message, "no SQL or parameters in messages"
    sink.close()


def test_a_malformed_timestamp_is_permanent(tmp_path: Path, context: SinkContext) -> None:
    sink = sql_sink(f"sql+sqlite://{tmp_path}/c.db", context)
    with pytest.raises(PermanentError, match="started_at"):
        sink.deliver(sample_record(new_call_sid(), started_at="yesterday"))
    sink.close()
