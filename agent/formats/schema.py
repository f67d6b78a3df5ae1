"""Column layout and type inference shared by the typed formats (arrow, parquet and avro).

A body holds one table. Its row images (`key`, `before`, `after`) are typed records whose
fields are the table's columns, each with one kind inferred from its non-None values across
all three images of the batch (docs/formats.md, "Typed row images"):

    only bool -> "bool"     only int -> "int" (int64)     only float -> "float" (double)
    only str -> "string"    no value but None -> "string"
    anything else (a list, a dict, or a mix such as int and float) -> "json"

Every non-None value of a "json" column is carried as its JSON text, strings included, so the
str "[1]" travels as "\\"[1]\\"" and decodes back to a str. An image with no column in the whole
batch (always None or {}) is carried as JSON text too, and `message` always is. A row that
lacks a column another row of the batch has gets null there, and `_absent` names it
("after.col") so `restore` can drop it again: decode gives back exactly the envelopes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from itertools import chain
from operator import attrgetter, is_not
from typing import Any

import orjson

from ..delivery import Delivery
from .base import FormatError

__all__ = [
    "ABSENT",
    "ENCODING_KEY",
    "FLAT_FIELDS",
    "IMAGES",
    "JSON_ENCODING",
    "LAYOUT",
    "Body",
    "Column",
    "Image",
    "ImageLayout",
    "build_body",
    "restore",
]

IMAGES = ("key", "before", "after")
ABSENT = "_absent"  # format bookkeeping, not an envelope field: which row columns were missing
ENCODING_KEY = "wallaby.encoding"  # Arrow field metadata key, Avro field attribute
JSON_ENCODING = "json"

# The envelope's other fields: (kind, nullable). "strings" is a list of str.
FLAT_FIELDS: dict[str, tuple[str, bool]] = {
    "table": ("string", False),
    "op": ("string", False),
    "source": ("string", False),
    "lsn": ("string", True),
    "commit_lsn": ("string", True),
    "xid": ("int", True),
    "commit_ts": ("string", True),
    "unchanged": ("strings", False),
    "txn_index": ("int", False),
    "message": ("json", True),
    "seq": ("int", False),
    "idempotency_key": ("string", False),
}
# Column order of every typed body: the order of Change.to_dict(), then seq, the key, _absent.
LAYOUT = (
    "table", "op", "source", *IMAGES, "lsn", "commit_lsn", "xid", "commit_ts",
    "unchanged", "txn_index", "message", "seq", "idempotency_key", ABSENT,
)  # fmt: skip

_CHANGE_FIELDS = (*(name for name in FLAT_FIELDS if name not in ("seq", "idempotency_key")), *IMAGES)
_CHANGE_GETTER = attrgetter(*_CHANGE_FIELDS)
_IS_NOT_NONE = partial(is_not, None)
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_NONE = type(None)
_KINDS = {bool: "bool", int: "int", float: "float", str: "string"}


@dataclass(frozen=True, slots=True)
class Column:
    """One column of a row image: its name and inferred kind."""

    name: str
    kind: str  # bool, int, float, string or json


@dataclass(slots=True)
class Image:
    """One row image (key, before or after) of a batch, column by column."""

    columns: tuple[Column, ...]  # empty: the image travels as JSON text in `text`
    values: list[list[Any]]  # per column, one value per row; json columns already JSON text
    nulls: list[bool]  # per row: the image is None
    text: list[str | None] | None


@dataclass(slots=True)
class Body:
    """A batch of one table laid out as columns, ready for a typed writer."""

    table: str
    fields: dict[str, list[Any]]  # the FLAT_FIELDS, message already JSON text
    images: dict[str, Image]
    absent: list[list[str] | None]

    @property
    def signature(self) -> tuple[str, tuple[tuple[Column, ...], ...]]:
        """What the body's schema depends on: a cache key for built schemas."""
        return self.table, tuple(image.columns for image in self.images.values())


def build_body(batch: Sequence[Delivery]) -> Body:
    """The columns of `batch`; ValueError if it mixes tables, FormatError for an unencodable value."""
    changes = [delivery.change for delivery in batch]
    # One attrgetter call per change and a zip to transpose: C loops, not one getattr per value.
    by_field = zip(*map(_CHANGE_GETTER, changes), strict=True) if changes else ([] for _ in _CHANGE_FIELDS)
    fields: dict[str, list[Any]] = dict(zip(_CHANGE_FIELDS, map(list, by_field), strict=True))
    tables = set(fields["table"])
    if len(tables) > 1:
        names = ", ".join(sorted(map(repr, tables)))
        raise ValueError(f"this format holds one table per body, the batch mixes {names}: split it by table")
    table = tables.pop() if tables else ""
    fields["seq"] = [delivery.seq for delivery in batch]
    fields["idempotency_key"] = [delivery.idempotency_key for delivery in batch]
    fields["message"] = _json_texts(fields["message"], table, "message")
    for name in ("xid", "txn_index", "seq"):
        _check_int64(fields[name], table, name)

    rows = {image: fields.pop(image) for image in IMAGES}
    names = {image: list(dict.fromkeys(chain.from_iterable(filter(None, rows[image])))) for image in IMAGES}
    values = {image: _row_columns(rows[image], names[image]) for image in IMAGES}
    # One kind per column across the three images: they are the same table's columns.
    seen: dict[str, set[type]] = {}
    for image in IMAGES:
        for name, column in zip(names[image], values[image], strict=True):
            seen.setdefault(name, set()).update(map(type, column))
    kinds = {name: _kind(types) for name, types in seen.items()}

    absent: list[list[str] | None] = [None] * len(changes)
    images = {}
    for image in IMAGES:
        nulls = [row is None for row in rows[image]] if None in rows[image] else [False] * len(changes)
        if not names[image]:
            images[image] = Image((), [], nulls, _json_texts(rows[image], table, image))
            continue
        columns = tuple(Column(name, kinds[name]) for name in names[image])
        encoded = [_encode(column, c, table, image) for column, c in zip(values[image], columns, strict=True)]
        images[image] = Image(columns, encoded, nulls, None)
        _mark_absent(absent, rows[image], image, names[image])
    return Body(table, fields, images, absent)


def _row_columns(rows: list[Any], names: list[str]) -> list[list[Any]]:
    """Per column of `names`, its value in each row (None where the row or the column is missing)."""
    if not names:
        return []
    blank = dict.fromkeys(names)
    filled = [blank if row is None else row for row in rows] if None in rows else rows
    if len(set(map(tuple, filled))) == 1:
        # The common case, every row with the same columns in the same order: transpose in C.
        return [list(column) for column in zip(*map(dict.values, filled), strict=True)]
    return [[row.get(name) if row else None for row in rows] for name in names]


def _kind(types: set[type]) -> str:
    types.discard(_NONE)
    if len(types) == 1:
        return _KINDS.get(types.pop(), "json")
    return "json" if types else "string"  # a mix is JSON; a column only ever None is a string


def _encode(values: list[Any], column: Column, table: str, image: str) -> list[Any]:
    if column.kind == "json":
        return _json_texts(values, table, f"{image}.{column.name}")
    if column.kind == "int":
        _check_int64(values, table, f"{image}.{column.name}")
    return values


def _json_texts(values: list[Any], table: str, column: str) -> list[str | None]:
    dumps = orjson.dumps
    try:
        return [None if value is None else dumps(value).decode() for value in values]
    except TypeError as exc:  # orjson.JSONEncodeError: an int beyond 64 bits, a non-str key
        raise FormatError(f"table {table!r}, column {column!r}: cannot encode as JSON: {exc}") from None


def _check_int64(values: list[Any], table: str, column: str) -> None:
    ints = values if None not in values else [value for value in values if value is not None]
    try:
        if not ints or (min(ints) >= _INT64_MIN and max(ints) <= _INT64_MAX):
            return
    except TypeError:  # not all numbers: the writer reports the mistyped value
        return
    bad = next(value for value in ints if not _INT64_MIN <= value <= _INT64_MAX)
    raise FormatError(f"table {table!r}, column {column!r}: {bad} does not fit a 64-bit signed integer")


def _mark_absent(absent: list[list[str] | None], rows: list[Any], image: str, names: list[str]) -> None:
    count = len(names)
    if min(map(len, filter(_IS_NOT_NONE, rows)), default=count) == count:
        return  # every row has every column (the common case), checked in C
    for index, row in enumerate(rows):
        if row is not None and len(row) < count:  # every key of row is in names: fewer means missing
            missing = [f"{image}.{name}" for name in names if name not in row]
            current = absent[index]
            absent[index] = missing if current is None else current + missing


# Per image: None (carried as JSON text) or (stored name, column name, JSON-carried) per field.
ImageLayout = tuple[tuple[str, str, bool], ...] | None


def restore(records: list[dict[str, Any]], layouts: dict[str, ImageLayout]) -> list[dict[str, Any]]:
    """Turn decoded rows (one dict per record, all LAYOUT fields) back into envelopes, in place."""
    loads = orjson.loads
    plans = []
    for image, layout in layouts.items():
        if layout is None:
            plans.append((image, None, None))
        else:
            renames = None if all(s == c for s, c, _ in layout) else [(s, c) for s, c, _ in layout]
            plans.append((image, renames, [c for _, c, is_json in layout if is_json]))
    for record in records:
        absent = record.pop(ABSENT, None)
        if record["message"] is not None:
            record["message"] = loads(record["message"])
        for image, renames, json_columns in plans:
            row = record[image]
            if row is None:
                continue
            if json_columns is None:
                record[image] = loads(row)
                continue
            if renames is not None:
                row = record[image] = {column: row[stored] for stored, column in renames}
            for column in json_columns:
                if row[column] is not None:
                    row[column] = loads(row[column])
        if absent:
            for entry in absent:
                image, _, column = entry.partition(".")
                del record[image][column]
    return records
