"""The idempotency key of a change: stable across retries, restarts and replays.

- a change with a key and a position: a digest of (source, table, key, lsn);
- anything else (a truncate, DDL, a message, a snapshot row, which has no lsn): a digest of the
  source and the log sequence.

The first kind is known when the change is captured, so the change record carries it (payload
version 2); the second needs the log sequence, so the sender computes it. docs/formats.md
documents both.
"""

from __future__ import annotations

import hashlib
from typing import Any

import orjson

__all__ = ["row_key", "sequence_key"]

_DIGEST_BYTES = 16  # 128 bits: collisions are out of reach for any realistic volume
_SORTED = orjson.OPT_SORT_KEYS


try:  # BLAKE2b in C (agent/_wire.c): a third of hashlib's cost for these few bytes
    from ._wire import key_digest as _key_digest
except ImportError:
    _key_digest = None


def _digest(*parts: str | bytes) -> str:
    """blake2b-128 hex of the parts (str as UTF-8) joined by NUL bytes."""
    material = b"\x00".join(part.encode() if isinstance(part, str) else part for part in parts)
    return hashlib.blake2b(material, digest_size=_DIGEST_BYTES).hexdigest()


def row_key(source: str, table: str, key: dict[str, Any], lsn: str) -> str:
    """The key of a change that has a key and a position: blake2b-128 of
    `k NUL source NUL table NUL json(key, sorted) NUL lsn`."""
    # Sorted keys: the same key columns give the same digest whatever their order.
    parts = ("k", source, table, orjson.dumps(key, option=_SORTED), lsn)
    return _key_digest(parts) if _key_digest is not None else _digest(*parts)


def sequence_key(source: str, seq: int) -> str:
    """The key of a change without a key or a position: its place in the log."""
    parts = ("s", source, str(seq))
    return _key_digest(parts) if _key_digest is not None else _digest(*parts)
