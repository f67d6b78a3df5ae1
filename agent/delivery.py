"""A record on its way to a destination: the change, its log sequence and its idempotency key.

Every destination and every wire format sees the same envelope: every field of the change
record (`Change.to_dict()`), plus `seq` (its sequence number in the log) and `idempotency_key`.
The key is stable across retries, restarts and replays, so a receiver can drop what it has
already applied (`agent.idempotency` says how it is made; docs/formats.md documents it).

A delivery read from the log keeps its payload and decodes it only when asked: a JSON
destination sends a version 2 payload as it is (`envelope_json`), so on that path no change is
ever decoded. The sender checks a payload's shape up front (`Delivery.from_record`); a payload
that passes the check but still cannot be decoded makes the `change` attribute raise a
PermanentError, so the sender narrows the batch down to it and dead-letters it like any record
a destination refused.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, overload

from .change import (
    ENVELOPE_START,
    Change,
    ChangeFormatError,
    decode_change,
    stored_idempotency_key,
    stored_key_bytes,
)
from .idempotency import row_key, sequence_key

__all__ = [
    "Delivery",
    "LogBatch",
    "batch_idempotency_key",
    "envelope",
    "envelope_json",
    "idempotency_key",
]

_KEY_DIGEST_BYTES = 16
# The start and end every version 2 payload has (agent.change writes the fields in this order).


def idempotency_key(change: Change, seq: int) -> str:
    """The stable deduplication key of a change stored at `seq` (see agent.idempotency)."""
    if change.key is not None and change.lsn is not None:
        return row_key(change.source, change.table, change.key, change.lsn)
    return sequence_key(change.source, seq)


class Delivery:
    """One log record as a destination receives it; decoded on first use of `change`."""

    __slots__ = ("_change", "_key", "payload", "seq", "size", "timestamp_ms")

    def __init__(
        self,
        seq: int,
        change: Change | None = None,
        idempotency_key: str | None = None,
        timestamp_ms: int = 0,
        size: int = 0,
        payload: bytes | None = None,
    ) -> None:
        if change is None and payload is None:
            raise ValueError("a Delivery needs a change or a payload")
        self.seq = seq
        self._change = change
        self._key = idempotency_key
        self.timestamp_ms = timestamp_ms  # when the record was appended to the log
        self.size = size  # the payload's size in the log, for batching by bytes
        self.payload = payload  # the log payload, when the delivery was read from the log

    @classmethod
    def from_record(cls, seq: int, timestamp_ms: int, payload: bytes) -> Delivery:
        """A delivery of a log record; ChangeFormatError when the payload is not a change.

        A version 2 payload is only checked at its ends here, its first field and its closing
        brace (decoding it is what this path saves); any other payload is decoded at once.
        """
        if payload.startswith(ENVELOPE_START) and payload.endswith(b"}"):
            return cls(seq, None, None, timestamp_ms, len(payload), payload)
        return cls(seq, decode_change(payload), None, timestamp_ms, len(payload), payload)

    @property
    def change(self) -> Change:
        change = self._change
        if change is None:
            assert self.payload is not None
            try:
                change = self._change = decode_change(self.payload)
            except ChangeFormatError as exc:
                from .destinations.base import PermanentError  # base imports this module

                raise PermanentError(f"record {self.seq} is not a valid change record: {exc}") from None
        return change

    @property
    def table(self) -> str:
        """The change's table; read from a version 2 payload's start without decoding it."""
        change = self._change
        if change is None and self.payload is not None:
            end = self.payload.find(b'","op":', 12)
            if end > 0:
                name = self.payload[12:end]
                if b"\\" not in name:  # no JSON escapes: the bytes are the name
                    return name.decode("utf-8", "surrogateescape")
        return self.change.table

    @property
    def idempotency_key(self) -> str:
        key = self._key
        if key is None:
            key = stored_idempotency_key(self.payload) if self.payload is not None else None
            if key is None:
                key = idempotency_key(self.change, self.seq)
            self._key = key
        return key

    def stored_key_bytes(self) -> bytes | None:
        """The idempotency key as the payload stores it (ASCII bytes), when it does: no decoding."""
        return stored_key_bytes(self.payload) if self.payload is not None else None

    def __repr__(self) -> str:  # what is known without decoding: repr must not raise
        return f"Delivery(seq={self.seq}, idempotency_key={self._key!r})"


class LogBatch(Sequence[Delivery]):
    """Consecutive log records, every one a version 2 change, handed over without decoding them.

    When the sender made the wire body already (`agent.wire.json_body`), a json or jsonl format
    sends `body` as it is and the batch key digests `keys`; a destination with a path of its own
    for stored records (the postgres destination's COPY) reads `records`. Anything that looks at
    the records one by one gets Deliveries, made on first use. A slice is a plain list of
    Deliveries, so a split batch is encoded again from its records.
    """

    __slots__ = ("_deliveries", "body", "format", "keys", "records")

    def __init__(
        self,
        records: list[Any],
        format: str | None = None,
        body: bytes | None = None,
        keys: bytes | None = None,
    ) -> None:
        self.records = records  # wal Records: (seq, timestamp_ms, payload, ...)
        self.format = format  # the format `body` is in: "json" or "jsonl"; None: no body made
        self.body = body
        self.keys = keys  # with a body: the records' idempotency keys, 32 ASCII bytes each, in order
        self._deliveries: list[Delivery] | None = None

    def deliveries(self) -> list[Delivery]:
        if self._deliveries is None:
            from_record = Delivery.from_record
            self._deliveries = [from_record(r[0], r[1], r[2]) for r in self.records]
        return self._deliveries

    def __len__(self) -> int:
        return len(self.records)

    @overload
    def __getitem__(self, index: int) -> Delivery: ...
    @overload
    def __getitem__(self, index: slice) -> list[Delivery]: ...
    def __getitem__(self, index: int | slice) -> Delivery | list[Delivery]:
        return self.deliveries()[index]

    def __iter__(self) -> Iterator[Delivery]:
        return iter(self.deliveries())


def batch_idempotency_key(deliveries: Iterable[Delivery]) -> str:
    """One key for a whole batch (the HTTP `Idempotency-Key` header): a digest of its records' keys."""
    if isinstance(deliveries, LogBatch) and deliveries.keys is not None:
        return hashlib.blake2b(deliveries.keys, digest_size=_KEY_DIGEST_BYTES).hexdigest()
    digest = hashlib.blake2b(digest_size=_KEY_DIGEST_BYTES)
    update = digest.update
    for delivery in deliveries:
        stored = delivery.stored_key_bytes()
        update(stored if stored is not None else delivery.idempotency_key.encode())
    return digest.hexdigest()


def envelope(delivery: Delivery) -> dict[str, Any]:
    """The record as every format carries it: the change's fields, `seq` and `idempotency_key`."""
    record = delivery.change.to_dict()
    record["seq"] = delivery.seq
    record["idempotency_key"] = delivery.idempotency_key
    return record


def envelope_json(delivery: Delivery, dumps: Any) -> bytes:
    """The envelope as JSON bytes; a version 2 payload that carries its key is used as it is.

    `dumps` encodes the envelope dict otherwise (the caller's orjson wrapper, so errors are its).
    Field order differs between the two (`seq` comes last here); JSON objects have none.
    """
    if delivery.stored_key_bytes() is not None:
        return b'%b,"seq":%d}' % (delivery.payload[2:-1], delivery.seq)  # type: ignore[index]
    return dumps(envelope(delivery))
