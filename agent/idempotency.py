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


# A hasher primed with (source, table) per table: copying it is cheaper than hashing the prefix
# again, and a capture source computes this for every row it writes.
_primed: dict[tuple[str, str], Any] = {}
_PRIMED_MAX = 4096


def row_key(source: str, table: str, key: dict[str, Any], lsn: str) -> str:
    """The key of a change that has a key and a position: blake2b-128 of
    `k NUL source NUL table NUL json(key, sorted) NUL lsn`."""
    primed = _primed.get((source, table))
    if primed is None:
        if len(_primed) >= _PRIMED_MAX:
            _primed.clear()
        primed = _primed[(source, table)] = hashlib.blake2b(
            b"k\x00%b\x00%b\x00" % (source.encode(), table.encode()), digest_size=_DIGEST_BYTES
        )
    digest = primed.copy()
    # Sorted keys: the same key columns give the same digest whatever their order.
    digest.update(orjson.dumps(key, option=_SORTED))
    digest.update(b"\x00" + lsn.encode())
    return digest.hexdigest()


def sequence_key(source: str, seq: int) -> str:
    """The key of a change without a key or a position: its place in the log."""
    material = b"\x00".join((b"s", source.encode(), str(seq).encode()))
    return hashlib.blake2b(material, digest_size=_DIGEST_BYTES).hexdigest()
