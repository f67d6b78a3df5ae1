"""`json` (one array of envelopes) and `jsonl` (one envelope per line).

A record read from the log as a version 2 change goes out as its payload plus `seq`
(`envelope_json`); anything else is encoded with orjson.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

from ..delivery import Delivery, LogBatch, envelope_json
from .base import FormatError

__all__ = ["JsonFormat", "JsonLinesFormat"]


def _dumps(value: Any) -> bytes:
    try:
        return orjson.dumps(value)
    except TypeError as exc:  # e.g. an integer beyond 64 bits
        raise FormatError(f"cannot encode as JSON: {exc}") from exc


class JsonFormat:
    """A JSON array of envelopes: `[{...}, {...}]`."""

    name = "json"
    content_type = "application/json"
    extension = ".json"
    single_table = False

    splice = (b"[", b",", b"]")  # how agent.wire joins stored records into this format's body

    def encode(self, batch: Sequence[Delivery]) -> bytes:
        if isinstance(batch, LogBatch) and batch.format == self.name:
            return batch.body
        return b"[" + b",".join([envelope_json(delivery, _dumps) for delivery in batch]) + b"]"

    def encode_one(self, delivery: Delivery) -> bytes:
        """One envelope as a JSON object (payload_mode = "record_json")."""
        return envelope_json(delivery, _dumps)

    def decode(self, data: bytes) -> list[dict[str, Any]]:
        value = orjson.loads(data)
        return value if isinstance(value, list) else [value]


class JsonLinesFormat:
    """Newline-delimited JSON: one envelope per line, each line ending in `\\n`."""

    name = "jsonl"
    content_type = "application/x-ndjson"
    extension = ".jsonl"
    single_table = False

    splice = (b"", b"\n", b"\n")

    def encode(self, batch: Sequence[Delivery]) -> bytes:
        if isinstance(batch, LogBatch) and batch.format == self.name:
            return batch.body
        if not batch:
            return b""
        return b"\n".join([envelope_json(delivery, _dumps) for delivery in batch]) + b"\n"

    def decode(self, data: bytes) -> list[dict[str, Any]]:
        return [orjson.loads(line) for line in data.splitlines() if line.strip()]
