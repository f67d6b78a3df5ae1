"""What may be reported to PostgreSQL as flushed, and where a restarted source resumes.

The durability contract: a commit's end LSN is reported as flushed only once every change of that
transaction (and of every earlier one) is durable in the log. The source appends without waiting,
so commits queue here with the log sequence of their last record, and leave the queue as the log's
durable watermark passes them.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import wal
from agent.change import ChangeFormatError, decode_change, is_change_payload

from .lsn import parse_lsn


class FlushTracker:
    """Commits waiting for durability, and the highest LSN that is safe to confirm."""

    def __init__(self, flushed_lsn: int) -> None:
        self.flushed_lsn = flushed_lsn
        self._waiting: deque[tuple[int, int]] = deque()  # (log seq that must be durable, end LSN)

    def committed(self, seq: int, end_lsn: int) -> None:
        """A transaction (or a message outside one) ended at `end_lsn`; its last record is `seq`."""
        self._waiting.append((seq, end_lsn))

    def advance(self, durable_seq: int) -> int:
        """Move past every commit whose records are durable; return the flushed LSN."""
        waiting = self._waiting
        while waiting and waiting[0][0] <= durable_seq:
            _seq, end_lsn = waiting.popleft()
            if end_lsn > self.flushed_lsn:
                self.flushed_lsn = end_lsn
        return self.flushed_lsn

    def idle_advance(self, server_lsn: int) -> int:
        """With no transaction open and nothing waiting, everything the server has sent is
        handled: confirm up to its position so an idle slot does not hold WAL back."""
        if not self._waiting and server_lsn > self.flushed_lsn:
            self.flushed_lsn = server_lsn
        return self.flushed_lsn

    @property
    def waiting(self) -> int:
        return len(self._waiting)


@dataclass(frozen=True)
class ResumePoint:
    """The last change of this source in the log: its transaction's commit LSN and its index."""

    commit_lsn: int
    txn_index: int
    seq: int


def find_resume_point(log: wal.Log, source: str, from_seq: int) -> ResumePoint | None:
    """Scan the log from `from_seq` (a saved position at or before this source's last record) to
    its end for the last change this source wrote. Costs time in proportion to what was written
    since the position was saved, not to the size of the log."""
    last: ResumePoint | None = None
    for record in log.read(from_seq=max(1, from_seq)):
        payload = record.payload
        if not is_change_payload(payload):
            continue
        try:
            change = decode_change(payload)
        except ChangeFormatError:
            continue
        if change.source != source or change.op == "snapshot":
            continue  # snapshot rows carry the slot's start position, not a transaction's
        position = change.commit_lsn or change.lsn
        if position is None:
            continue
        last = ResumePoint(parse_lsn(position), change.txn_index, record.seq)
    return last


class Deduplicator:
    """Skips what a restarted stream sends again: whole transactions already in the log, and the
    first changes of a transaction the log holds only in part."""

    def __init__(self, resume: ResumePoint | None) -> None:
        self._resume = resume
        self._skip_through = -1  # skip changes with txn_index <= this in the current transaction

    def begin(self, commit_lsn: int) -> bool:
        """At a transaction's start: False when the whole transaction is already in the log."""
        resume = self._resume
        self._skip_through = -1
        if resume is None:
            return True
        if commit_lsn < resume.commit_lsn:
            return False
        if commit_lsn == resume.commit_lsn:
            self._skip_through = resume.txn_index
            return True
        self._resume = None  # the stream is past everything the log holds
        return True

    def wanted(self, txn_index: int) -> bool:
        return txn_index > self._skip_through

    def outside_transaction(self, lsn: int) -> bool:
        """For a message outside any transaction: False when the log already holds it."""
        resume = self._resume
        if resume is None:
            return True
        if lsn <= resume.commit_lsn:
            return False
        self._resume = None
        return True
