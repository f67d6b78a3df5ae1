"""Wire formats: how a batch of change records becomes bytes. docs/formats.md documents each.

`get_format(name)` returns the encoder for a configured `format`.
"""

from __future__ import annotations

from .base import Format, FormatError
from .json_formats import JsonFormat, JsonLinesFormat

__all__ = ["Format", "FormatError", "JsonFormat", "JsonLinesFormat", "get_format"]


def get_format(name: str) -> Format:
    """The encoder for `name` (json, jsonl, arrow, parquet, avro)."""
    if name == "json":
        return JsonFormat()
    if name == "jsonl":
        return JsonLinesFormat()
    raise ValueError(f"unknown format {name!r}")
