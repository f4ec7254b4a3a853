"""Upsert one row per call into a SQL table (PostgreSQL or SQLite).

URLs are SQLAlchemy URLs behind a ``sql+`` prefix::

    sql+postgresql://user:password@host:5432/db?table=exolegs_calls&sslmode=require
    sql+sqlite:///abs/path/calls.db          (absolute, like jsonl:///)
    sql+sqlite:///./relative/calls.db        (relative to the working directory)

``postgresql://`` (and Heroku's ``postgres://``) use the psycopg 3 driver.
``table`` (default ``exolegs_calls``), ``name`` and ``rate_limit`` configure
exolegs; every other query parameter goes to the database driver.

The table is created on first use. ``call_sid`` is the primary key and each
delivery is ``INSERT ... ON CONFLICT (call_sid) DO UPDATE``, so delivering a
call twice (a retry, a replay) leaves one row holding the latest record.
Timestamps are timezone-aware on PostgreSQL; SQLite has no time zones, so
they are stored there as UTC.
"""

from __future__ import annotations

import re
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    DateTime,
    Engine,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    inspect,
    text,
)
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL, make_url

from worker.errors import ExolegsError, PermanentError, SettingsError, TransientError
from worker.redact import mask_url, scrub
from worker.sinks.base import CallRecord, Sink, SinkContext

DEFAULT_TABLE = "exolegs_calls"
#: Query parameters that configure exolegs and never reach the database driver.
OWN_PARAMS = frozenset({"table", "name", "rate_limit"})
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
#: SQLite reports everything as OperationalError; only these are worth a retry.
_SQLITE_TRANSIENT = ("locked", "busy", "unable to open", "disk i/o", "out of memory")


def _rebuild(url: str) -> URL:
    """The SQLAlchemy URL (driver picked, exolegs parameters removed)."""
    parts = urlsplit(url)
    backend = parts.scheme.lower().partition("+")[2]
    params = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True)]
    query: dict[str, str | list[str]] = {}
    for key, value in params:
        if key in OWN_PARAMS:
            continue
        existing = query.get(key)
        if existing is None:
            query[key] = value
        elif isinstance(existing, list):
            existing.append(value)
        else:
            query[key] = [existing, value]
    if backend == "sqlite":
        path = parts.path
        if parts.netloc or not path or path == "/":
            raise SettingsError(
                "SINKS",
                f"sql sink {mask_url(url)} names no database file: use "
                "sql+sqlite:///abs/path.db or sql+sqlite:///./relative.db",
            )
        path = "/" + path.lstrip("/")  # sql+sqlite:////abs (SQLAlchemy style) is absolute too
        if path.startswith(("/./", "/../")):
            path = path[1:]
        return URL.create("sqlite", database=path, query=query)
    if backend in ("postgresql", "postgres", "postgresql+psycopg", "postgresql+psycopg2"):
        base = make_url("postgresql+psycopg://" + url.split("://", 1)[1].split("?", 1)[0])
        query.setdefault("connect_timeout", "10")
        return base.set(query=query)
    raise SettingsError(
        "SINKS",
        f"sql sink {mask_url(url)}: unsupported database {backend or '(none)'!r}; "
        "use sql+postgresql://... or sql+sqlite:///...",
    )


def build_table(name: str, metadata: MetaData) -> Table:
    """The calls table: the record's main fields as columns, the whole record as JSON."""
    return Table(
        name,
        metadata,
        Column("call_sid", String(64), primary_key=True),
        Column("account_sid", String(64)),
        Column("direction", String(16)),
        Column("status", String(32)),
        Column("customer_phone", String(32)),
        Column("customer_contact", Text),
        Column("answered_by_name", Text),
        Column("answered_by_contact", Text),
        Column("missed", Boolean),
        Column("started_at", DateTime(timezone=True)),
        Column("ended_at", DateTime(timezone=True)),
        Column("duration_seconds", Integer),
        Column("recording_url", Text),
        Column("fetched_at", DateTime(timezone=True)),
        Column("record", JSON().with_variant(postgresql.JSONB(), "postgresql")),
        Column("updated_at", DateTime(timezone=True), nullable=False),
    )


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _timestamp(record: CallRecord, key: str, *, utc: bool) -> datetime | None:
    value = record.get(key)
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(str(value))
    except ValueError:
        raise PermanentError(
            f"call {record.get('call_sid')}: {key}={value!r} is not an ISO 8601 time; "
            "the record builder produced it - fix it, then replay"
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC) if utc else parsed


def row_of(record: CallRecord, *, utc: bool = False) -> dict[str, Any]:
    """The column values for one record (``utc`` for databases without time zones)."""
    customer = _mapping(record.get("customer"))
    answered = _mapping(record.get("answered_by"))
    duration = record.get("duration_seconds")
    missed = record.get("missed")
    return {
        "call_sid": str(record["call_sid"]),
        "account_sid": _text(record.get("account_sid")),
        "direction": _text(record.get("direction")),
        "status": _text(record.get("status")),
        "customer_phone": _text(customer.get("phone_e164")),
        "customer_contact": _text(customer.get("contact_uri")),
        "answered_by_name": _text(answered.get("name")),
        "answered_by_contact": _text(answered.get("contact_uri")),
        "missed": missed if isinstance(missed, bool) else None,
        "started_at": _timestamp(record, "started_at", utc=utc),
        "ended_at": _timestamp(record, "ended_at", utc=utc),
        "duration_seconds": (
            round(duration)
            if isinstance(duration, int | float) and not isinstance(duration, bool)
            else None
        ),
        "recording_url": _text(record.get("recording_url")),
        "fetched_at": _timestamp(record, "fetched_at", utc=utc),
        "record": record,
        "updated_at": datetime.now(UTC),
    }


class SqlSink(Sink):
    scheme = "sql"
    url_help = (
        "sql+postgresql://user:pass@host/db?table=exolegs_calls or sql+sqlite:///abs/calls.db "
        "- one upserted row per call"
    )
    native_idempotency = True

    def __init__(self, url: str, context: SinkContext) -> None:
        super().__init__(url, context)
        self.table_name = self.query.get("table") or DEFAULT_TABLE
        if not _IDENTIFIER.fullmatch(self.table_name):
            raise SettingsError(
                "SINKS",
                f"sql sink {self.name}: table {self.table_name[:80]!r} is not a plain SQL "
                "identifier (letters, digits and _, not starting with a digit, at most 63)",
            )
        self.db_url = _rebuild(url)
        self.dialect = self.db_url.get_backend_name()
        self.table = build_table(self.table_name, MetaData())
        self._engine: Engine | None = None
        self._ready = False
        self._lock = threading.Lock()
        self._secrets = [s for s in (urlsplit(url).password, self.db_url.password) if s]

    # ------------------------------------------------------------ helpers
    @property
    def display_url(self) -> str:
        """The URL with secrets masked, keeping ``sql+sqlite:///path`` readable."""
        parts = urlsplit(self.url)
        if parts.netloc:
            return mask_url(self.url)
        query = urlsplit(mask_url(self.url)).query
        return f"{parts.scheme}://{parts.path}" + (f"?{query}" if query else "")

    @property
    def where(self) -> str:
        return f"sql sink {self.name} ({self.display_url}, table {self.table_name})"

    def _describe(self, err: BaseException) -> str:
        """The database's own first line about a failure, without SQL or parameters."""
        cause = getattr(err, "orig", None) or err
        first = (str(cause).strip().splitlines() or [type(cause).__name__])[0]
        return scrub(first, [str(s) for s in self._secrets])[:300]

    def engine(self) -> Engine:
        """The sink's engine, created on first use and kept (with a pool) after."""
        with self._lock:
            if self._engine is None:
                if self.dialect == "sqlite" and self.db_url.database:
                    Path(self.db_url.database).parent.mkdir(parents=True, exist_ok=True)
                self._engine = create_engine(self.db_url, pool_pre_ping=True)
            return self._engine

    def classify(self, err: Exception, doing: str) -> ExolegsError:
        """Turn a database failure into a transient or permanent error."""
        detail = self._describe(err)
        retry = f"{self.where}: {doing} failed ({detail}): will retry"
        fix = (
            f"{self.where}: {doing} failed ({detail}): fix the database or the table "
            "(or point ?table= at a new one), then replay the dead letters"
        )
        if isinstance(err, sa_exc.DBAPIError) and err.connection_invalidated:
            return TransientError(retry)
        if isinstance(err, sa_exc.OperationalError):
            if self.dialect == "sqlite" and not any(m in detail.lower() for m in _SQLITE_TRANSIENT):
                return PermanentError(fix)
            return TransientError(retry)
        if isinstance(err, sa_exc.InterfaceError | sa_exc.TimeoutError | sa_exc.DisconnectionError):
            return TransientError(retry)
        if isinstance(err, OSError):
            return TransientError(retry)
        return PermanentError(fix)

    def _ensure_table(self, engine: Engine) -> None:
        if self._ready:
            return
        try:
            self.table.metadata.create_all(engine, checkfirst=True)
        except sa_exc.DBAPIError:
            # Another worker may have created it between our check and our CREATE
            # ("already exists": ProgrammingError, IntegrityError or, on SQLite,
            # OperationalError). Anything else is still a failure.
            if not inspect(engine).has_table(self.table_name):
                raise
        self._ready = True

    def _upsert(self, row: dict[str, Any]) -> Any:
        insert = postgresql.insert if self.dialect == "postgresql" else sqlite.insert
        statement = insert(self.table).values(**row)
        updates = {c: statement.excluded[c] for c in row if c != "call_sid"}
        return statement.on_conflict_do_update(index_elements=["call_sid"], set_=updates)

    # ------------------------------------------------------------ Sink API
    def deliver(self, record: CallRecord) -> None:
        call_sid = record.get("call_sid")
        row = row_of(record, utc=self.dialect == "sqlite")
        try:
            engine = self.engine()
            self._ensure_table(engine)
            with engine.begin() as conn:
                conn.execute(self._upsert(row))
        except (sa_exc.SQLAlchemyError, OSError) as err:
            raise self.classify(err, f"writing call {call_sid}") from err

    def check(self) -> str:
        try:
            engine = self.engine()
            with engine.connect() as conn:
                conn.execute(text("SELECT 1"))
                exists = inspect(conn).has_table(self.table_name)
        except (sa_exc.SQLAlchemyError, OSError) as err:
            raise self.classify(err, "connecting (SELECT 1)") from err
        table = "exists" if exists else "will be created on the first delivery"
        return f"connected to {self.display_url}; table {self.table_name} {table}"

    def close(self) -> None:
        with self._lock:
            if self._engine is not None:
                self._engine.dispose()
                self._engine = None
            self._ready = False
