"""Filling in TOASTed values PostgreSQL did not send with an update.

pgoutput leaves out a TOASTed column an UPDATE did not change. With `toast_fetch = "source"` the
source re-reads just those columns by primary key; with `"full"` it re-reads the whole row. Either
way the value read is the row's value now, which may be newer than the change (a later change
then carries the same or a newer value, so applying the log in order still converges).
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql

from agent.change import Change

from .catalog import column_type, load_as_text, table_columns
from .types import converter_for


class ToastFetcher:
    """Re-reads unchanged TOASTed columns of updates over an ordinary connection."""

    def __init__(self, conn: psycopg.Connection, mode: str) -> None:
        self.conn = conn
        self.mode = mode  # "source" or "full"
        self._types: dict[str, dict[str, tuple[int, str]]] = {}
        self.fetched = 0

    def fill(self, change: Change) -> None:
        if not change.unchanged or not change.key or change.after is None:
            return
        schema, _, table = change.table.partition(".")
        columns = (
            list(change.unchanged) if self.mode == "source" else list(change.after) + list(change.unchanged)
        )
        selected = sql.SQL(", ").join(map(sql.Identifier, columns))
        # Key values are converted (ISO times, ...): cast them back to each column's type.
        where = sql.SQL(" AND ").join(
            sql.SQL("{} = %s::{}").format(sql.Identifier(k), sql.SQL(column_type(self.conn, change.table, k)))
            for k in change.key
        )
        query = sql.SQL("SELECT {} FROM {} WHERE {}").format(selected, sql.Identifier(schema, table), where)
        with self.conn.cursor() as cursor:
            types = self._column_types(schema, table)
            load_as_text(cursor, (types[c][0] for c in columns if c in types))
            row = cursor.execute(query, [_as_text(v) for v in change.key.values()]).fetchone()
        if row is None:
            return  # deleted since: a later delete change follows in the log
        for column, text in zip(columns, row, strict=True):
            change.after[column] = None if text is None else self._convert(schema, table, column, text)
        change.unchanged = []
        self.fetched += 1

    def _column_types(self, schema: str, table: str) -> dict[str, tuple[int, str]]:
        key = f"{schema}.{table}"
        if key not in self._types:
            self._types[key] = {
                name: (oid, type_name) for name, oid, type_name in table_columns(self.conn, key)
            }
        return self._types[key]

    def _convert(self, schema: str, table: str, column: str, text: str) -> Any:
        oid, type_name = self._column_types(schema, table).get(column, (25, "text"))
        return converter_for(oid, type_name)(text)


def _as_text(value: Any) -> str | None:
    """A key value back in PostgreSQL's text form, for the comparison in the query."""
    if value is None:
        return None
    if value is True or value is False:
        return "t" if value else "f"
    return str(value)
