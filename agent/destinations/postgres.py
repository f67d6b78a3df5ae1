"""`type = "postgres"`: apply changes to tables in another PostgreSQL database, exactly once.

Each batch is one transaction: its rows (set-based statements, see `sql_apply`) and the
destination's position (the batch's last log sequence) in `position_table` commit together. The
position is read and locked first, and records at or below it are skipped, so a batch sent again
after a crash, or twice, changes nothing. docs/destinations/postgres.md is the operator's guide.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from typing import Any, ClassVar

import psycopg

from ..change import Change
from ..config_destinations import PostgresDestinationConfig
from ..delivery import Delivery
from ..errors import first_line
from ..state import StateStore
from .base import DestinationError, PermanentError, RetryableError
from .pg_connect import connect_target
from .sql_apply import SqlApplier, pg_array_text, quote, split_table

__all__ = ["PostgresDestination", "classify_error"]

log = logging.getLogger("agent.destinations.postgres")

# SQLSTATE classes where the same batch can succeed later: connection exceptions, transaction
# rollbacks (serialization failure, deadlock), insufficient resources, objects busy or locked,
# operator intervention (shutdown, cancel), system and internal errors.
_RETRYABLE_CLASSES = frozenset({"08", "40", "53", "55", "57", "58", "XX"})
_ALTER_TABLE = re.compile(r"\s*alter\s+table\b", re.IGNORECASE)


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

    # -- the Destination protocol ---------------------------------------------------------------

    def open(self) -> None:
        try:
            self._connection()
        except psycopg.Error as exc:
            raise classify_error(exc, self.name) from exc

    def write(self, batch: Sequence[Delivery]) -> None:
        if not batch:
            return
        try:
            conn = self._connection()
            with conn.transaction():
                self.apply(list(batch))
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
