"""Certify a copy: compare a source PostgreSQL table with its copy in a destination, row by row.

Both sides are read in full (or sampled by key), every value is normalised by the SOURCE column's
type into one canonical form (numeric as plain decimal text, timestamps as UTC ISO 8601, floats by
repr, JSON as sorted compact JSON, bytes as base64, arrays element by element; NULL stays null,
distinct from ""), and each row is hashed under its primary key. Matching keys with different
hashes, keys missing in the copy and keys only in the copy are reported. The destination's
`__ds_*` columns are ignored, and so are rows it marked deleted (`__ds_is_deleted`).

docs/certify.md is the operator's guide.
"""

from __future__ import annotations

import base64
import hashlib
import math
import struct
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, time
from decimal import Decimal, InvalidOperation
from typing import Any, Literal

import orjson
import psycopg

from .destinations.sql_apply import base_type, quote, split_table
from .errors import AgentError
from .sources.postgres.catalog import describe_table, load_as_text, table_columns, text_session
from .sources.postgres.types import convert_value

__all__ = ["CertifyError", "CertifyResult", "certify_table", "normalise"]

DEFAULT_MAX_KEYS = 100
_DELETED = "__ds_is_deleted"
_INTS = frozenset({"smallint", "integer", "bigint", "oid"})
_FLOATS = frozenset({"real", "double precision"})


class CertifyError(AgentError):
    """The comparison cannot run: a missing table, no primary key, a bad argument."""


@dataclass
class CertifyResult:
    """What `certify_table` found; `equal` is the verdict."""

    table: str
    dest_table: str
    equal: bool
    source_rows: int  # every row of the source table
    dest_rows: int  # every row of the copy, leaving out rows marked deleted
    compared_rows: int  # source rows in the sample (all of them without sampling)
    sampled: bool
    source_hash: str  # over the compared rows: equal hashes, equal rows
    dest_hash: str
    missing: list[dict[str, Any]] = field(default_factory=list)  # keys not in the copy
    extra: list[dict[str, Any]] = field(default_factory=list)  # keys only in the copy
    different: list[dict[str, Any]] = field(default_factory=list)  # same key, other values
    differences: int = 0  # all differing keys, even beyond the listed ones
    missing_columns: list[str] = field(default_factory=list)  # source columns the copy lacks

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# -- normalisation ------------------------------------------------------------------------------


def _float(value: Any, single: bool) -> str:
    number = float(value)  # also "NaN", "Infinity", "-Infinity" as PostgreSQL spells them
    if single and math.isfinite(number):
        number = struct.unpack("f", struct.pack("f", number))[0]  # real is 4 bytes on both sides
    return repr(number)


def _numeric(value: Any) -> str:
    try:
        number = Decimal(str(value))
    except InvalidOperation:
        return str(value)
    if not number.is_finite():
        return str(number)
    if number.is_zero():
        return "0"
    return format(number.normalize(), "f")  # 1.50 and 1.5 are the same number


def _moment(value: Any, zoned: bool) -> str:
    if isinstance(value, datetime):
        moment = value
    else:
        try:
            moment = datetime.fromisoformat(str(value))
        except ValueError:  # infinity, BC dates, 5-digit years: compared as text
            return str(value).lower()
    if zoned:
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return moment.replace(tzinfo=None).isoformat(timespec="microseconds")


def _clock(value: Any) -> str:
    if isinstance(value, time):
        return value.isoformat(timespec="microseconds")
    try:
        return time.fromisoformat(str(value)).isoformat(timespec="microseconds")
    except ValueError:  # 24:00:00
        return str(value)


def normalise(value: Any, type_name: str) -> Any:
    """The canonical, JSON-able form of one value of a source column of type `type_name`.

    `value` is the JSON-native form (as the change records and `types.convert_value` give it) or a
    DuckDB value (Decimal, datetime, bytes); JSON and array columns arrive already parsed.
    """
    if value is None:
        return None
    if type_name.endswith("[]"):
        if isinstance(value, list):
            element = type_name[:-2]
            return [normalise(item, element) for item in value]
        return str(value)
    base = base_type(type_name)
    if base == "numeric":
        return _numeric(value)
    if base in _INTS:
        return str(int(value))
    if base in _FLOATS:
        return _float(value, base == "real")
    if base == "boolean":
        return value if isinstance(value, bool) else str(value).lower() in ("t", "true")
    if base.startswith("timestamp"):
        return _moment(value, base.endswith("with time zone"))
    if base == "date":
        return value.isoformat() if isinstance(value, date) else str(value)
    if base.startswith("time"):
        return _clock(value)
    if base in ("json", "jsonb"):
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()
    if base == "bytea" and isinstance(value, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(value)).decode("ascii")
    if base == "uuid":
        return str(value).lower()
    return value if isinstance(value, str) else str(value)


# -- reading both sides -------------------------------------------------------------------------


@dataclass
class _Side:
    rows: int = 0
    entries: dict[bytes, tuple[float, dict[str, Any], bytes]] = field(default_factory=dict)


def _share(canon_key: bytes) -> float:
    """Where a key falls in [0, 1): the same on every run and both sides, for sampling."""
    return int.from_bytes(hashlib.blake2b(canon_key, digest_size=8).digest()) / 2**64


def _collect(
    rows: Iterator[list[Any]], names: list[str], types: list[str], key: list[str], rate: float | None
) -> _Side:
    side = _Side()
    positions = [names.index(column) for column in key]
    for row in rows:
        side.rows += 1
        values = [normalise(value, type_) for value, type_ in zip(row, types, strict=True)]
        canon = orjson.dumps([values[i] for i in positions])
        share = _share(canon)
        if rate is not None and share >= rate:
            continue
        digest = hashlib.blake2b(orjson.dumps(values), digest_size=16).digest()
        side.entries[canon] = (
            share,
            {column: row[i] for column, i in zip(key, positions, strict=True)},
            digest,
        )
    return side


def _read_postgres(
    dsn: str, schema: str, name: str, columns: list[tuple[str, int, str]]
) -> tuple[Iterator[list[Any]], list[str], Any]:
    """Rows of the source columns present in a PostgreSQL table, converted as the source's types."""
    conn = text_session(dsn, autocommit=False)
    try:
        present = {row[0]: row for row in table_columns(conn, f"{schema}.{name}")}
    except (psycopg.errors.UndefinedTable, psycopg.errors.InvalidSchemaName):
        conn.close()
        raise CertifyError(f"no table {schema}.{name} in the copy's database") from None
    load_as_text(conn, [row[1] for row in present.values()])
    chosen = [column for column in columns if column[0] in present]
    where = f" WHERE {quote(_DELETED)} IS NOT TRUE" if _DELETED in present else ""
    select = ", ".join(quote(column[0]) for column in chosen) or "1"
    cursor = conn.cursor(name="wallaby_certify")
    cursor.itersize = 5000
    cursor.execute(f"SELECT {select} FROM {quote(schema)}.{quote(name)}{where}")

    def rows() -> Iterator[list[Any]]:
        for record in cursor:
            yield [
                None if text is None else convert_value(oid, text, type_name)
                for text, (_name, oid, type_name) in zip(record, chosen, strict=True)
            ]

    return rows(), [column[0] for column in chosen], conn


def _read_duckdb(
    path: str, schema: str, name: str, types: dict[str, str]
) -> tuple[Iterator[list[Any]], list[str], Any]:
    import duckdb

    try:
        conn = duckdb.connect(path, read_only=True)
    except duckdb.Error as exc:
        raise CertifyError(f"cannot open DuckDB file {path}: {exc}") from None
    conn.execute("SET TimeZone = 'UTC'")
    present = dict(
        conn.execute(
            "SELECT column_name, data_type FROM duckdb_columns() WHERE schema_name = ? AND table_name = ?",
            [schema, name],
        ).fetchall()
    )
    if not present:
        conn.close()
        raise CertifyError(f"no table {schema}.{name} in {path}")
    chosen = [column for column in types if column in present]
    # Zoned times are read as text: turning them into Python objects needs pytz.
    exprs = [
        f"CAST({quote(c)} AS VARCHAR)"
        if present[c] in ("TIMESTAMP WITH TIME ZONE", "TIME WITH TIME ZONE")
        else quote(c)
        for c in chosen
    ]
    where = f" WHERE {quote(_DELETED)} IS NOT TRUE" if _DELETED in present else ""
    cursor = conn.execute(f"SELECT {', '.join(exprs) or '1'} FROM {quote(schema)}.{quote(name)}{where}")
    parsed = [types[c].endswith("[]") or base_type(types[c]) in ("json", "jsonb") for c in chosen]

    def rows() -> Iterator[list[Any]]:
        while batch := cursor.fetchmany(5000):
            for record in batch:
                yield [
                    _parse_json(value) if parse and isinstance(value, str) else value
                    for value, parse in zip(record, parsed, strict=True)
                ]

    return rows(), chosen, conn


def _parse_json(text: str) -> Any:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return text


# -- the comparison -----------------------------------------------------------------------------


def certify_table(
    source_dsn: str,
    dest: str,
    table: str,
    sample_rate: float | None = None,
    sample_limit: int | None = None,
    *,
    dest_kind: Literal["postgres", "duckdb"] = "postgres",
    dest_schema: str | None = None,
    max_keys: int = DEFAULT_MAX_KEYS,
) -> CertifyResult:
    """Compare `table` ("schema.name") in the source with its copy (see the module docstring).

    `dest` is a PostgreSQL DSN or a DuckDB file path, as `dest_kind` says; the copy is the table
    of the same name, in `dest_schema` when given. `sample_rate` (0 < r <= 1) compares the keys
    whose hash falls below it; `sample_limit` at most that many of those (the lowest hashes).
    At most `max_keys` differing keys of each kind are listed.
    """
    if sample_rate is not None and not 0 < sample_rate <= 1:
        raise CertifyError(f"sample rate must be in (0, 1], not {sample_rate}")
    if sample_limit is not None and sample_limit < 1:
        raise CertifyError(f"sample limit must be at least 1, not {sample_limit}")
    schema, name = split_table(table)
    with text_session(source_dsn) as conn:
        try:
            described = describe_table(conn, schema, name)
        except LookupError:
            raise CertifyError(f"no table {schema}.{name} in the source") from None
        columns = table_columns(conn, f"{schema}.{name}")
    types = {column["name"]: column["type"] for column in described}
    key = [column["name"] for column in described if column["key"]]
    if not key:
        raise CertifyError(f"{schema}.{name} has no primary key: rows cannot be matched")
    rate = sample_rate if sample_rate is not None and sample_rate < 1 else None
    if sample_limit is not None and rate is None:
        rate = 1.0

    dest_name = (dest_schema or schema, name)
    if dest_kind == "duckdb":
        rows, dest_names, dest_conn = _read_duckdb(dest, *dest_name, types)
    else:
        rows, dest_names, dest_conn = _read_postgres(dest, *dest_name, columns)
    try:
        missing_key = [column for column in key if column not in dest_names]
        if missing_key:
            raise CertifyError(f"the copy lacks key column(s) {', '.join(missing_key)}")
        copy = _collect(rows, dest_names, [types[n] for n in dest_names], key, rate)
    finally:
        dest_conn.close()
    # Compare the columns both sides have; the copy lacking one is a difference of its own.
    missing_columns = [column[0] for column in columns if column[0] not in dest_names]
    shared = [column for column in columns if column[0] in dest_names]
    rows, names, source_conn = _read_postgres(source_dsn, schema, name, shared)
    try:
        source = _collect(rows, names, [types[n] for n in names], key, rate)
    finally:
        source_conn.close()
    if sample_limit is not None and len(source.entries) > sample_limit:
        ordered = sorted(source.entries.items(), key=lambda item: item[1][0])
        threshold = ordered[sample_limit - 1][1][0]
        source.entries = dict(ordered[:sample_limit])
        copy.entries = {k: v for k, v in copy.entries.items() if v[0] <= threshold}
    return _verdict(
        table, f"{dest_name[0]}.{dest_name[1]}", source, copy, rate is not None, missing_columns, max_keys
    )


def _digest(side: _Side) -> str:
    digest = hashlib.blake2b(digest_size=16)
    for canon in sorted(side.entries):
        digest.update(canon)
        digest.update(side.entries[canon][2])
    return digest.hexdigest()


def _verdict(
    table: str,
    dest_table: str,
    source: _Side,
    copy: _Side,
    sampled: bool,
    missing_columns: list[str],
    limit: int,
) -> CertifyResult:
    missing = [source.entries[k][1] for k in source.entries if k not in copy.entries]
    extra = [copy.entries[k][1] for k in copy.entries if k not in source.entries]
    different = [
        source.entries[k][1]
        for k in source.entries
        if k in copy.entries and source.entries[k][2] != copy.entries[k][2]
    ]
    differences = len(missing) + len(extra) + len(different)
    equal = differences == 0 and not missing_columns and source.rows == copy.rows
    return CertifyResult(
        table=table,
        dest_table=dest_table,
        equal=equal,
        source_rows=source.rows,
        dest_rows=copy.rows,
        compared_rows=len(source.entries),
        sampled=sampled,
        source_hash=_digest(source),
        dest_hash=_digest(copy),
        missing=missing[:limit],
        extra=extra[:limit],
        different=different[:limit],
        differences=differences,
        missing_columns=missing_columns,
    )
