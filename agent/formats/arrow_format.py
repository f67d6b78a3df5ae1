"""`arrow`: an Arrow IPC stream (schema, then one record batch) of one table's envelopes.

`to_arrow_table` and `from_arrow_table` are shared with the parquet format, which writes the
same table into a Parquet file. Columns are built from Python lists with `pa.array`, one call
per column, never row by row.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import pyarrow as pa

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

__all__ = ["ArrowFormat", "from_arrow_table", "to_arrow_table"]

_TYPES = {
    "bool": pa.bool_(),
    "int": pa.int64(),
    "float": pa.float64(),
    "string": pa.string(),
    "json": pa.string(),
    "strings": pa.list_(pa.string()),
}
_JSON_METADATA = {ENCODING_KEY: JSON_ENCODING}


def _field(name: str, kind: str, nullable: bool = True) -> pa.Field:
    metadata = _JSON_METADATA if kind == "json" else None
    return pa.field(name, _TYPES[kind], nullable, metadata=metadata)


@lru_cache(maxsize=256)
def _schema(images: tuple[tuple[Column, ...], ...]) -> pa.Schema:
    fields = []
    for name in LAYOUT:
        if name in IMAGES:
            columns = images[IMAGES.index(name)]
            if columns:
                fields.append(pa.field(name, pa.struct([_field(c.name, c.kind) for c in columns])))
            else:
                fields.append(_field(name, "json"))  # no column anywhere in the batch
        elif name == ABSENT:
            fields.append(_field(ABSENT, "strings"))
        else:
            kind, nullable = FLAT_FIELDS[name]
            fields.append(_field(name, kind, nullable))
    return pa.schema(fields)


def _array(values: list[Any], type_: pa.DataType, table: str, column: str) -> pa.Array:
    try:
        return pa.array(values, type=type_)
    except (pa.ArrowException, OverflowError, TypeError, ValueError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise FormatError(f"table {table!r}, column {column!r}: cannot encode as {type_}: {reason}") from None


def _image_array(body: Body, name: str, field: pa.Field) -> pa.Array:
    image = body.images[name]
    if image.text is not None:
        return _array(image.text, field.type, body.table, name)
    children = list(field.type)
    arrays = [
        _array(values, child.type, body.table, f"{name}.{child.name}")
        for values, child in zip(image.values, children, strict=True)
    ]
    mask = pa.array(image.nulls, pa.bool_()) if any(image.nulls) else None
    return pa.StructArray.from_arrays(arrays, fields=children, mask=mask)


def to_arrow_table(batch: Sequence[Delivery]) -> pa.Table:
    """One table's deliveries as an Arrow table; ValueError if the batch mixes tables."""
    body = build_body(batch)
    schema = _schema(body.signature[1])
    arrays = []
    for field in schema:
        if field.name in IMAGES:
            arrays.append(_image_array(body, field.name, field))
        elif field.name == ABSENT:
            arrays.append(_array(body.absent, field.type, body.table, ABSENT))
        else:
            arrays.append(_array(body.fields[field.name], field.type, body.table, field.name))
    return pa.Table.from_arrays(arrays, schema=schema)


def _is_json(field: pa.Field) -> bool:
    return bool(field.metadata) and field.metadata.get(ENCODING_KEY.encode()) == JSON_ENCODING.encode()


def from_arrow_table(table: pa.Table) -> list[dict[str, Any]]:
    """The envelopes held by a table `to_arrow_table` made."""
    layouts: dict[str, ImageLayout] = {}
    for image in IMAGES:
        field = table.schema.field(image)
        if pa.types.is_struct(field.type):
            layouts[image] = tuple((child.name, child.name, _is_json(child)) for child in field.type)
        else:
            layouts[image] = None
    return restore(table.to_pylist(), layouts)


class ArrowFormat:
    """An Arrow IPC stream: the schema message, one record batch, the end-of-stream marker."""

    name = "arrow"
    content_type = "application/vnd.apache.arrow.stream"
    extension = ".arrows"
    single_table = True

    def encode(self, batch: Sequence[Delivery]) -> bytes:
        table = to_arrow_table(batch)
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
        return sink.getvalue().to_pybytes()

    def decode(self, data: bytes) -> list[dict[str, Any]]:
        return from_arrow_table(pa.ipc.open_stream(data).read_all())
