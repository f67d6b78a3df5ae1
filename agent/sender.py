"""One sender per destination: tail the log from a durable cursor, batch, deliver, retry, dead-letter.

    log ──tail──▶ batch (records, bytes, linger) ──decode──▶ destination.write ──▶ cursor.commit
                                                     │ retryable: back off, same batch again
                                                     └ permanent: split, deliver the rest,
                                                       dead-letter the offending record(s)

Each sender has its own cursor (`dest.<name>`), so a slow or dead destination holds back only
itself; the archiver compresses a segment once every cursor has passed it. Batches go out one
at a time, in log order, so the changes of one key arrive in the order they were captured.

The cursor moves only after the destination confirmed the batch (at-least-once). A destination
that stores its own position in the same transaction as the data (`TransactionalDestination`)
is resumed after that position instead, which makes it exactly-once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field

import wal
from wal.reader import Record

from .change import ChangeFormatError
from .config_destinations import BatchConfig, RetryConfig
from .delivery import Delivery, LogBatch
from .destinations.base import Destination, DestinationError, PermanentError, TransactionalDestination
from .dlq import DeadLetters
from .retry import RetryPolicy, Stopped
from .wire import all_envelopes, json_body

__all__ = [
    "Sender",
    "SenderStats",
    "cursor_name",
    "decode_records",
    "deliver_splitting",
    "key_or_placeholder",
    "last_seq",
    "wanted_by",
]

log = logging.getLogger("agent.sender")

_STOP_CHECK_S = 0.5  # an idle sender looks at the stop flag this often
CURSOR_COMMIT_INTERVAL_S = 0.2


def cursor_name(destination: str) -> str:
    """The log cursor a destination's sender commits."""
    return f"dest.{destination}"


@dataclass
class SenderStats:
    """What a sender has done since it started; read by status and metrics."""

    delivered: int = 0
    batches: int = 0
    retries: int = 0
    dead_lettered: int = 0
    skipped: int = 0  # records of tables this destination does not take
    last_error: str | None = None
    last_error_at: float | None = None
    last_success_at: float | None = None
    state: str = "starting"  # starting, running, retrying, stopped, failed
    position: int = 0


@dataclass
class _Batch:
    records: list[Record] = field(default_factory=list)


def decode_records(
    records: Sequence[Record], on_bad: Callable[[Record, str], None] | None = None
) -> list[Delivery]:
    """Deliveries of log records (decoded lazily); a payload that is not a change goes to `on_bad`."""
    deliveries = []
    from_record = Delivery.from_record
    for record in records:
        try:
            deliveries.append(from_record(record.seq, record.timestamp_ms, record.payload))
        except ChangeFormatError as exc:
            if on_bad is not None:
                on_bad(record, f"not a change record: {exc}")
    return deliveries


def last_seq(deliveries: Sequence[Delivery]) -> int:
    """The last record's sequence, without making Deliveries of a LogBatch."""
    return deliveries.records[-1][0] if isinstance(deliveries, LogBatch) else deliveries[-1].seq


def wanted_by(tables: Collection[str], delivery: Delivery) -> bool:
    """Whether a destination limited to `tables` (empty: all) takes the delivery.

    An undecodable record is taken: the destination refuses it, so it is dead-lettered.
    """
    if not tables:
        return True
    try:
        return delivery.table in tables
    except PermanentError:
        return True


def key_or_placeholder(delivery: Delivery) -> str:
    """The delivery's idempotency key, or `seq-N` when its payload cannot be decoded to make one."""
    try:
        return delivery.idempotency_key
    except PermanentError:
        return f"seq-{delivery.seq}"


def deliver_splitting(
    destination: Destination,
    retry: RetryPolicy,
    deliveries: list[Delivery],
    refused: Callable[[Delivery, BaseException, int], None],
) -> list[list[Delivery]]:
    """Write `deliveries` with retries and return the runs the destination confirmed.

    A permanent refusal of several records is split in halves until it is narrowed down to the
    offending record(s); those, and a batch whose retries ran out (on_retry_exhaustion), go to
    `refused(delivery, error, attempts)`. The sender and `wal replay` both deliver this way.
    """
    try:
        retry.call(lambda: destination.write(deliveries))
    except PermanentError as exc:
        if len(deliveries) == 1:
            refused(deliveries[0], exc, 1)
            return []
        middle = len(deliveries) // 2
        return deliver_splitting(destination, retry, deliveries[:middle], refused) + deliver_splitting(
            destination, retry, deliveries[middle:], refused
        )
    except DestinationError as exc:  # retries exhausted under on_retry_exhaustion
        attempts = (retry.config.max_retries or 0) + 1
        for delivery in deliveries:
            refused(delivery, exc, attempts)
        return []
    return [deliveries]


class Sender:
    """Delivers a log to one destination until stopped; run it in its own thread."""

    def __init__(
        self,
        log_: wal.Log,
        destination: Destination,
        dead_letters: DeadLetters,
        *,
        batch: BatchConfig,
        retry: RetryConfig,
        tables: Sequence[str] = (),
        stop_event: threading.Event | None = None,
    ) -> None:
        self.log = log_
        self.destination = destination
        self.name = destination.name
        self.dead_letters = dead_letters
        self.batch_config = batch
        self.tables = frozenset(tables)
        self.stop_event = stop_event or threading.Event()
        self.stats = SenderStats()
        self.cursor = log_.cursor(cursor_name(self.name))
        self._retry = RetryPolicy(retry, self.stop_event, destination=self.name, on_retry=self._count_retry)
        self._tail: wal.Tail | None = None
        self._written_through = 0  # the last seq handed to destination.write
        self._processed_through = 0  # the last seq read, written or skipped
        self._committed_at = 0.0
        self._wire_format = getattr(destination, "wire_format", None)

    # -- the loop -----------------------------------------------------------------------------

    def run(self) -> None:
        """Deliver until stop(); raises only for errors that are not the destination's."""
        try:
            self._retry.call(self._open)
            start = self.cursor.position + 1
            if isinstance(self.destination, TransactionalDestination):
                start = max(start, self.destination.position() + 1)
            self.stats.position = start - 1
            self._written_through = self._processed_through = start - 1
            self._tail = self.log.tail(start)
            self.stats.state = "running"
            while not self.stop_event.is_set():
                batch = self._collect()
                if batch.records:
                    self._deliver_batch(batch)
                else:
                    poll = getattr(self.destination, "poll", None)
                    if poll is not None:  # a buffering destination (files) flushes on time here
                        self._retry.call(poll)
                    self._commit(force=True)
        except Stopped:
            pass
        finally:
            if self._tail is not None:
                try:
                    self._commit(force=True)  # what was confirmed before the stop
                except Exception as exc:  # the destination went away: the next start redoes it
                    log.warning(
                        "sender.final_commit.failed", extra={"destination": self.name, "error": str(exc)}
                    )
            self.stats.state = "stopped" if self.stats.state != "failed" else "failed"
            if self._tail is not None:
                self._tail.close()
            self.destination.close()

    @property
    def processed_through(self) -> int:
        """The last sequence handed to the destination (or skipped, or dead-lettered)."""
        return self._processed_through

    def stop(self) -> None:
        self.stop_event.set()
        if self._tail is not None:
            self._tail.close()

    def _open(self) -> None:
        self.destination.open()

    def _collect(self) -> _Batch:
        """Wait for records, then gather more until a limit is reached or `linger` passes."""
        assert self._tail is not None
        config = self.batch_config
        batch = _Batch()
        size = 0
        deadline: float | None = None
        while len(batch.records) < config.max_records and size < config.max_bytes:
            if self.stop_event.is_set():
                break
            if deadline is None:
                timeout = _STOP_CHECK_S
            else:
                timeout = deadline - time.monotonic()
                if timeout <= 0:
                    break
            records, payload_bytes = self._tail.next_batch_sized(
                config.max_records - len(batch.records), config.max_bytes - size, timeout_s=timeout
            )
            if not records:
                if deadline is None:
                    return batch  # idle: let the caller check the stop flag
                continue
            batch.records.extend(records)
            size += payload_bytes
            if deadline is None:
                deadline = time.monotonic() + config.linger
        return batch

    def _deliver_batch(self, batch: _Batch) -> None:
        records = batch.records
        if records[0].seq <= self._written_through:  # a transactional resume
            records = [r for r in records if r.seq > self._written_through]
        deliveries = self._stored_batch(records) or decode_records(records, self._dead_letter_record)
        if self.tables:
            taken = [d for d in deliveries if wanted_by(self.tables, d)]
            self.stats.skipped += len(deliveries) - len(taken)
            deliveries = taken
        if deliveries:
            self._deliver(deliveries)
            self._written_through = last_seq(deliveries)
        self._processed_through = batch.records[-1].seq
        # Caught up with the log: commit now; under a backlog, at most every interval.
        assert self._tail is not None
        self._commit(force=self._tail.next_seq > self.log.durable_seq)

    def _stored_batch(self, records: list[Record]) -> LogBatch | None:
        """The batch as a LogBatch, undecoded, when every record is a version 2 change (None:
        decode them). For a destination that sends json or jsonl the body is made here too, from
        the stored records, when each carries its key."""
        if self.tables or not records:
            return None
        fmt = self._wire_format
        if fmt is not None:
            made = json_body(records, *fmt.splice)
            if made is not None:
                return LogBatch(records, fmt.name, *made)
        return LogBatch(records) if all_envelopes(records) else None

    def _deliver(self, deliveries: Sequence[Delivery]) -> None:
        """Deliver with retries; on a permanent refusal, split to find and dead-letter the culprits."""

        def refused(delivery: Delivery, error: BaseException, attempts: int) -> None:
            self._dead_letter(delivery, error, attempts=attempts)

        for run in deliver_splitting(self.destination, self._retry, deliveries, refused):
            self.stats.delivered += len(run)
            self.stats.batches += 1
            self.stats.last_success_at = time.time()
            self.stats.state = "running"
            log.info(
                "Successfully sent records",
                extra={"destination": self.name, "count": len(run), "last_seq": last_seq(run)},
            )

    def _commit(self, force: bool = False) -> None:
        """Move the cursor past what the destination has confirmed (and what it skipped).

        A cursor commit is an atomic file replace with two fsyncs (about 0.5 ms here), so under
        load it happens at most every CURSOR_COMMIT_INTERVAL_S, and whenever the sender goes idle
        or stops. A crash in between re-sends at most that interval's batches (at-least-once).
        """
        now = time.monotonic()
        if not force and now - self._committed_at < CURSOR_COMMIT_INTERVAL_S:
            return
        target = self._processed_through
        if isinstance(self.destination, TransactionalDestination):
            stored = self.destination.position()
            if stored < self._written_through:
                target = stored  # written but not yet stored (a file not yet rotated)
        if target > self.cursor.position:
            self.cursor.commit(target)
        self._committed_at = now
        self.stats.position = self.cursor.position

    # -- failures -----------------------------------------------------------------------------

    def _count_retry(self, _attempt: int, _delay: float, error: BaseException) -> None:
        self.stats.retries += 1
        self.stats.state = "retrying"
        self.stats.last_error = str(error)
        self.stats.last_error_at = time.time()

    def _dead_letter(self, delivery: Delivery, error: BaseException, *, attempts: int) -> None:
        assert delivery.payload is not None  # read from the log
        letter = self.dead_letters.add(
            self.name, delivery.seq, key_or_placeholder(delivery), delivery.payload, str(error), attempts
        )
        self.stats.dead_lettered += 1
        self.stats.last_error = str(error)
        self.stats.last_error_at = time.time()
        log.warning(
            "sender.dead_lettered",
            extra={"destination": self.name, "seq": delivery.seq, "dlq_id": letter, "error": str(error)},
        )

    def _dead_letter_record(self, record: Record, reason: str) -> None:
        letter = self.dead_letters.add(self.name, record.seq, f"seq-{record.seq}", record.payload, reason, 0)
        self.stats.dead_lettered += 1
        log.warning(
            "sender.dead_lettered", extra={"destination": self.name, "seq": record.seq, "dlq_id": letter}
        )
