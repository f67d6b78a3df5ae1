"""Small mutable state under `data_dir/state.db` (SQLite): source positions, the flow state,
DDL events and snapshot progress.

SQLite in WAL mode with `synchronous=FULL` gives atomic, durable updates and lets the CLI
(`ddl approve`, `flow resume`) change state while the agent runs. Everything here is small; the
changes themselves live in the write-ahead log, never in this database.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

STATE_FILE = "state.db"
_BUSY_TIMEOUT_MS = 10_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS source_positions (
    source TEXT PRIMARY KEY,
    slot TEXT NOT NULL,
    system_id TEXT NOT NULL,
    database TEXT NOT NULL,
    last_seq INTEGER NOT NULL,       -- this source's last record known durable in the log
    flushed_lsn TEXT NOT NULL,       -- the last position reported to PostgreSQL as flushed
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS source_barriers (
    source TEXT PRIMARY KEY,
    after_seq INTEGER NOT NULL       -- records up to here were written before `source reset`
);
CREATE TABLE IF NOT EXISTS flow (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    state TEXT NOT NULL,
    reason TEXT,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS ddl_events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    source TEXT NOT NULL,
    lsn TEXT NOT NULL,
    commit_lsn TEXT,
    command_tag TEXT,
    statement TEXT NOT NULL,
    status TEXT NOT NULL,            -- pending, approved, applied, rejected
    seq INTEGER,                     -- the log record holding it, once written
    created_at REAL NOT NULL,
    decided_at REAL
);
CREATE UNIQUE INDEX IF NOT EXISTS ddl_events_position ON ddl_events (source, lsn);
CREATE TABLE IF NOT EXISTS snapshot_progress (
    source TEXT NOT NULL,
    table_name TEXT NOT NULL,
    snapshot_id TEXT NOT NULL,       -- which snapshot run this belongs to
    last_key TEXT,                   -- JSON of the last finished chunk's key, NULL before the first
    rows INTEGER NOT NULL,
    done INTEGER NOT NULL,
    PRIMARY KEY (source, table_name)
);
CREATE TABLE IF NOT EXISTS backfill_requests (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    source TEXT NOT NULL,
    tables TEXT NOT NULL,            -- JSON array of "schema.table"
    status TEXT NOT NULL,            -- pending, running, done, failed
    rows INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    created_at REAL NOT NULL,
    finished_at REAL
);
CREATE TABLE IF NOT EXISTS table_schemas (
    source TEXT NOT NULL,
    table_name TEXT NOT NULL,        -- "schema.name", as change records name it
    columns TEXT NOT NULL,           -- JSON: [{"name", "type" (format_type), "key"}] in column order
    updated_at REAL NOT NULL,
    PRIMARY KEY (source, table_name)
);
"""


@dataclass(frozen=True)
class SourcePosition:
    """Where a source stands: its slot, the server it belongs to and its last durable record."""

    source: str
    slot: str
    system_id: str
    database: str
    last_seq: int
    flushed_lsn: str


@dataclass(frozen=True)
class FlowState:
    """`running`, or `paused` with a reason such as `ddl_pending` or `operator`."""

    state: str
    reason: str | None


@dataclass(frozen=True)
class DdlEvent:
    """A captured DDL statement and what the operator (or the auto policy) decided."""

    id: int
    source: str
    lsn: str
    commit_lsn: str | None
    command_tag: str | None
    statement: str
    status: str
    seq: int | None
    created_at: float
    decided_at: float | None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


DDL_STATUSES = ("pending", "approved", "applied", "rejected")


class StateStore:
    """The agent's `state.db`; safe to share between threads and with other processes."""

    def __init__(self, data_dir: str | os.PathLike[str]) -> None:
        os.makedirs(data_dir, exist_ok=True)
        self.path = os.path.join(os.fspath(data_dir), STATE_FILE)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, timeout=_BUSY_TIMEOUT_MS / 1000, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock, self._db:
            yield self._db

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- source positions ------------------------------------------------------------------------

    def source_position(self, source: str) -> SourcePosition | None:
        with self._transaction() as db:
            row = db.execute(
                "SELECT source, slot, system_id, database, last_seq, flushed_lsn"
                " FROM source_positions WHERE source = ?",
                (source,),
            ).fetchone()
        return SourcePosition(*row) if row else None

    def save_source_position(self, position: SourcePosition) -> None:
        with self._transaction() as db:
            db.execute(
                "INSERT INTO source_positions VALUES (?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (source) DO UPDATE SET slot = excluded.slot, system_id = excluded.system_id,"
                " database = excluded.database, last_seq = excluded.last_seq,"
                " flushed_lsn = excluded.flushed_lsn, updated_at = excluded.updated_at",
                (
                    position.source,
                    position.slot,
                    position.system_id,
                    position.database,
                    position.last_seq,
                    position.flushed_lsn,
                    time.time(),
                ),
            )

    def forget_source(self, source: str, *, log_last_seq: int) -> bool:
        """Drop a source's saved position (and snapshot progress); True when there was one.

        `log_last_seq` (the log's last sequence now) becomes the source's barrier: what it wrote
        before the reset belongs to its old slot, and a restart never dedupes against it.
        """
        with self._transaction() as db:
            removed = db.execute("DELETE FROM source_positions WHERE source = ?", (source,)).rowcount
            db.execute("DELETE FROM snapshot_progress WHERE source = ?", (source,))
            db.execute(
                "INSERT INTO source_barriers VALUES (?, ?) ON CONFLICT (source) DO UPDATE SET after_seq = excluded.after_seq",
                (source, log_last_seq),
            )
        return removed > 0

    def source_barrier(self, source: str) -> int:
        """The log sequence up to which this source's records predate its last reset (0: none)."""
        with self._transaction() as db:
            row = db.execute("SELECT after_seq FROM source_barriers WHERE source = ?", (source,)).fetchone()
        return row[0] if row else 0

    # -- flow --------------------------------------------------------------------------------------

    def flow(self) -> FlowState:
        with self._transaction() as db:
            row = db.execute("SELECT state, reason FROM flow WHERE id = 1").fetchone()
        return FlowState(*row) if row else FlowState("running", None)

    def set_flow(self, state: str, reason: str | None = None) -> None:
        if state not in ("running", "paused"):
            raise ValueError(f"flow state must be running or paused, not {state!r}")
        with self._transaction() as db:
            db.execute(
                "INSERT INTO flow VALUES (1, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET"
                " state = excluded.state, reason = excluded.reason, updated_at = excluded.updated_at",
                (state, reason if state == "paused" else None, time.time()),
            )

    # -- DDL events --------------------------------------------------------------------------------

    def add_ddl_event(
        self,
        source: str,
        lsn: str,
        commit_lsn: str | None,
        command_tag: str | None,
        statement: str,
        status: str,
    ) -> DdlEvent:
        """Store a DDL event once per (source, lsn): a replayed stream finds the earlier one."""
        with self._transaction() as db:
            db.execute(
                "INSERT INTO ddl_events (source, lsn, commit_lsn, command_tag, statement, status, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (source, lsn) DO NOTHING",
                (source, lsn, commit_lsn, command_tag, statement, status, time.time()),
            )
            row = db.execute(_DDL_SELECT + " WHERE source = ? AND lsn = ?", (source, lsn)).fetchone()
        return DdlEvent(*row)

    def ddl_event(self, event_id: int) -> DdlEvent | None:
        with self._transaction() as db:
            row = db.execute(_DDL_SELECT + " WHERE id = ?", (event_id,)).fetchone()
        return DdlEvent(*row) if row else None

    def ddl_events(self, status: str | None = None) -> list[DdlEvent]:
        with self._transaction() as db:
            if status is None:
                rows = db.execute(_DDL_SELECT + " ORDER BY id").fetchall()
            else:
                rows = db.execute(_DDL_SELECT + " WHERE status = ? ORDER BY id", (status,)).fetchall()
        return [DdlEvent(*row) for row in rows]

    def set_ddl_status(self, event_id: int, status: str, *, allowed_from: tuple[str, ...]) -> DdlEvent:
        """Move an event to `status` if it is in one of `allowed_from`; ValueError otherwise."""
        if status not in DDL_STATUSES:
            raise ValueError(f"unknown DDL status {status!r}")
        with self._transaction() as db:
            row = db.execute(_DDL_SELECT + " WHERE id = ?", (event_id,)).fetchone()
            if row is None:
                raise ValueError(f"no DDL event with id {event_id}")
            event = DdlEvent(*row)
            if event.status not in allowed_from:
                raise ValueError(f"DDL event {event_id} is {event.status}, it cannot become {status}")
            db.execute(
                "UPDATE ddl_events SET status = ?, decided_at = ? WHERE id = ?",
                (status, time.time(), event_id),
            )
            row = db.execute(_DDL_SELECT + " WHERE id = ?", (event_id,)).fetchone()
        return DdlEvent(*row)

    def set_ddl_seq(self, event_id: int, seq: int) -> None:
        with self._transaction() as db:
            db.execute("UPDATE ddl_events SET seq = ? WHERE id = ?", (seq, event_id))

    # -- snapshot progress -------------------------------------------------------------------------

    def snapshot_progress(self, source: str) -> dict[str, tuple[str, str | None, int, bool]]:
        """Per table: (snapshot_id, last finished chunk's key as JSON, rows so far, done)."""
        with self._transaction() as db:
            rows = db.execute(
                "SELECT table_name, snapshot_id, last_key, rows, done FROM snapshot_progress WHERE source = ?",
                (source,),
            ).fetchall()
        return {row[0]: (row[1], row[2], row[3], bool(row[4])) for row in rows}

    def save_snapshot_progress(
        self, source: str, table: str, snapshot_id: str, last_key: str | None, rows: int, done: bool
    ) -> None:
        with self._transaction() as db:
            db.execute(
                "INSERT INTO snapshot_progress VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (source, table_name)"
                " DO UPDATE SET snapshot_id = excluded.snapshot_id, last_key = excluded.last_key,"
                " rows = excluded.rows, done = excluded.done",
                (source, table, snapshot_id, last_key, rows, int(done)),
            )

    def clear_snapshot_progress(self, source: str) -> None:
        with self._transaction() as db:
            db.execute("DELETE FROM snapshot_progress WHERE source = ?", (source,))

    # -- table schemas -----------------------------------------------------------------------------
    # The source's column types as it last described each table, so that destinations can create
    # and evolve target tables "from the source's column types" without a link to the source.

    def record_table_schema(self, source: str, table: str, columns: list[dict[str, Any]]) -> bool:
        """Store a table's columns ({name, type, key}); True when they differ from what was stored.

        An unchanged schema is not written again: the source calls this for every Relation
        message, and each write is an fsync.
        """
        text = json.dumps([_schema_column(column) for column in columns], separators=(",", ":"))
        with self._transaction() as db:
            row = db.execute(
                "SELECT columns FROM table_schemas WHERE source = ? AND table_name = ?", (source, table)
            ).fetchone()
            if row is not None and row[0] == text:
                return False
            db.execute(
                "INSERT INTO table_schemas VALUES (?, ?, ?, ?) ON CONFLICT (source, table_name)"
                " DO UPDATE SET columns = excluded.columns, updated_at = excluded.updated_at",
                (source, table, text, time.time()),
            )
        return True

    def table_schema(self, source: str, table: str) -> list[dict[str, Any]] | None:
        """The stored columns of a source's table, in column order; None when never recorded."""
        with self._transaction() as db:
            row = db.execute(
                "SELECT columns FROM table_schemas WHERE source = ? AND table_name = ?", (source, table)
            ).fetchone()
        return json.loads(row[0]) if row else None

    def table_schemas(self) -> list[TableSchema]:
        """Every stored table schema, by source and table."""
        with self._transaction() as db:
            rows = db.execute(
                "SELECT source, table_name, columns, updated_at FROM table_schemas ORDER BY source, table_name"
            ).fetchall()
        return [TableSchema(row[0], row[1], json.loads(row[2]), row[3]) for row in rows]


@dataclass(frozen=True)
class TableSchema:
    """A source table's columns as last recorded: [{"name", "type", "key"}]."""

    source: str
    table: str
    columns: list[dict[str, Any]]
    updated_at: float


def _schema_column(column: dict[str, Any]) -> dict[str, Any]:
    """The three stored fields, checked: a malformed column would break every destination later."""
    name, type_ = column.get("name"), column.get("type")
    if not isinstance(name, str) or not name or not isinstance(type_, str) or not type_:
        raise ValueError(f"a table schema column needs a name and a type: {column!r}")
    return {"name": name, "type": type_, "key": bool(column.get("key", False))}


@dataclass(frozen=True)
class BackfillRequest:
    """An on-demand re-read of some tables, queued for the running agent (or run directly)."""

    id: int
    source: str
    tables: list[str]
    status: str
    rows: int
    error: str | None


def _backfill(row: tuple) -> BackfillRequest:
    return BackfillRequest(row[0], row[1], json.loads(row[2]), row[3], row[4], row[5])


class BackfillQueue:
    """Backfill requests in `state.db`: the CLI adds them, the agent's worker runs them."""

    def __init__(self, store: StateStore) -> None:
        self._store = store

    def add(self, source: str, tables: list[str]) -> BackfillRequest:
        with self._store._transaction() as db:
            cursor = db.execute(
                "INSERT INTO backfill_requests (source, tables, status, created_at) VALUES (?, ?, 'pending', ?)",
                (source, json.dumps(tables), time.time()),
            )
            row = db.execute(_BACKFILL_SELECT + " WHERE id = ?", (cursor.lastrowid,)).fetchone()
        return _backfill(row)

    def get(self, request_id: int) -> BackfillRequest | None:
        with self._store._transaction() as db:
            row = db.execute(_BACKFILL_SELECT + " WHERE id = ?", (request_id,)).fetchone()
        return _backfill(row) if row else None

    def next_pending(self) -> BackfillRequest | None:
        """The oldest request not finished (a running one a crash interrupted comes first)."""
        with self._store._transaction() as db:
            row = db.execute(
                _BACKFILL_SELECT + " WHERE status IN ('running', 'pending') ORDER BY id LIMIT 1"
            ).fetchone()
        return _backfill(row) if row else None

    def update(self, request_id: int, *, status: str, rows: int, error: str | None = None) -> None:
        finished = time.time() if status in ("done", "failed") else None
        with self._store._transaction() as db:
            db.execute(
                "UPDATE backfill_requests SET status = ?, rows = ?, error = ?, finished_at = ? WHERE id = ?",
                (status, rows, error, finished, request_id),
            )


_BACKFILL_SELECT = "SELECT id, source, tables, status, rows, error FROM backfill_requests"

_DDL_SELECT = "SELECT id, source, lsn, commit_lsn, command_tag, statement, status, seq, created_at, decided_at FROM ddl_events"
