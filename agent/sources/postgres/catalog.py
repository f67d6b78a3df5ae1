"""Catalog lookups and text-format sessions shared by the snapshot, backfill and TOAST re-reads.

Rows read over an ordinary connection must convert exactly like the stream's: the same session
settings as the walsender (UTC, ISO dates, ISO intervals, full float digits), every value loaded
as PostgreSQL's own text output, and domains converted by their base type's name, as pgoutput's
Type message names them.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg.types.string import TextLoader

from .replication import DEFAULT_SESSION_OPTIONS

if TYPE_CHECKING:
    from agent.state import StateStore

    from .pgoutput import Relation


def text_session(dsn: str, *, autocommit: bool = True, connect_timeout_s: float = 10.0) -> psycopg.Connection:
    """An ordinary connection with the walsender's output settings."""
    options = " ".join(f"-c {key}={value}" for key, value in DEFAULT_SESSION_OPTIONS.items())
    return psycopg.connect(
        dsn, autocommit=autocommit, options=options, connect_timeout=int(connect_timeout_s)
    )


def load_as_text(conn: psycopg.Connection, type_oids: Iterable[int]) -> None:
    """Make the connection return these types as PostgreSQL's text output, unparsed."""
    for oid in set(type_oids):
        conn.adapters.register_loader(oid, TextLoader)


def table_columns(conn: psycopg.Connection, table: str) -> list[tuple[str, int, str]]:
    """(name, type OID, type name for the converters) of a table's stored columns, in order."""
    schema, _, name = table.partition(".")
    rows = conn.execute(
        "SELECT a.attname, a.atttypid::int, CASE WHEN t.typtype = 'd' THEN b.typname ELSE t.typname END"
        " FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid LEFT JOIN pg_type b ON b.oid = t.typbasetype"
        " WHERE a.attrelid = (quote_ident(%s) || '.' || quote_ident(%s))::regclass"
        " AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = '' ORDER BY a.attnum",
        (schema, name),
    ).fetchall()
    return [(row[0], row[1], row[2]) for row in rows]


def primary_key(conn: psycopg.Connection, schema: str, table: str) -> list[str] | None:
    """The primary key's columns in key order, or None when the table has none."""
    rows = conn.execute(
        "SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)"
        " WHERE i.indrelid = (quote_ident(%s) || '.' || quote_ident(%s))::regclass AND i.indisprimary"
        " ORDER BY array_position(i.indkey::int2[], a.attnum)",
        (schema, table),
    ).fetchall()
    return [row[0] for row in rows] or None


def column_type(conn: psycopg.Connection, table: str, column: str) -> str:
    """The column's SQL type as `format_type` spells it (to cast text back for comparisons)."""
    schema, _, name = table.partition(".")
    row = conn.execute(
        "SELECT format_type(a.atttypid, a.atttypmod) FROM pg_attribute a"
        " WHERE a.attrelid = (quote_ident(%s) || '.' || quote_ident(%s))::regclass AND a.attname = %s",
        (schema, name, column),
    ).fetchone()
    if row is None:
        raise LookupError(f"{table} has no column {column}")
    return row[0]


# -- table schemas for destinations --------------------------------------------------------------


def describe_table(conn: psycopg.Connection, schema: str, name: str) -> list[dict[str, Any]]:
    """A table's stored columns in order: {name, type (format_type), key (primary key member)}.

    Generated columns are left out, as pgoutput leaves them out of the stream.
    Without a primary key, the replica identity index's columns are the key (that is what the
    stream sends as the key). LookupError when the table does not exist.
    """
    rows = conn.execute(
        "SELECT a.attname, format_type(a.atttypid, a.atttypmod),"
        " EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = a.attrelid AND a.attnum = ANY(i.indkey)"
        "   AND (i.indisprimary OR (i.indisreplident AND NOT EXISTS ("
        "     SELECT 1 FROM pg_index p WHERE p.indrelid = a.attrelid AND p.indisprimary))))"
        " FROM pg_attribute a"
        " WHERE a.attrelid = to_regclass(quote_ident(%s) || '.' || quote_ident(%s))"
        " AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = '' ORDER BY a.attnum",
        (schema, name),
    ).fetchall()
    if not rows:
        raise LookupError(f"no table {schema}.{name}")
    return [{"name": row[0], "type": row[1], "key": bool(row[2])} for row in rows]


def describe_relation(conn: psycopg.Connection, relation: Relation) -> list[dict[str, Any]]:
    """The columns a pgoutput Relation message describes, typed by format_type on the server.

    The message's own type OIDs and modifiers are used, not the table's current catalog entry: the
    stream may be behind the catalog (a column added since), and the message is what the rows
    that follow look like. With REPLICA IDENTITY FULL every column is flagged as key; then the
    primary key (if any) is the key.
    """
    columns = relation.columns
    types = conn.execute(
        "SELECT format_type(t.oid, t.mod) FROM unnest(%s::oid[], %s::int[]) WITH ORDINALITY AS t(oid, mod, n)"
        " ORDER BY t.n",
        ([column.type_oid for column in columns], [column.type_modifier for column in columns]),
    ).fetchall()
    keys = {column.name for column in columns if column.key}
    if relation.replica_identity == "f":
        try:
            keys = set(primary_key(conn, relation.namespace, relation.name) or keys)
        except psycopg.errors.UndefinedTable:  # dropped since: keep what the message says
            pass
    return [
        {"name": column.name, "type": type_row[0], "key": column.name in keys}
        for column, type_row in zip(columns, types, strict=True)
    ]


def record_relation_schema(
    state: StateStore, source_name: str, conn: psycopg.Connection, relation: Relation
) -> bool:
    """Store the table schema a Relation message describes (for destinations that create tables).

    Called by the source for every Relation message; writes only when the schema changed, and
    returns whether it did. `conn` is an ordinary (non-replication) connection to the source.
    """
    return state.record_table_schema(source_name, relation.table, describe_relation(conn, relation))
