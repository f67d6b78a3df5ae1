"""`avro`: one complete Avro object container file per body, holding one table's envelopes.

Avro names allow only [A-Za-z_][A-Za-z0-9_]*, so the record names and column field names are
derived from the table and column names (`avro_name`); a field whose name had to change keeps
the column's real name in its `wallaby.column` attribute. Parsed schemas are cached per table
and column signature: fastavro's `parse_schema` costs far more than writing a small batch.
"""

from __future__ import annotations

import io
import re
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import fastavro

from ..delivery import Delivery
from .base import FormatError
from .schema import (
    ABSENT,
    ENCODING_KEY,
    FLAT_FIELDS,
    IMAGES,
    JSON_ENCODING,
    LAYOUT,
    Body,
    Column,
    ImageLayout,
    build_body,
    restore,
)

__all__ = ["COLUMN_KEY", "AvroFormat", "avro_name", "record_name"]

COLUMN_KEY = "wallaby.column"  # field attribute: the column's name when it is not a valid Avro name
NAMESPACE = "wallaby"
_INVALID = re.compile(r"[^A-Za-z0-9_]")
_TYPES: dict[str, Any] = {
    "bool": "boolean",
    "int": "long",
    "float": "double",
    "string": "string",
    "json": "string",
}


def avro_name(text: str) -> str:
    """`text` as an Avro name: other characters become `_`, and a leading digit or "" gets a `_`."""
    name = _INVALID.sub("_", text)
    return name if name and not name[0].isdigit() else "_" + name


def record_name(table: str) -> tuple[str, str]:
    """(namespace, name) of a table's record: "public.orders" -> ("wallaby.public", "orders")."""
    if not table:
        return NAMESPACE, "change"  # op=message, and ddl without a table
    schema, dot, name = table.partition(".")
    if not dot:
        return NAMESPACE, avro_name(table)
    return f"{NAMESPACE}.{avro_name(schema)}", avro_name(name)


def _field(name: str, kind: str, nullable: bool = True) -> dict[str, Any]:
    type_ = {"type": "array", "items": "string"} if kind == "strings" else _TYPES[kind]
    field: dict[str, Any] = {"name": name, "type": ["null", type_] if nullable else type_}
    if nullable:
        field["default"] = None
    if kind == "json":
        field[ENCODING_KEY] = JSON_ENCODING
    return field


def _stored_names(columns: tuple[Column, ...]) -> list[str]:
    """Field names: a valid Avro name stays as it is, others are derived and numbered on a clash."""
    used = {column.name for column in columns if avro_name(column.name) == column.name}
    names = []
    for column in columns:
        if column.name in used:
            names.append(column.name)
            continue
        base = candidate = avro_name(column.name)
        suffix = 2
        while candidate in used:  # "a-b" becomes "a_b_2" when a column "a_b" exists
            candidate = f"{base}_{suffix}"
            suffix += 1
        used.add(candidate)
        names.append(candidate)
    return names


@lru_cache(maxsize=256)
def _schema(signature: tuple[str, tuple[tuple[Column, ...], ...]]) -> tuple[Any, dict[str, list[str]]]:
    """The parsed schema of a body, and each typed image's field names in column order."""
    table, images = signature
    namespace, name = record_name(table)
    fields = []
    stored: dict[str, list[str]] = {}
    for field_name in LAYOUT:
        if field_name in IMAGES:
            columns = images[IMAGES.index(field_name)]
            if not columns:
                fields.append(_field(field_name, "json"))  # no column anywhere in the batch
                continue
            stored[field_name] = names = _stored_names(columns)
            record_fields = []
            for column, avro_field in zip(columns, names, strict=True):
                field = _field(avro_field, column.kind)
                if avro_field != column.name:
                    field[COLUMN_KEY] = column.name
                record_fields.append(field)
            record = {"type": "record", "name": f"{name}_{field_name}", "fields": record_fields}
            fields.append({"name": field_name, "type": ["null", record], "default": None})
        elif field_name == ABSENT:
            fields.append(_field(ABSENT, "strings"))
        else:
            kind, nullable = FLAT_FIELDS[field_name]
            fields.append(_field(field_name, kind, nullable))
    schema = {"type": "record", "name": name, "namespace": namespace, "fields": fields}
    return fastavro.parse_schema(schema), stored


def _records(body: Body, stored: dict[str, list[str]]) -> list[dict[str, Any]]:
    """Row dicts for fastavro, which writes row by row; zipped from the columns in C loops."""
    namespace, record = record_name(body.table)
    columns: list[list[Any]] = []
    for name in LAYOUT:
        if name in IMAGES:
            image = body.images[name]
            if image.text is not None:
                columns.append(image.text)
            else:
                # fastavro's (name, value) form picks the union branch without validating the
                # record against each branch first, a third of the write time.
                branch = f"{namespace}.{record}_{name}"
                keys = stored[name]
                rows = zip(image.nulls, zip(*image.values, strict=True), strict=True)
                columns.append(
                    [None if null else (branch, dict(zip(keys, row, strict=True))) for null, row in rows]
                )
        elif name == ABSENT:
            columns.append(body.absent)
        else:
            columns.append(body.fields[name])
    return [dict(zip(LAYOUT, row, strict=True)) for row in zip(*columns, strict=True)]


class AvroFormat:
    """An Avro object container file: a header with the schema, then the records in blocks."""

    name = "avro"
    content_type = "application/avro"
    extension = ".avro"
    single_table = True  # one record schema per file, as Avro tools and data lakes expect
    codec = "null"  # uncompressed: fastest, and any Avro reader can read it

    def encode(self, batch: Sequence[Delivery]) -> bytes:
        body = build_body(batch)
        parsed, stored = _schema(body.signature)
        out = io.BytesIO()
        try:
            fastavro.writer(out, parsed, _records(body, stored), codec=self.codec)
        except (ValueError, TypeError, OverflowError) as exc:  # a value that does not fit its type
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise FormatError(f"table {body.table!r}: cannot encode as Avro: {reason}") from None
        return out.getvalue()

    def decode(self, data: bytes) -> list[dict[str, Any]]:
        reader = fastavro.reader(io.BytesIO(data))
        layouts: dict[str, ImageLayout] = {}
        for field in reader.writer_schema["fields"]:
            if field["name"] not in IMAGES:
                continue
            branch = field["type"][1] if isinstance(field["type"], list) else field["type"]
            if isinstance(branch, dict) and branch.get("type") == "record":
                layouts[field["name"]] = tuple(
                    (f["name"], f.get(COLUMN_KEY, f["name"]), f.get(ENCODING_KEY) == JSON_ENCODING)
                    for f in branch["fields"]
                )
            else:
                layouts[field["name"]] = None
        return restore(list(reader), layouts)
