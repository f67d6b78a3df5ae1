"""Re-sending what is still on disk to destinations, without moving their live cursors.

After a disaster recovery, or when a destination lost data, `wal replay --all` streams every
record still in the log (archives first, then live segments, in sequence order) through the
same decode, batch, retry and dead-letter path the senders use; `wal replay PATH...` does the
same for chosen segment or archive files. Records carry their usual idempotency keys, so a
receiver that already has some of them drops the repeats.

Replay reads the log directory without opening it for writing, so it works beside a running
agent; destinations that store their own position (postgres, duckdb, file) skip what they
already hold.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import wal
from wal.scan import RawRecord
from wal.segment import iter_segment

from .config_destinations import RetryConfig
from .delivery import Delivery
from .destinations.base import Destination
from .dlq import DeadLetters
from .retry import RetryPolicy
from .sender import decode_records, deliver_splitting, key_or_placeholder, wanted_by

__all__ = ["ReplaySummary", "ReplayTarget", "records_from_files", "replay"]


@dataclass
class ReplaySummary:
    """What a replay did, per destination and in total."""

    read: int = 0
    first_seq: int | None = None
    last_seq: int | None = None
    sent: dict[str, int] = field(default_factory=dict)
    dead_lettered: dict[str, int] = field(default_factory=dict)
    skipped: int = 0  # before --since, or not change records
    seconds: float = 0.0


@dataclass
class ReplayTarget:
    """A destination to replay into, with its retry settings and table filter."""

    destination: Destination
    retry: RetryConfig
    tables: frozenset[str] = frozenset()


def records_from_files(paths: Sequence[str]) -> Iterator[wal.Record]:
    """The intact records of chosen segment or archive files, in the order given."""
    for path in paths:
        for item in iter_segment(path):
            if isinstance(item, RawRecord):
                yield wal.Record(
                    item.seq, item.timestamp_ms, item.payload, path, item.offset, path.endswith(".zst")
                )


def replay(
    records: Iterable[wal.Record],
    targets: Sequence[ReplayTarget],
    dead_letters: DeadLetters | None,
    *,
    since_ms: int | None = None,
    batch_records: int = 500,
    dry_run: bool = False,
    stop_event: threading.Event | None = None,
    progress: Callable[[int], None] | None = None,
) -> ReplaySummary:
    """Send `records` to every target in batches, in order; returns the summary."""
    stop_event = stop_event or threading.Event()
    summary = ReplaySummary(sent={t.destination.name: 0 for t in targets})
    summary.dead_lettered = {t.destination.name: 0 for t in targets}
    started = time.monotonic()
    policies = [RetryPolicy(t.retry, stop_event, destination=t.destination.name) for t in targets]
    if not dry_run:
        for target, policy in zip(targets, policies, strict=True):
            policy.call(target.destination.open)
    try:
        batch: list[wal.Record] = []
        for record in records:
            summary.read += 1
            if since_ms is not None and record.timestamp_ms < since_ms:
                summary.skipped += 1
                continue
            batch.append(record)
            if len(batch) >= batch_records:
                _send(batch, targets, policies, dead_letters, summary, dry_run)
                if progress is not None:
                    progress(len(batch))
                batch = []
        if batch:
            _send(batch, targets, policies, dead_letters, summary, dry_run)
            if progress is not None:
                progress(len(batch))
    finally:
        if not dry_run:
            for target in targets:
                target.destination.close()
    summary.seconds = time.monotonic() - started
    return summary


def _send(
    batch: list[wal.Record],
    targets: Sequence[ReplayTarget],
    policies: Sequence[RetryPolicy],
    dead_letters: DeadLetters | None,
    summary: ReplaySummary,
    dry_run: bool,
) -> None:
    if summary.first_seq is None:
        summary.first_seq = batch[0].seq
    summary.last_seq = batch[-1].seq
    deliveries = decode_records(batch)
    summary.skipped += len(batch) - len(deliveries)
    for target, policy in zip(targets, policies, strict=True):
        chosen = [d for d in deliveries if wanted_by(target.tables, d)]
        if not chosen:
            continue
        name = target.destination.name
        if dry_run:
            summary.sent[name] += len(chosen)
            continue
        _deliver(target.destination, policy, chosen, dead_letters, summary)


def _deliver(
    destination: Destination,
    policy: RetryPolicy,
    deliveries: list[Delivery],
    dead_letters: DeadLetters | None,
    summary: ReplaySummary,
) -> None:
    name = destination.name

    def refused(delivery: Delivery, error: BaseException, attempts: int) -> None:
        if dead_letters is not None:
            assert delivery.payload is not None  # read from the log
            dead_letters.add(
                name, delivery.seq, key_or_placeholder(delivery), delivery.payload, str(error), attempts
            )
        summary.dead_lettered[name] += 1

    runs = deliver_splitting(destination, policy, deliveries, refused)
    summary.sent[name] += sum(len(run) for run in runs)
