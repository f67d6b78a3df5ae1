"""A record on its way to a destination: the change, its log sequence and its idempotency key.

Every destination and every wire format sees the same envelope: every field of the change
record (`Change.to_dict()`), plus `seq` (its sequence number in the log) and `idempotency_key`.
The key is stable across retries, restarts and replays, so a receiver can drop what it has
already applied:

- a change with a key and a position: a digest of (source, table, key, lsn);
- anything else (a truncate, DDL, a message, a snapshot row, which has no lsn): a digest of the
  source and the log sequence.

docs/formats.md documents the envelope and the key.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import orjson

from .change import Change

__all__ = ["Delivery", "batch_idempotency_key", "envelope", "idempotency_key"]

_KEY_DIGEST_BYTES = 16  # 128 bits: collisions are out of reach for any realistic volume


@dataclass(frozen=True, slots=True)
class Delivery:
    """One log record, decoded, as a destination receives it."""

    seq: int
    change: Change
    idempotency_key: str
    timestamp_ms: int = 0  # when the record was appended to the log
    size: int = 0  # the payload's size in the log, for batching by bytes


def idempotency_key(change: Change, seq: int) -> str:
    """The stable deduplication key of a change stored at `seq` (see the module docstring)."""
    if change.key is not None and change.lsn is not None:
        # Sorted keys: the same key columns give the same digest whatever their order.
        key = orjson.dumps(change.key, option=orjson.OPT_SORT_KEYS)
        material = b"\x00".join(
            (b"k", change.source.encode(), change.table.encode(), key, change.lsn.encode())
        )
    else:
        material = b"\x00".join((b"s", change.source.encode(), str(seq).encode()))
    return hashlib.blake2b(material, digest_size=_KEY_DIGEST_BYTES).hexdigest()


def batch_idempotency_key(deliveries: Iterable[Delivery]) -> str:
    """One key for a whole batch (the HTTP `Idempotency-Key` header): a digest of its records' keys."""
    digest = hashlib.blake2b(digest_size=_KEY_DIGEST_BYTES)
    for delivery in deliveries:
        digest.update(delivery.idempotency_key.encode())
    return digest.hexdigest()


def envelope(delivery: Delivery) -> dict[str, Any]:
    """The record as every format carries it: the change's fields, `seq` and `idempotency_key`."""
    record = delivery.change.to_dict()
    record["seq"] = delivery.seq
    record["idempotency_key"] = delivery.idempotency_key
    return record
