"""wal2json as an oracle for the PostgreSQL source: read a wal2json slot, and bring its changes and
the agent's into one comparable shape.

Both decoders see the same WAL, but print values differently: wal2json (format-version 2) gives
each column in the output format of the session that reads the slot, as a JSON number for ints,
floats and numerics, a JSON bool for booleans, hex without `\\x` for bytea and a string for the
rest; the agent gives the JSON values of docs/format.md ("Column values"). `Normaliser` maps both
to one canonical value per column, chosen by the column's type in the catalog, never by what
either side claims:

- int (and domains over it): the integer; the agent's must be a JSON integer.
- numeric: PostgreSQL's text, exactly (scale included); the agent's must be a string.
- real, double precision: `repr` of the double, or the word NaN/Infinity/-Infinity.
- bool: the bool. bytea: the bytes (agent: base64; wal2json: hex).
- json, jsonb: the parsed document as a tagged tree whose numbers are doubles, as the agent's
  documented rule makes them.
- time, timetz, timestamp, timestamptz, interval, tstzrange, and arrays: the text PostgreSQL
  prints when the value is cast back in a session of fixed settings (`server_text`), so ISO 8601
  from the agent and the reading session's own style from wal2json meet. The agent's arrays
  (nested lists) are written back as array literals first, after checking each element's JSON
  type: that of the element type's rule, and a string for arrays of enums and domains.
- everything else (text, varchar, char(n), date, uuid, inet, cidr, macaddr, money, bit varying,
  int4range, point, xml, enums): the string, exactly.

wal2json 2.5 prints a float or numeric NaN or ±Infinity as JSON null, the same as SQL NULL. Each
such column therefore has a generated twin, `<column>__text` (TEXT_TWIN_SUFFIX), holding its
text: pgoutput leaves generated columns out, wal2json does not, and the normaliser reads the twin
when wal2json says null, then drops it.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from agent.change import Change

SPECIAL_NUMBERS = frozenset({"NaN", "Infinity", "-Infinity"})
TEXT_TWIN_SUFFIX = "__text"
HEARTBEAT_PREFIX = "wallaby.heartbeat"  # the agent's own messages, which it never records

# Session settings of the connection that casts values to their canonical text. They differ from
# the agent's (IntervalStyle=iso_8601) so that canonical text is never the agent's own output.
CANONICAL_SESSION = "-c TimeZone=UTC -c DateStyle=ISO -c IntervalStyle=postgres -c extra_float_digits=1"

# Base type (format_type without typmod) → how values of it compare.
_KINDS = {
    "smallint": "int",
    "integer": "int",
    "bigint": "int",
    "oid": "int",
    "numeric": "numeric",
    "real": "float",
    "double precision": "float",
    "boolean": "bool",
    "bytea": "bytea",
    "json": "json",
    "jsonb": "json",
    "time without time zone": "server",
    "time with time zone": "server",
    "timestamp without time zone": "server",
    "timestamp with time zone": "server",
    "interval": "server",
    "tstzrange": "server",
    "date": "text",
    "text": "text",
    "character varying": "text",
    "character": "text",
    "uuid": "text",
    "inet": "text",
    "cidr": "text",
    "macaddr": "text",
    "money": "text",
    "bit varying": "text",
    "int4range": "text",
    "point": "text",
    "box": "text",
    "xml": "text",
}
# The JSON types an array element of each kind may have in the agent's change.
_ELEMENT_TYPES: dict[str, tuple[type, ...]] = {
    "int": (int,),
    "numeric": (str,),
    "float": (float, str),
    "bool": (bool,),
    "bytea": (str,),
    "json": (dict, list, str, int, float, bool),
    "server": (str,),
    "text": (str,),
}

_LONG_TEXT = 60  # characters of a value shown in a failure message


@dataclass(frozen=True)
class Column:
    name: str
    type: str  # format_type with typmod: what values are cast to
    kind: str  # a _KINDS value, or "array"
    element_kind: str | None  # arrays: the element's kind
    delimiter: str  # arrays: between elements (";" for box, "," for every other built-in type)
    dimensions: int  # arrays: as declared (pg_attribute.attndims); PostgreSQL does not enforce it
    generated: bool


def _kind(base: str, typtype: str) -> str:
    if typtype == "e":  # an enum: its label
        return "text"
    kind = _KINDS.get(base)
    if kind is None:
        raise AssertionError(f"the oracle has no comparison rule for type {base!r}; add one to _KINDS")
    return kind


def table_columns(conn: psycopg.Connection, table: str) -> list[Column]:
    """The columns of `table` ("schema.name") in order, with how each compares."""
    rows = conn.execute(
        """
        SELECT a.attname, format_type(a.atttypid, a.atttypmod), format_type(b.oid, NULL), b.typtype,
               b.typcategory = 'A', format_type(b.typelem, NULL), e.typtype, e.typdelim::text,
               a.attndims, a.attgenerated <> ''
        FROM pg_attribute a
        JOIN pg_type t ON t.oid = a.atttypid
        JOIN pg_type b ON b.oid = CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE t.oid END
        LEFT JOIN pg_type e ON e.oid = b.typelem
        WHERE a.attrelid = %s::regclass AND a.attnum > 0 AND NOT a.attisdropped
        ORDER BY a.attnum
        """,
        (table,),
    ).fetchall()
    columns = []
    for (
        name,
        type_name,
        base,
        typtype,
        is_array,
        element,
        element_typtype,
        delimiter,
        dimensions,
        generated,
    ) in rows:
        if not is_array:
            kind, element_kind = _kind(base, typtype), None
        elif element_typtype in ("d", "e"):
            kind, element_kind = "array", "text"  # docs/format.md: arrays of domains and enums hold strings
        else:
            kind, element_kind = "array", _kind(element, element_typtype)
        columns.append(Column(name, type_name, kind, element_kind, delimiter or ",", dimensions, generated))
    return columns


def key_columns(conn: psycopg.Connection, table: str) -> list[str]:
    """The columns of the agent's `key`: the replica identity index's, or the primary key's."""
    rows = conn.execute(
        """
        SELECT a.attname FROM pg_index i
        JOIN pg_class c ON c.oid = i.indrelid
        JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, position) ON true
        JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
        WHERE i.indrelid = %s::regclass
          AND CASE c.relreplident WHEN 'i' THEN i.indisreplident ELSE i.indisprimary END
        ORDER BY k.position
        """,
        (table,),
    ).fetchall()
    return [name for (name,) in rows]


def read_wal2json(conn: psycopg.Connection, slot: str, tables: Iterable[str]) -> list[dict[str, Any]]:
    """Every record the wal2json slot holds (consumed), parsed; numbers keep their exact text."""
    rows = conn.execute(
        "SELECT data FROM pg_logical_slot_get_changes(%s, NULL, NULL,"
        " 'format-version', '2', 'include-transaction', 'true', 'include-xids', 'true',"
        " 'include-timestamp', 'true', 'include-lsn', 'true', 'include-types', 'false',"
        " 'add-tables', %s, 'filter-msg-prefixes', %s)",
        (slot, ",".join(tables), HEARTBEAT_PREFIX),
    ).fetchall()
    return [json.loads(data, parse_int=str, parse_float=str) for (data,) in rows]


class Normaliser:
    """Turns agent changes and wal2json records into lists of comparable events (plain dicts)."""

    def __init__(self, conn: psycopg.Connection, tables: Iterable[str]) -> None:
        """`conn` must have been opened with CANONICAL_SESSION options and autocommit."""
        self._conn = conn
        self._columns = {table: {c.name: c for c in table_columns(conn, table)} for table in tables}
        self._keys = {table: key_columns(conn, table) for table in self._columns}
        self._server_cache: dict[tuple[str, str], Any] = {}

    # --- wal2json ----------------------------------------------------------------------------

    def from_wal2json(self, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Events from wal2json's records; transactions without changes (B then C) leave none."""
        events: list[dict[str, Any]] = []
        txn: dict[str, Any] | None = None
        index = 0
        for record in records:
            action = record["action"]
            if action == "B":
                txn = {
                    "xid": int(record["xid"]),
                    "commit_lsn": record["lsn"],
                    "commit_ts": self.server_text("timestamp with time zone", record["timestamp"]),
                }
                index = 0
                continue
            if action == "C":
                txn = None
                continue
            if action == "M" and record["transactional"] is False:
                # Outside any transaction: the agent records it as its own unit at its position.
                context = {"xid": None, "commit_lsn": record["lsn"], "commit_ts": None, "txn_index": 0}
            else:
                assert txn is not None, f"wal2json record outside a transaction: {record}"
                context = {**txn, "txn_index": index}
                index += 1
            events.append({**self._wal2json_event(record), **context, "lsn": record["lsn"]})
        return events

    def _wal2json_event(self, record: dict[str, Any]) -> dict[str, Any]:
        action = record["action"]
        if action == "M":
            return _event(
                "message",
                "",
                message={
                    "prefix": record["prefix"],
                    "content": record["content"],
                    "transactional": record["transactional"],
                },
            )
        table = f"{record['schema']}.{record['table']}"
        if action == "T":
            return _event("truncate", table)
        columns = self._columns[table]
        new = self._wal2json_row(table, record["columns"]) if "columns" in record else None
        old = self._wal2json_row(table, record["identity"]) if "identity" in record else None
        unchanged = []
        if new is not None:
            unchanged = [c.name for c in columns.values() if not c.generated and c.name not in new]
        key_source = old if action == "D" else new
        key = {name: key_source.get(name, ("absent",)) for name in self._keys[table]} if key_source else None
        op = {"I": "insert", "U": "update", "D": "delete"}[action]
        return _event(op, table, key=key, new=new, old=old, unchanged=unchanged)

    def _wal2json_row(self, table: str, items: list[dict[str, Any]]) -> dict[str, Any]:
        columns = self._columns[table]
        raw = {item["name"]: item["value"] for item in items}
        row = {}
        for name, value in raw.items():
            column = columns.get(name)
            if column is None:
                row[name] = ("column unknown to the catalog", value)
            elif not column.generated:
                twin = raw.get(name + TEXT_TWIN_SUFFIX)
                row[name] = self._wal2json_value(column, value, twin)
        return row

    def _wal2json_value(self, column: Column, value: Any, twin: str | None) -> Any:
        kind = column.kind
        if value is None:
            if twin is not None and kind in ("float", "numeric"):
                # NaN or ±Infinity, which wal2json prints as null; anything else is a wal2json bug.
                return (kind, twin) if twin in SPECIAL_NUMBERS else ("wal2json null for", twin)
            return None
        if kind == "int":
            return int(value)
        if kind == "numeric":
            return ("numeric", value)
        if kind == "float":
            return ("float", repr(float(value)))
        if kind == "bool":
            return value
        if kind == "bytea":
            return ("bytes", bytes.fromhex(value))
        if kind == "json":
            return _json_tree(json.loads(value))
        if kind in ("server", "array"):
            return self.server_text(column.type, value)
        return value

    # --- the agent ---------------------------------------------------------------------------

    def from_agent(self, changes: list[Change]) -> list[dict[str, Any]]:
        return [self._agent_event(change) for change in changes]

    def _agent_event(self, change: Change) -> dict[str, Any]:
        context = {
            "xid": change.xid,
            "commit_lsn": change.commit_lsn,
            "commit_ts": None
            if change.commit_ts is None
            else self.server_text("timestamp with time zone", change.commit_ts),
            "txn_index": change.txn_index,
            "lsn": change.lsn,
        }
        if change.op == "message":
            return {**_event("message", change.table, message=change.message), **context}
        if change.table not in self._columns:
            return {**_event(change.op, change.table), **context}
        table = change.table
        new = self._agent_row(table, change.after)
        old = self._agent_row(table, change.before)
        if change.op == "update" and old is None:
            # PostgreSQL sends no old key when the key did not change: wal2json's identity is
            # then the new row's key, which the agent's `key` must equal.
            old = self._agent_row(table, change.key)
        key = self._agent_row(table, change.key)
        unchanged = list(change.unchanged)
        return {**_event(change.op, table, key=key, new=new, old=old, unchanged=unchanged), **context}

    def _agent_row(self, table: str, row: dict[str, Any] | None) -> dict[str, Any] | None:
        if row is None:
            return None
        columns = self._columns[table]
        out = {}
        for name, value in row.items():
            column = columns.get(name)
            out[name] = (
                ("column unknown to the catalog", value)
                if column is None
                else self._agent_value(column, value)
            )
        return out

    def _agent_value(self, column: Column, value: Any) -> Any:
        if value is None:
            return None
        kind = column.kind
        if kind == "int":
            return value if type(value) is int else ("not a JSON integer", value)
        if kind == "numeric":
            return ("numeric", value) if type(value) is str else ("not a string", value)
        if kind == "float":
            if type(value) is float:
                return ("float", repr(value))
            special = type(value) is str and value in SPECIAL_NUMBERS
            return ("float", value) if special else ("not a double", value)
        if kind == "bool":
            return value if type(value) is bool else ("not a JSON bool", value)
        if kind == "bytea":
            try:
                return ("bytes", base64.b64decode(value, validate=True))
            except (binascii.Error, TypeError):
                return ("not base64", value)
        if kind == "json":
            return _json_tree(value)
        if kind == "array":
            if type(value) is not list:
                return ("not a JSON array", value)
            try:
                literal = _array_literal(value, column)
            except _WrongElement as exc:
                return ("array element of the wrong JSON type", exc.args[0], value)
            return self.server_text(column.type, literal)
        if type(value) is not str:
            return ("not a string", value)
        if kind == "server":
            return self.server_text(column.type, value)
        return value

    # --- canonical text ----------------------------------------------------------------------

    def server_text(self, type_name: str, literal: str) -> Any:
        """The text PostgreSQL prints for `literal` cast to `type_name`, in the canonical session."""
        cache_key = (type_name, literal)
        if cache_key not in self._server_cache:
            query = sql.SQL("SELECT {}::{}::text").format(sql.Placeholder(), sql.SQL(type_name))
            try:
                (text,) = self._conn.execute(query, (literal,)).fetchone()  # type: ignore[misc]
                self._server_cache[cache_key] = ("pg", text)
            except psycopg.DataError as exc:
                self._server_cache[cache_key] = ("PostgreSQL cannot read it", literal, str(exc).strip())
        return self._server_cache[cache_key]


def _event(op: str, table: str, **fields: Any) -> dict[str, Any]:
    return {
        "op": op,
        "table": table,
        "key": fields.get("key"),
        "new": fields.get("new"),
        "old": fields.get("old"),
        "unchanged": fields.get("unchanged", []),
        "message": fields.get("message"),
    }


def _json_tree(value: Any) -> Any:
    """A JSON value with its JSON types made explicit, numbers as doubles (so 1 == 1.0 but not True).

    JSON null is ("null",), never None, which stands for SQL NULL.
    """
    if value is None:
        return ("null",)
    if type(value) is bool:
        return value
    if type(value) in (int, float):
        return ("number", float(value))
    if type(value) is str:
        return ("string", value)
    if type(value) is list:
        return ("array", [_json_tree(item) for item in value])
    if type(value) is dict:
        return ("object", {key: _json_tree(item) for key, item in value.items()})
    return ("not JSON", value)


class _WrongElement(Exception):
    """An array element whose JSON type is not the one its element type's rule gives."""


def _array_literal(value: Any, column: Column, depth: int = 0) -> str:
    """PostgreSQL array input for the agent's nested lists, each element written back as text.

    A json or jsonb element may itself be a list, which nests exactly like a further dimension;
    for those, the declared dimensions tell the two apart.
    """
    element_kind = column.element_kind or "text"
    if value is None:
        return "NULL"
    if type(value) is list and (element_kind != "json" or depth < max(column.dimensions, 1)):
        items = (_array_literal(item, column, depth + 1) for item in value)
        return "{" + column.delimiter.join(items) + "}"
    if type(value) not in _ELEMENT_TYPES[element_kind] or (
        element_kind == "float" and type(value) is str and value not in SPECIAL_NUMBERS
    ):
        raise _WrongElement(value)
    if element_kind == "bool":
        text = "true" if value else "false"
    elif element_kind == "float":
        text = value if type(value) is str else repr(value)
    elif element_kind == "bytea":
        try:
            text = "\\x" + base64.b64decode(value, validate=True).hex()
        except binascii.Error:
            raise _WrongElement(value) from None
    elif element_kind == "json":
        text = json.dumps(value)
    else:
        text = str(value)
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


# --- comparing ---------------------------------------------------------------------------------


def first_difference(agent: list[dict[str, Any]], oracle: list[dict[str, Any]]) -> str | None:
    """None when the two event lists are equal; otherwise a report of the first event that differs."""
    for position, (mine, theirs) in enumerate(zip(agent, oracle, strict=False)):
        if mine != theirs:
            return (
                f"change {position} of {len(oracle)} (wal2json) differs:\n"
                + "\n".join(_field_differences(mine, theirs))
                + f"\n  agent:    {_show(mine)}\n  wal2json: {_show(theirs)}"
            )
    if len(agent) != len(oracle):
        extra, side = (agent, "agent") if len(agent) > len(oracle) else (oracle, "wal2json")
        return (
            f"the agent logged {len(agent)} changes and wal2json reported {len(oracle)};"
            f" the first change only {side} has (position {min(len(agent), len(oracle))}):\n"
            f"  {_show(extra[min(len(agent), len(oracle))])}"
        )
    return None


def transactions(events: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """(xid, commit_lsn, commit_ts, number of changes) per transaction, in order."""
    out: list[list[Any]] = []
    for event in events:
        marker = [event["xid"], event["commit_lsn"], event["commit_ts"]]
        if out and out[-1][:3] == marker:
            out[-1][3] += 1
        else:
            out.append([*marker, 1])
    return [tuple(item) for item in out]


def _field_differences(mine: dict[str, Any], theirs: dict[str, Any]) -> list[str]:
    lines = []
    for field in mine:
        if mine[field] == theirs.get(field):
            continue
        if isinstance(mine[field], dict) and isinstance(theirs.get(field), dict):
            for column in sorted(set(mine[field]) | set(theirs[field])):
                a, b = mine[field].get(column, "<absent>"), theirs[field].get(column, "<absent>")
                if a != b:
                    lines.append(f"  {field}.{column}: agent {_show(a)} != wal2json {_show(b)}")
        else:
            lines.append(f"  {field}: agent {_show(mine[field])} != wal2json {_show(theirs.get(field))}")
    return lines


def _show(value: Any) -> str:
    """repr with long strings and bytes cut short, so that a failure message stays readable."""
    if isinstance(value, str | bytes) and len(value) > _LONG_TEXT:
        return f"{value[:_LONG_TEXT]!r}…(+{len(value) - _LONG_TEXT})"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k!r}: {_show(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list | tuple):
        inner = ", ".join(_show(v) for v in value)
        return f"[{inner}]" if isinstance(value, list) else f"({inner})"
    return repr(value)
