"""`type = "duckdb"`: the postgres destination's semantics, into a local DuckDB file.

The same planning and set-based statements (`sql_apply`); what differs is the type mapping (a
PostgreSQL type becomes the nearest DuckDB type, see `duckdb_type`), the error classes, and DDL:
only columns and tables are added, no captured statement is ever run (it is PostgreSQL SQL).
docs/destinations/duckdb.md is the operator's guide.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import duckdb
import orjson

from ..config_destinations import DuckDbDestinationConfig
from ..delivery import Delivery
from ..errors import first_line
from ..state import StateStore
from .base import DestinationError, PermanentError, RetryableError
from .sql_apply import SqlApplier, base_type

__all__ = ["DuckDbDestination", "classify_error", "duckdb_type"]

_MAX_DECIMAL_PRECISION = 38
_NUMERIC = re.compile(r"numeric\((\d+)(?:,(\d+))?\)")

# PostgreSQL types (as format_type spells them, without modifiers) -> DuckDB types.
_TYPES = {
    "smallint": "SMALLINT",
    "integer": "INTEGER",
    "bigint": "BIGINT",
    "oid": "BIGINT",
    "boolean": "BOOLEAN",
    "real": "FLOAT",
    "double precision": "DOUBLE",
    "date": "DATE",
    "time without time zone": "TIME",
    "time with time zone": "TIMETZ",
    "timestamp without time zone": "TIMESTAMP",
    "timestamp with time zone": "TIMESTAMPTZ",
    "uuid": "UUID",
    "json": "JSON",
    "jsonb": "JSON",
    "bytea": "BLOB",
}

# Errors where the same batch can succeed later: the file is locked or unwritable, a conflict
# with another transaction, memory, an interrupted or invalidated database (reopened next time).
_RETRYABLE = (
    duckdb.IOException,
    duckdb.TransactionException,
    duckdb.ConnectionException,
    duckdb.OutOfMemoryException,
    duckdb.InterruptException,
    duckdb.FatalException,
    duckdb.InternalException,
)


def duckdb_type(source_type: str) -> str:
    """The DuckDB column type for a PostgreSQL type; VARCHAR for anything without a close match.

    numeric(p,s) becomes DECIMAL(p,s) up to DuckDB's 38 digits; unconstrained or wider numeric
    stays exact as VARCHAR (map it with type_mappings for arithmetic). Arrays become VARCHAR
    holding the array as JSON; intervals VARCHAR holding the ISO 8601 text.
    """
    if source_type.endswith("[]"):
        return "VARCHAR"
    base = base_type(source_type)
    if base == "numeric":
        match = _NUMERIC.search(source_type.replace(" ", ""))
        if match and int(match[1]) <= _MAX_DECIMAL_PRECISION:
            return f"DECIMAL({match[1]},{match[2] or 0})"
        return "VARCHAR"
    return _TYPES.get(base, "VARCHAR")


def classify_error(exc: duckdb.Error, name: str) -> DestinationError:
    """RetryableError for the file and transaction trouble above, PermanentError for the data."""
    message = f"destination {name}: {first_line(exc)}"
    if isinstance(exc, _RETRYABLE):
        return RetryableError(message)
    return PermanentError(message, hint="the target refused these records")


class DuckDbDestination(SqlApplier):
    """Applies batches to a DuckDB database file (see the module docstring)."""

    placeholder = "?"
    lock_clause = ""  # one process holds the file's write lock: no row locks needed
    meta_types: ClassVar[dict[str, str]] = {
        "__ds_synced_at": "TIMESTAMPTZ",
        "__ds_is_deleted": "BOOLEAN",
        "__ds_op": "VARCHAR",
        "__ds_watermark": "BIGINT",
    }
    inferred_types: ClassVar[dict[str, str]] = {
        "bool": "BOOLEAN",
        "int": "BIGINT",
        "float": "DOUBLE",
        "json": "JSON",
        "text": "VARCHAR",
    }

    def __init__(self, config: DuckDbDestinationConfig, state: StateStore | None = None) -> None:
        super().__init__(config, state)
        self.config: DuckDbDestinationConfig = config
        self._conn: duckdb.DuckDBPyConnection | None = None

    # -- the Destination protocol ---------------------------------------------------------------

    def open(self) -> None:
        try:
            self._connection()
        except duckdb.Error as exc:
            self.close()
            raise classify_error(exc, self.name) from exc

    def write(self, batch: Sequence[Delivery]) -> None:
        if not batch:
            return
        try:
            conn = self._connection()
            conn.begin()
            try:
                self.apply(list(batch))
                conn.commit()
            except BaseException:
                self._columns.clear()  # a rolled-back CREATE or ADD COLUMN is gone again
                try:
                    conn.rollback()
                except duckdb.Error:
                    self.close()  # an invalidated database: reopen on the next batch
                raise
        except DestinationError:
            raise
        except duckdb.Error as exc:
            if isinstance(exc, duckdb.FatalException):
                self.close()
            raise classify_error(exc, self.name) from exc

    def position(self) -> int:
        try:
            self._connection()
            return self._read_position()
        except duckdb.Error as exc:
            raise classify_error(exc, self.name) from exc

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            finally:
                self._conn = None

    # -- the connection -------------------------------------------------------------------------

    def _connection(self) -> duckdb.DuckDBPyConnection:
        if self._conn is None:
            path = os.fspath(self.config.path)
            directory = os.path.dirname(os.path.abspath(path))
            os.makedirs(directory, exist_ok=True)
            self._conn = duckdb.connect(path)
            self._columns.clear()
            self._create_position_table()
        return self._conn

    # -- SqlApplier hooks -----------------------------------------------------------------------

    def _execute(self, sql: str, params: list[Any] | tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        assert self._conn is not None
        cursor = self._conn.execute(sql, list(params)) if params else self._conn.execute(sql)
        return cursor.fetchall() if cursor.description else []

    def _rows_from(self) -> str:
        return "(SELECT unnest(CAST(? AS JSON[])) AS r)"

    def _bytes_expr(self, expr: str) -> str:
        return f"from_base64({expr})"

    def _array_text(self, value: list[Any], element_type: str) -> str:
        return orjson.dumps(value).decode()  # VARCHAR holding the array as JSON

    def _wire_converter(self, type_name: str | None) -> Callable[[Any], Any] | None:
        if type_name and type_name.endswith("[]"):
            return None  # r->>i of a JSON array is its JSON text: what the VARCHAR column holds
        return super()._wire_converter(type_name)

    def _target_columns(self, schema: str, table: str) -> dict[str, str] | None:
        rows = self._execute(
            "SELECT column_name, data_type FROM duckdb_columns()"
            " WHERE schema_name = ? AND table_name = ? ORDER BY column_index",
            (schema, table),
        )
        return {row[0]: row[1] for row in rows} or None

    def _map_type(self, source_type: str) -> str:
        return duckdb_type(source_type)
