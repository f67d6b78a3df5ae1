"""`type = "postgres"`: apply changes to tables in another PostgreSQL database, exactly once.

Each batch is one transaction: its rows (set-based statements, see `sql_apply`) and the
destination's position (the batch's last log sequence) in `position_table` commit together. The
position is read and locked first, and records at or below it are skipped, so a batch sent again
after a crash, or twice, changes nothing. docs/destinations/postgres.md is the operator's guide.

A run of inserts (and an append run) is written with a plain COPY, several times faster than the
upsert statement. A COPY has no ON CONFLICT: when one fails (most often a key that is already
there), the transaction is rolled back and the batch applied again by statements only, so the
outcome is always the statement's. See `PostgresDestination._copy_rows`.

A batch that is nothing but inserts of one table, read from the log as version 2 records, skips
even the decoding: the C module `agent._copy` turns the stored records into COPY text directly,
and the server parses one chunk while the next is made (`PostgresDestination._apply_stored`).
Whatever that path cannot take (another op or table, a bytea or array column, a NUL character)
goes the general way, so it changes the speed only, never the rows.
"""

from __future__ import annotations

import base64
import logging
import operator
import re
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import orjson
import psycopg

from ..change import ENVELOPE_START, Change, ChangeFormatError, decode_change
from ..config_destinations import PostgresDestinationConfig
from ..delivery import Delivery, LogBatch
from ..errors import first_line
from ..state import StateStore
from .base import DestinationError, PermanentError, RetryableError
from .pg_connect import connect_target
from .sql_apply import (
    BYTES_TYPES,
    JSON_TYPES,
    META_COLUMNS,
    SqlApplier,
    Step,
    base_type,
    pg_array_text,
    quote,
    split_table,
)

__all__ = ["PostgresDestination", "classify_error"]

try:
    from .. import _copy as _native_copy
except ImportError:  # no compiler when the package was installed: every batch takes plan()
    _native_copy = None

log = logging.getLogger("agent.destinations.postgres")

# SQLSTATE classes where the same batch can succeed later: connection exceptions, transaction
# rollbacks (serialization failure, deadlock), insufficient resources, objects busy or locked,
# operator intervention (shutdown, cancel), system and internal errors.
_RETRYABLE_CLASSES = frozenset({"08", "40", "53", "55", "57", "58", "XX"})
_ALTER_TABLE = re.compile(r"\s*alter\s+table\b", re.IGNORECASE)

# After a COPY into a table fails, that many of the table's next runs skip the attempt: an insert
# stream into a table that already holds its keys (a replay, a second snapshot) would otherwise
# pay for the COPY and the statements on every batch.
COPY_PAUSE_STEPS = 100
# A COPY takes two round trips, the statement one: for fewer rows than this the statement is as fast.
COPY_MIN_ROWS = 10
_SEQ, _PAYLOAD = operator.itemgetter(0), operator.itemgetter(2)  # of a wal Record
# Stored records are turned into COPY text this many at a time: the server parses one chunk while
# the next is made, so the two cores work side by side.
STORED_CHUNK_ROWS = 2000

# Target types that read psycopg's COPY text of a str, int, float or bool value exactly as they
# read the JSON text the statement casts ("t" and "true" are one boolean, "1e+16" and "1e16" one
# number). A column of any other type, text first of all, gets the JSON text itself.
_PARSED_TYPES = frozenset(
    {
        "boolean",
        "smallint",
        "integer",
        "bigint",
        "numeric",
        "real",
        "double precision",
        "date",
        "timestamp with time zone",
        "timestamp without time zone",
        "time with time zone",
        "time without time zone",
        "uuid",
    }
)
# COPY takes values, not now(); these types read the value 'now' as the transaction's start, which
# is what now() returns.
_NOW_TYPES = frozenset({"timestamp with time zone", "timestamp without time zone"})


def classify_error(exc: psycopg.Error, name: str) -> DestinationError:
    """RetryableError for connection trouble and transient conflicts, PermanentError for the data.

    No SQLSTATE means the client side failed (connection refused, lost, timed out): retryable.
    Data exceptions (22), integrity violations (23: NOT NULL, check, foreign key, unique), syntax
    and access problems (42) and the like cannot succeed with the same records: permanent.
    """
    state = getattr(exc, "sqlstate", None)
    message = f"destination {name}: {first_line(exc)}"
    if state is None or state[:2] in _RETRYABLE_CLASSES:
        return RetryableError(message + (f" (SQLSTATE {state})" if state else ""))
    return PermanentError(f"{message} (SQLSTATE {state})", hint="the target refused these records")


def _json_text(value: Any) -> Any:
    """A value as `r->>i` reads it from the statement's JSON: a string as it is, anything else its JSON."""
    return value if value.__class__ is str else orjson.dumps(value).decode()


def _copy_converter(wire: Callable[[Any], Any] | None, target_type: str) -> Callable[[Any], Any] | None:
    """How a column's non-null values become COPY values that the target reads as the statement's cast.

    `wire` is the column's converter on the statement path (JSON and array columns). A bytea
    column gets bytes (psycopg writes them as bytea text), from the base64 the statement decodes.
    """
    target_base = base_type(target_type)
    if target_base in BYTES_TYPES:
        if wire is None:
            return lambda value: base64.b64decode(_json_text(value), validate=True)
        return lambda value: base64.b64decode(_json_text(wire(value)), validate=True)
    if target_base in _PARSED_TYPES and not target_type.endswith("[]"):
        return wire
    if wire is None:
        return _json_text
    return lambda value: _json_text(wire(value))


def _stored_modes(columns: tuple[str, ...], target: dict[str, str], sources: dict[str, str]) -> bytes | None:
    """How agent._copy writes each column, the rules of `_copy_converter` in its terms; None when
    a column needs a conversion only the general path makes (bytea, arrays)."""
    assert _native_copy is not None
    modes = bytearray()
    for column in columns:
        target_type = target[column]
        source_type = sources.get(column) or target_type
        if target_type.endswith("[]") or source_type.endswith("[]") or base_type(target_type) in BYTES_TYPES:
            return None
        if base_type(source_type) in JSON_TYPES:
            modes.append(_native_copy.MODE_JSON)  # the document's JSON text, whatever the target type
        elif base_type(target_type) in _PARSED_TYPES:
            modes.append(_native_copy.MODE_PARSED)
        else:
            modes.append(_native_copy.MODE_TEXT)
    return bytes(modes)


class _NotStored(Exception):
    """A record past the first chunk does not fit the stored path: apply the batch by plan()."""


class _CopyRefused(Exception):
    """A COPY failed in a way the statement might not: apply the batch again without COPY."""

    def __init__(self, table: tuple[str, str], error: BaseException) -> None:
        super().__init__(f"COPY into {table[0]}.{table[1]} failed: {first_line(error)}")
        self.table = table


class PostgresDestination(SqlApplier):
    """Applies batches to a PostgreSQL database with psycopg 3 (see the module docstring)."""

    placeholder = "%s"
    lock_clause = " FOR UPDATE"  # two agents writing the same destination take turns
    meta_types: ClassVar[dict[str, str]] = {
        "__ds_synced_at": "timestamptz",
        "__ds_is_deleted": "boolean",
        "__ds_op": "text",
        "__ds_watermark": "bigint",
    }
    inferred_types: ClassVar[dict[str, str]] = {
        "bool": "boolean",
        "int": "bigint",
        "float": "double precision",
        "json": "jsonb",
        "text": "text",
    }

    def __init__(self, config: PostgresDestinationConfig, state: StateStore | None = None) -> None:
        super().__init__(config, state)
        self.config: PostgresDestinationConfig = config
        self._conn: psycopg.Connection | None = None
        self._known_types: dict[str, bool] = {}
        self._copy_paused: dict[tuple[str, str], int] = {}  # target table -> steps left without COPY
        self._copy_allowed = True  # False while a batch is applied again after a refused COPY
        self._stored_allowed = True  # False while a batch is applied again after _NotStored
        # (schema, table, key) -> (the column types it was checked with, whether COPY fits the table)
        self._copy_fits: dict[tuple[str, str, tuple[str, ...]], tuple[dict[str, str], bool]] = {}
        self.stats.update(rows_copied=0, copy_fallbacks=0, stored_batches=0)

    # -- the Destination protocol ---------------------------------------------------------------

    def open(self) -> None:
        try:
            self._connection()
        except psycopg.Error as exc:
            raise classify_error(exc, self.name) from exc

    def write(self, batch: Sequence[Delivery]) -> None:
        if not batch:
            return
        records = batch if isinstance(batch, LogBatch) else list(batch)  # a LogBatch stays undecoded
        try:
            conn = self._connection()
            self._copy_allowed = self._stored_allowed = True
            while True:  # at most three times: stored records, then plan() with COPY, then without
                stats = dict(self.stats)
                try:
                    with conn.transaction():
                        self.apply(records)
                    break
                except _NotStored:
                    self._columns.clear()  # a CREATE or ADD COLUMN of the attempt is gone again
                    self.stats.update(stats)
                    self._stored_allowed = False
                except _CopyRefused as refused:
                    # No savepoint around each COPY (two more round trips per batch): the whole
                    # transaction is rolled back instead, and the batch applied again by statements.
                    self._columns.clear()
                    self.stats.update(stats)  # the first attempt counted rows that are gone again
                    self.stats["copy_fallbacks"] += 1
                    self._copy_paused[refused.table] = COPY_PAUSE_STEPS
                    log.info(
                        "destination.copy.refused", extra={"destination": self.name, "error": str(refused)}
                    )
                    self._copy_allowed = self._stored_allowed = False
        except DestinationError:
            self._columns.clear()  # a rolled-back CREATE or ADD COLUMN is gone again
            raise
        except psycopg.Error as exc:
            self._columns.clear()
            raise classify_error(exc, self.name) from exc

    def position(self) -> int:
        try:
            self._connection()
            return self._read_position()
        except psycopg.Error as exc:
            raise classify_error(exc, self.name) from exc

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    # -- the connection -------------------------------------------------------------------------

    def _connection(self) -> psycopg.Connection:
        """The open connection, or a new one (after a failure, the old one is broken)."""
        conn = self._conn
        if conn is None or conn.closed or conn.broken:
            if conn is not None:
                conn.close()
            self._conn = None
            # Transactions are explicit: conn.transaction() per batch.
            conn = connect_target(self.config.dsn, self.name, autocommit=True)
            self._conn = conn
            self._columns.clear()
            self._known_types.clear()
            self._create_position_table()
        return conn

    # -- SqlApplier hooks -----------------------------------------------------------------------

    def _execute(self, sql: str, params: list[Any] | tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        assert self._conn is not None
        cursor = self._conn.execute(sql, params or None)  # type: ignore[arg-type]
        return cursor.fetchall() if cursor.description else []

    def _rows_from(self) -> str:
        return "json_array_elements(CAST(%s AS json)) AS r"

    def _bytes_expr(self, expr: str) -> str:
        return f"decode({expr}, 'base64')"

    def _array_text(self, value: list[Any], element_type: str) -> str:
        return pg_array_text(value, element_type)

    def _target_columns(self, schema: str, table: str) -> dict[str, str] | None:
        rows = self._execute(
            "SELECT a.attname, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a"
            " WHERE a.attrelid = to_regclass(quote_ident(%s) || '.' || quote_ident(%s))"
            " AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
            (schema, table),
        )
        return {row[0]: row[1] for row in rows} or None

    def _map_type(self, source_type: str) -> str:
        """The source's own type, when the target knows it (an enum or domain may be missing: text)."""
        known = self._known_types.get(source_type)
        if known is None:
            rows = self._execute("SELECT to_regtype(%s) IS NOT NULL", (source_type,))
            known = self._known_types[source_type] = bool(rows[0][0])
        if known:
            return source_type
        return "text[]" if source_type.endswith("[]") else "text"

    def _copy_rows(self, step: Step, target: dict[str, str], sources: dict[str, str]) -> bool:
        """COPY an append step, or an upsert step of inserts only; False: not done.

        The rows of a step have distinct keys (plan() kept the last change of each), so the COPY
        can only conflict with rows already in the table. Any failure but a lost connection or a
        transient one (see classify_error) raises _CopyRefused: the batch is then applied again
        by statements, whose ON CONFLICT handles existing keys, and whose refusal, if any, is the
        one the destination always gave.
        """
        entries = step.row_list()
        if not self._copy_allowed or len(entries) < COPY_MIN_ROWS:
            return False
        if step.kind == "upsert" and not step.inserts_only:
            return False
        schema, name = self.target_name(step.table)
        paused = self._copy_paused.get((schema, name))
        if paused:
            self._copy_paused[(schema, name)] = paused - 1
            return False
        if self.meta and base_type(target["__ds_synced_at"]) not in _NOW_TYPES:
            return False
        if not self._copy_fits_table(schema, name, step.key if step.kind == "upsert" else (), target):
            return False
        text_columns: list[int] = []  # only a value that is not a string needs converting
        convert: list[tuple[int, Callable[[Any], Any]]] = []
        for i, column in enumerate(step.columns):
            wire = self._wire_converter(sources.get(column) or target[column])
            converter = _copy_converter(wire, target[column])
            if converter is _json_text:
                text_columns.append(i)
            elif converter is not None:
                convert.append((i, converter))
        columns = step.columns + (META_COLUMNS if self.meta else ())
        sql = f"COPY {quote(schema)}.{quote(name)} ({', '.join(map(quote, columns))}) FROM STDIN"
        conn = self._conn
        assert conn is not None
        try:
            with conn.cursor() as cursor, cursor.copy(sql) as copy:
                write_row = copy.write_row
                meta = self.meta
                for values, op, seq in entries:  # the hot loop, as in _write_rows
                    row = list(values.values())  # in step.columns' order: plan() grouped the rows by it
                    for i in text_columns:
                        value = row[i]
                        if value.__class__ is not str and value is not None:
                            row[i] = _json_text(value)
                    for i, converter in convert:
                        value = row[i]
                        if value is not None:
                            row[i] = converter(value)
                    if meta:
                        row += ("now", "true" if op == "delete" else "false", op, seq)
                    write_row(row)
        except (psycopg.Error, ValueError, TypeError) as exc:
            # ValueError, TypeError and psycopg errors without a SQLSTATE on a sound connection
            # are a value COPY could not take (bad base64, a NUL in a string): the statement decides.
            state = getattr(exc, "sqlstate", None)
            if conn.broken or (state is not None and state[:2] in _RETRYABLE_CLASSES):
                raise
            raise _CopyRefused((schema, name), exc) from exc
        self.stats["rows_copied"] += len(entries)
        return True

    def _apply_stored(self, batch: Sequence[Delivery]) -> bool:
        """COPY a batch of inserts of one table from its stored version 2 records; False: not done.

        The first record decides the table, source, key and columns; agent._copy checks that every
        record has exactly those (and is an insert or snapshot) while it writes the COPY text, and
        answers None otherwise. The table must already have every column (the general path
        creates and widens tables) and pass the same checks as `_copy_rows`, whose refusals this
        shares: any COPY failure rolls the batch back and applies it again by statements. The
        rows are not deduplicated by key first as plan() does: two inserts of one key in a batch
        make the COPY fail on the unique index, and the statements then keep the last.
        """
        if _native_copy is None or not (self._stored_allowed and self._copy_allowed) or self.append:
            return False
        if len(batch) < COPY_MIN_ROWS:
            return False
        if isinstance(batch, LogBatch):
            payloads = list(map(_PAYLOAD, batch.records))
            seqs = list(map(_SEQ, batch.records)) if self.meta else None
        else:
            payloads = [delivery.payload for delivery in batch]
            seqs = [delivery.seq for delivery in batch] if self.meta else None
        if payloads[0] is None or not payloads[0].startswith(ENVELOPE_START):
            return False
        try:
            change = decode_change(payloads[0])
        except ChangeFormatError:
            return False  # the general path dead-letters it
        if change.op not in ("insert", "snapshot") or not change.after:
            return False
        schema, name = self.target_name(change.table)
        if self._copy_paused.get((schema, name)):
            return False  # plan() counts the pause down
        columns = tuple(change.after)
        key = tuple(change.key) if change.key else ()
        sources = self.source_types(change.source, change.table)
        target = self._columns.get((schema, name)) or self._target_columns(schema, name)
        if target is None or not all(c in target for c in columns + (META_COLUMNS if self.meta else ())):
            if any(change.after[c] is None and c not in sources for c in columns):
                return False  # that column's type is guessed from the first value: plan() sees them all
            step = Step("upsert", change.table, change.source, columns, key)
            target = self._ensure_table(step, columns, [(change.after, change.op, 0)])
        self._columns[(schema, name)] = target
        if self.meta and base_type(target["__ds_synced_at"]) not in _NOW_TYPES:
            return False
        if not self._copy_fits_table(schema, name, key, target):
            return False
        modes = _stored_modes(columns, target, sources)
        if modes is None:
            return False
        shape = (
            orjson.dumps(change.table),
            orjson.dumps(change.source),
            tuple(k.encode() for k in key),
            tuple(c.encode() for c in columns),
            modes,
        )

        def text(start: int) -> bytes | None:
            end = start + STORED_CHUNK_ROWS
            return _native_copy.copy_text(payloads[start:end], *shape, seqs[start:end] if seqs else None)

        chunk = text(0)
        if chunk is None:
            return False
        columns_sql = ", ".join(map(quote, columns + (META_COLUMNS if self.meta else ())))
        conn = self._conn
        assert conn is not None
        try:
            with (
                conn.cursor() as cursor,
                cursor.copy(f"COPY {quote(schema)}.{quote(name)} ({columns_sql}) FROM STDIN") as copy,
            ):
                copy.write(chunk)
                for start in range(STORED_CHUNK_ROWS, len(payloads), STORED_CHUNK_ROWS):
                    chunk = text(start)
                    if chunk is None:
                        raise _NotStored()
                    copy.write(chunk)
        except psycopg.Error as exc:
            state = getattr(exc, "sqlstate", None)
            if conn.broken or (state is not None and state[:2] in _RETRYABLE_CLASSES):
                raise
            raise _CopyRefused((schema, name), exc) from exc
        self.stats["rows_copied"] += len(batch)
        self.stats["rows_upserted"] += len(batch)
        self.stats["stored_batches"] += 1
        return True

    def _copy_fits_table(self, schema: str, table: str, key: tuple[str, ...], target: dict[str, str]) -> bool:
        """Whether a COPY into the table does what the statement would.

        COPY ignores rules (CREATE RULE), so a table with any goes by statement. With a key, the
        table needs the unique index that the upsert's ON CONFLICT (key) infers: without one the
        statement fails, and so must the destination. Checked once per table and key, and again
        whenever `_ensure_table` looked the table up anew (reconnect, failed batch, DDL).
        """
        cached = self._copy_fits.get((schema, table, key))
        if cached is not None and cached[0] is target:
            return cached[1]
        rows = self._execute(
            "SELECT NOT c.relhasrules AND (%s = 0 OR EXISTS (SELECT FROM pg_index i"
            " WHERE i.indrelid = c.oid AND i.indisunique AND i.indimmediate AND i.indisvalid"
            " AND i.indpred IS NULL AND i.indexprs IS NULL AND i.indnkeyatts = %s"
            ' AND (SELECT array_agg(a.attname::text ORDER BY a.attname::text COLLATE "C")'
            " FROM unnest(i.indkey::int2[]) WITH ORDINALITY AS k (attnum, n)"
            " JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.attnum"
            " WHERE k.n <= i.indnkeyatts) = %s::text[]))"
            " FROM pg_class c WHERE c.oid = to_regclass(quote_ident(%s) || '.' || quote_ident(%s))",
            (len(key), len(key), sorted(key), schema, table),
        )
        fits = bool(rows and rows[0][0])
        self._copy_fits[(schema, table, key)] = (target, fits)
        return fits

    def _raw_ddl(self, change: Change, schema: str, table: str) -> bool:
        """Run the captured statement itself, when that is safe: see docs/destinations/postgres.md.

        Only a single ALTER TABLE, only when the target table lives in the source table's schema
        and exists. It runs in a savepoint with search_path set to that schema (the statement may
        name the table unqualified); if it fails, the savepoint is rolled back, a warning logged,
        and the column reconciliation that follows still adds what is missing.
        """
        details = change.message or {}
        statement = str(details.get("statement") or "").strip().rstrip(";").strip()
        if details.get("command_tag") != "ALTER TABLE" or not _ALTER_TABLE.match(statement):
            return False
        if ";" in statement or split_table(change.table)[0] != schema:
            return False
        if self._target_columns(schema, table) is None:
            return False
        assert self._conn is not None
        try:
            with self._conn.transaction():
                (previous,) = self._execute("SELECT current_setting('search_path')")[0]
                self._execute("SELECT set_config('search_path', %s, true)", (f"{quote(schema)}, public",))
                self._execute(statement)
                self._execute("SELECT set_config('search_path', %s, true)", (previous,))
        except psycopg.Error as exc:
            if self._conn.broken:
                raise
            log.warning(
                "destination.ddl.skipped",
                extra={"destination": self.name, "statement": statement, "error": first_line(exc)},
            )
            return False
        return True
