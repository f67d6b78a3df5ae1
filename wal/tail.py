"""Following an open log as it grows: `Tail` blocks (without polling) until records are durable.

A tail reads through the log's own `SegmentWalker`, limited to what the writer has published, and
sleeps on the log's durable condition, which the writer notifies after every publish.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from .errors import LogClosed
from .reader import Record

if TYPE_CHECKING:
    from .log import Log

_RETRY_READ_S = 0.01


class Tail:
    """Follows a log from a sequence number; `next_batch` blocks until records are durable."""

    def __init__(self, log: Log, from_seq: int) -> None:
        self._log = log
        self._walker = log._walker(from_seq)
        self._closed = False

    @property
    def next_seq(self) -> int:
        """The sequence number the next record returned will have (or be after)."""
        return self._walker.next_seq

    def next_batch(
        self, max_records: int = 1000, max_bytes: int = 1 << 62, timeout_s: float | None = None
    ) -> list[Record]:
        """Up to `max_records` records; waits up to `timeout_s` (None: forever) when none are ready.

        No record is added once about `max_bytes` are returned, counting each record whole (its
        payload and 32 bytes of framing).
        """
        return self.next_batch_sized(max_records, max_bytes, timeout_s)[0]

    def next_batch_sized(
        self, max_records: int = 1000, max_bytes: int = 1 << 62, timeout_s: float | None = None
    ) -> tuple[list[Record], int]:
        """`next_batch`, and the payload bytes of its records (their `len(payload)` summed)."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        log_ = self._log
        while not self._closed:
            batch, payload_bytes = self._walker.read_available_sized(max_records, max_bytes)
            if batch:
                return batch, payload_bytes
            if log_._state is not None and log_._durable_seq < self._walker.next_seq:
                if isinstance(log_._state, LogClosed):
                    return [], 0
                raise log_._state
            wanted = self._walker.next_seq
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return [], 0
            if wanted <= log_._durable_seq:
                # Durable but not readable yet (a segment being archived or rotated under us):
                # look again shortly rather than spin on a condition that is already true.
                time.sleep(_RETRY_READ_S if remaining is None else min(_RETRY_READ_S, remaining))
                continue
            with log_._durable_cond:
                log_._durable_cond.wait_for(
                    lambda wanted=wanted: (
                        log_._durable_seq >= wanted or log_._state is not None or self._closed
                    ),
                    remaining,
                )
        return [], 0

    def __iter__(self) -> Iterator[Record]:
        """Every record from here on, until the log or this tail is closed."""
        while batch := self.next_batch():
            yield from batch

    def close(self) -> None:
        self._closed = True
        self._walker.close()
        with self._log._durable_cond:
            self._log._durable_cond.notify_all()
