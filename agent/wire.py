"""Version 2 change records as one JSON body, without decoding them (the sender's hot path).

`json_body(records, open, sep, close)` returns the body a json (`[`, `,`, `]`) or jsonl (``,
`\\n`, `\\n`) destination sends for a batch of log records, and the records' stored idempotency
keys concatenated, or None when any record is not a version 2 change carrying its key (the
caller then decodes and checks each record). `all_envelopes(records)` tells whether every record
is shaped like a version 2 change, the check `Delivery.from_record` makes, for a whole batch. The C extension `agent._wire` does it in about
0.1 µs per record; this module's Python version gives the same bytes, about ten times slower, on
a machine where the extension was not built.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .change import ENVELOPE_START, stored_key_bytes

__all__ = ["all_envelopes", "json_body", "native"]


def _python_json_body(
    records: Sequence[Any], open: bytes, sep: bytes, close: bytes
) -> tuple[bytes, bytes] | None:
    parts = []
    keys = []
    for record in records:
        seq, payload = record[0], record[2]
        key = stored_key_bytes(payload)
        if key is None:
            return None
        parts.append(b'%b,"seq":%d}' % (payload[2:-1], seq))
        keys.append(key)
    return open + sep.join(parts) + close, b"".join(keys)


def _python_all_envelopes(records: list[Any]) -> bool:
    for record in records:
        payload = record[2]
        if (
            len(payload) <= len(ENVELOPE_START)
            or not payload.startswith(ENVELOPE_START)
            or payload[-1:] != b"}"
        ):
            return False
    return True


try:
    from ._wire import all_envelopes as _native_all_envelopes
    from ._wire import json_body as _native_json_body
except ImportError:  # no compiler when the package was installed: the same answers, slower
    _native_json_body = _native_all_envelopes = None

native = _native_json_body is not None
json_body = _native_json_body if _native_json_body is not None else _python_json_body
all_envelopes = _native_all_envelopes if _native_all_envelopes is not None else _python_all_envelopes
