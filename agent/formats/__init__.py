"""Wire formats: how a batch of change records becomes bytes. docs/formats.md documents each.

`get_format(name)` returns the encoder for a configured `format`. The columnar formats import
pyarrow or fastavro, which take a while to load (and pyarrow can abort at interpreter exit,
apache/arrow#34314), so they are imported only when a configuration names them.
"""

from __future__ import annotations

import importlib
from typing import Any

from .base import Format, FormatError
from .json_formats import JsonFormat, JsonLinesFormat

__all__ = [
    "ArrowFormat",
    "AvroFormat",
    "Format",
    "FormatError",
    "JsonFormat",
    "JsonLinesFormat",
    "ParquetFormat",
    "get_format",
]

# name -> (module, class)
_FORMATS = {
    "json": (".json_formats", "JsonFormat"),
    "jsonl": (".json_formats", "JsonLinesFormat"),
    "arrow": (".arrow_format", "ArrowFormat"),
    "parquet": (".parquet_format", "ParquetFormat"),
    "avro": (".avro_format", "AvroFormat"),
}
_LAZY = {cls: module for module, cls in _FORMATS.values()}


def get_format(name: str) -> Format:
    """The encoder for `name` (json, jsonl, arrow, parquet, avro)."""
    try:
        module, cls = _FORMATS[name]
    except KeyError:
        raise ValueError(f"unknown format {name!r}; expected one of {', '.join(_FORMATS)}") from None
    return getattr(importlib.import_module(module, __name__), cls)()


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
