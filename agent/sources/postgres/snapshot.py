"""Initial snapshot and backfill: the rows of published tables as `op = "snapshot"` changes.

The initial snapshot reads inside the snapshot PostgreSQL exported when it created the slot, so
the stream (which starts at the slot's consistent point) continues exactly where the snapshot
ends: nothing missed, nothing doubled. Tables are read in primary-key order, in chunks of
`snapshot_chunk_rows`; after each chunk is durable its last key is saved, so a crash resumes from
the last finished chunk instead of re-reading the table.

A snapshot resumed after a crash can no longer use the exported snapshot (it died with the
connection), so its remaining chunks are read as of the resume; rows changed in between then also
arrive later as stream changes, and applying the log in order converges on the source's rows.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson
import psycopg
from psycopg import sql

import wal
from agent.change import Change, encode_change
from agent.state import StateStore

from .catalog import column_type, load_as_text, primary_key, table_columns, text_session
from .lsn import format_lsn, parse_lsn
from .types import value_converter

if TYPE_CHECKING:
    from .source import PostgresSource

log = logging.getLogger("agent.source.postgres.snapshot")

Progress = Callable[[str, int], None]  # (table, rows read so far in it)


@dataclass(frozen=True)
class TableShape:
    """What a chunked read of one table needs: its columns, their types, and its key."""

    table: str
    columns: tuple[str, ...]
    converters: tuple[Callable[[str], Any] | None, ...]
    key: tuple[str, ...]  # primary key; empty when the table has none (read in one pass)


def published_tables(conn: psycopg.Connection, publication: str) -> list[str]:
    rows = conn.execute(
        "SELECT schemaname, tablename FROM pg_publication_tables WHERE pubname = %s ORDER BY 1, 2",
        (publication,),
    ).fetchall()
    return [f"{schema}.{name}" for schema, name in rows]


def table_shape(conn: psycopg.Connection, table: str) -> TableShape:
    """The table's columns and key; also makes `conn` load its column types as text."""
    schema, _, name = table.partition(".")
    columns = table_columns(conn, table)
    load_as_text(conn, (oid for _name, oid, _type in columns))
    converters = tuple(value_converter(oid, type_name) for _name, oid, type_name in columns)
    key = primary_key(conn, schema, name) or []
    return TableShape(table, tuple(c[0] for c in columns), converters, tuple(key))


def read_chunks(
    conn: psycopg.Connection, shape: TableShape, chunk_rows: int, after_key: list[Any] | None
) -> Iterator[tuple[list[dict[str, Any]], list[Any] | None]]:
    """Rows in key order, `chunk_rows` at a time, each chunk with its last key (as text).

    Values arrive as PostgreSQL's text output (see `table_shape`), so they go through the same
    converters as the stream's.
    """
    schema, _, name = shape.table.partition(".")
    target = sql.Identifier(schema, name)
    selected = sql.SQL(", ").join(map(sql.Identifier, shape.columns))
    key_positions = [shape.columns.index(k) for k in shape.key]
    if not shape.key:
        with conn.cursor(name=f"wallaby_snapshot_{uuid.uuid4().hex[:8]}") as cursor:
            cursor.execute(sql.SQL("SELECT {} FROM {}").format(selected, target))
            while rows := cursor.fetchmany(chunk_rows):
                yield [_row(shape, row) for row in rows], None
        return
    keys = sql.SQL(", ").join(map(sql.Identifier, shape.key))
    # The saved key is text: cast each value back to its column's type for the comparison.
    typed = sql.SQL(", ").join(
        sql.SQL("%s::{}").format(sql.SQL(column_type(conn, shape.table, k))) for k in shape.key
    )
    last = after_key
    while True:
        if last is None:
            query = sql.SQL("SELECT {} FROM {} ORDER BY {} LIMIT {}").format(
                selected, target, keys, chunk_rows
            )
            params: list[Any] = []
        else:
            query = sql.SQL("SELECT {} FROM {} WHERE ({}) > ({}) ORDER BY {} LIMIT {}").format(
                selected, target, keys, typed, keys, chunk_rows
            )
            params = list(last)
        rows = conn.execute(query, params).fetchall()
        if not rows:
            return
        last = [rows[-1][position] for position in key_positions]
        yield [_row(shape, row) for row in rows], last
        if len(rows) < chunk_rows:
            return


def _row(shape: TableShape, values: tuple) -> dict[str, Any]:
    row: dict[str, Any] = {}
    for name, convert, value in zip(shape.columns, shape.converters, values, strict=True):
        row[name] = value if value is None or convert is None else convert(value)
    return row


class SnapshotReader:
    """Reads tables into the log as snapshot changes, chunk by chunk, saving progress."""

    def __init__(
        self,
        *,
        dsn: str,
        source: str,
        log_: wal.Log,
        state: StateStore,
        lsn: int,
        chunk_rows: int,
        workers: int = 1,
        snapshot_name: str | None = None,
        snapshot_id: str | None = None,
        progress: Progress | None = None,
        stop: threading.Event | None = None,
    ) -> None:
        self.dsn = dsn
        self.source = source
        self.log = log_
        self.state = state
        self.lsn = format_lsn(lsn)
        self.chunk_rows = chunk_rows
        self.workers = max(1, workers)
        self.snapshot_name = snapshot_name
        self.snapshot_id = snapshot_id or self.lsn
        self.progress = progress
        self.stop = stop or threading.Event()
        self.rows_written = 0
        self._lock = threading.Lock()

    def read_tables(self, tables: list[str]) -> int:
        """Read every table not yet finished in this snapshot; return the rows written."""
        done = self.state.snapshot_progress(self.source)
        todo = [t for t in tables if not (t in done and done[t][0] == self.snapshot_id and done[t][3])]
        if self.workers == 1 or len(todo) <= 1:
            for table in todo:
                self._read_table(table, done.get(table))
        else:
            with ThreadPoolExecutor(self.workers, thread_name_prefix=f"snapshot-{self.source}") as pool:
                for future in [pool.submit(self._read_table, t, done.get(t)) for t in todo]:
                    future.result()
        return self.rows_written

    def _read_table(self, table: str, saved: tuple[str, str | None, int, bool] | None) -> None:
        after_key = None
        rows = 0
        resumed = saved is not None and saved[0] == self.snapshot_id and saved[2] > 0
        if resumed and saved is not None and saved[1] is not None:
            after_key, rows = orjson.loads(saved[1]), saved[2]
        with text_session(self.dsn) as conn:
            conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            if self.snapshot_name is not None and not resumed:
                conn.execute(sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(self.snapshot_name)))
            shape = table_shape(conn, table)
            log.info(
                "source.snapshot.table", extra={"source": self.source, "table": table, "resume_rows": rows}
            )
            for chunk, last_key in read_chunks(conn, shape, self.chunk_rows, after_key):
                if self.stop.is_set():
                    return
                last_seq = 0
                for row in chunk:
                    change = Change(
                        table=table,
                        op="snapshot",
                        source=self.source,
                        key={k: row[k] for k in shape.key} if shape.key else None,
                        after=row,
                        lsn=self.lsn,
                    )
                    last_seq = self.log.append(encode_change(change), wait=False)
                if last_seq:
                    self.log.wait_durable(last_seq)
                rows += len(chunk)
                with self._lock:
                    self.rows_written += len(chunk)
                key_json = None if last_key is None else orjson.dumps(last_key).decode()
                self.state.save_snapshot_progress(self.source, table, self.snapshot_id, key_json, rows, False)
                if self.progress is not None:
                    self.progress(table, rows)
            conn.execute("COMMIT")
        self.state.save_snapshot_progress(self.source, table, self.snapshot_id, None, rows, True)
        log.info("source.snapshot.table.done", extra={"source": self.source, "table": table, "rows": rows})


def unfinished_initial_snapshot(state: StateStore, source: str) -> str | None:
    """The id of an initial snapshot a crash interrupted, if any."""
    progress = state.snapshot_progress(source)
    for snapshot_id, _key, _rows, done in progress.values():
        if snapshot_id.startswith("initial-") and not done:
            return snapshot_id
    return None


PENDING_ID = "initial-pending"


def mark_initial_snapshot_pending(source: PostgresSource) -> None:
    """Before creating the slot: record that its snapshot is owed, so a crash between creating
    the slot and reading the first chunk still ends in a snapshot after the restart."""
    _record_owed_tables(source, PENDING_ID)


def _record_owed_tables(source: PostgresSource, snapshot_id: str) -> list[str]:
    """Every published table, recorded as not yet read by `snapshot_id` (before any is read)."""
    config = source.config
    with psycopg.connect(config.dsn, autocommit=True) as conn:
        tables = published_tables(conn, config.publication)
    source.state.clear_snapshot_progress(config.name)
    for table in tables:
        source.state.save_snapshot_progress(config.name, table, snapshot_id, None, 0, False)
    return tables


def resume_initial_snapshot(source: PostgresSource, snapshot_id: str, slot_lsn: int) -> int:
    """Finish an initial snapshot after a crash, from each table's last finished chunk.

    A snapshot still `pending` was owed by a slot created just before a crash: its exported
    snapshot is gone, so it is read now and its rows carry the slot's position `slot_lsn`.
    """
    config = source.config
    tables = [
        t
        for t, (sid, _k, _r, done) in source.state.snapshot_progress(config.name).items()
        if sid == snapshot_id
    ]
    reader = SnapshotReader(
        dsn=config.dsn,
        source=config.name,
        log_=source.log,
        state=source.state,
        lsn=slot_lsn if snapshot_id == PENDING_ID else parse_lsn(snapshot_id.removeprefix("initial-")),
        chunk_rows=config.snapshot_chunk_rows,
        workers=config.snapshot_workers,
        snapshot_id=snapshot_id,
    )
    rows = reader.read_tables(sorted(tables))
    log.info("source.snapshot.resumed", extra={"source": config.name, "tables": len(tables), "rows": rows})
    return rows


def run_initial_snapshot(source: PostgresSource, snapshot_name: str, consistent_lsn: int) -> int:
    """Called by the source right after creating its slot, while the exported snapshot lives."""
    config = source.config
    snapshot_id = f"initial-{format_lsn(consistent_lsn)}"
    tables = _record_owed_tables(source, snapshot_id)  # a crash before the first chunk resumes them
    reader = SnapshotReader(
        dsn=config.dsn,
        source=config.name,
        log_=source.log,
        state=source.state,
        lsn=consistent_lsn,
        chunk_rows=config.snapshot_chunk_rows,
        workers=config.snapshot_workers,
        snapshot_name=snapshot_name,
        snapshot_id=snapshot_id,
    )
    rows = reader.read_tables(tables)
    log.info("source.snapshot.done", extra={"source": config.name, "tables": len(tables), "rows": rows})
    return rows


__all__ = [
    "SnapshotReader",
    "mark_initial_snapshot_pending",
    "published_tables",
    "read_chunks",
    "resume_initial_snapshot",
    "run_initial_snapshot",
    "unfinished_initial_snapshot",
]
