"""The writing half of an open log: the writer thread, the appender acting as leader, rotation.

The writer thread takes everything queued (see `Log.append`), writes it with one writev, fsyncs
once and releases the batch; under fsync="always" an appender that finds the writer idle does the
same itself. Either way only one thread at a time holds the writing role. A failed write or fsync
fails the log for good.

`LogWriter` is mixed into `Log` rather than held by it, so the append path reaches the queue and
the writer's flags with no extra attribute hop or call.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from _thread import LockType
from collections.abc import Callable
from dataclasses import replace

from . import failpoints
from .batch import Batch
from .durable import create_segment
from .errors import WalError, WalIOError, io_error
from .format import HEADER_SIZE, LENGTH
from .fs import AppendFile, FileSystem
from .layout import WAL_DIR, segment_name
from .options import LogOptions
from .pending import PendingRecords
from .reader import Visible

log = logging.getLogger("wal")


class LogWriter:
    """Writes, fsyncs and publishes queued records; one thread at a time holds the writing role."""

    # The log state this part uses; Log._open sets it up.
    root: str
    options: LogOptions
    _fs: FileSystem
    _on_durable: Callable[[int], None] | None
    _on_sync: Callable[[float], None] | None
    _lock: LockType
    _wake: threading.Condition
    _space: threading.Condition
    _durable_cond: threading.Condition
    _archive_wake: threading.Event
    _active: AppendFile
    _active_first: int
    _active_records: int
    _active_born: float
    _durable_seq: int
    _visible: Visible
    _unarchived_bytes: int
    _pending: PendingRecords
    _batch: Batch
    _synced_writes: bool
    _writer_idle: bool
    _writing: bool
    _broken: bool
    _state: WalError | None
    _closing: bool
    _io_step: str
    _io_path: str
    _appends: int
    _bytes_written: int
    _syncs: int
    _sync_seconds: float

    def _take_pending_locked(self) -> tuple[bytearray, int, int]:
        """Take the writing role and everything queued, for an appender that writes it itself."""
        self._writing = True
        taken = self._pending.take()
        self._batch = Batch()
        self._unarchived_bytes += taken[1]
        return taken

    def _route_locked(
        self, batch: Batch, waiter: LockType | None
    ) -> tuple[tuple[bytearray, int, int] | None, int]:
        """After queueing records: lead the write (returns what to write), or arm `waiter`.

        An appender that will wait, finding the writer idle, writes the batch itself. Otherwise
        it joins the batch (returns its place in line) and wakes the writer if that is asleep.
        """
        if waiter is not None and self._leader_allowed and self._writer_idle and not self._writing:
            return self._take_pending_locked(), -1
        index = -1
        if waiter is not None:
            waiter.acquire()  # armed: the release that wakes us comes from the writer or a peer
            index = len(batch.waiters)
            batch.waiters.append(waiter)
        if self._writer_idle and not self._writing:
            self._writer_idle = False
            self._wake.notify()
        return None, index

    def _write_taken(self, taken: tuple[bytearray, int, int], last_seq: int, synced: bool) -> None:
        """Write a taken buffer's records (durably when `synced`), then hand the buffer back."""
        buffer, used, count = taken
        started = time.perf_counter()
        with memoryview(buffer) as view:
            self._write(view[:used], last_seq - count + 1, count, synced)
        if synced:
            self._count_sync(time.perf_counter() - started)
        self._appends += count
        self._bytes_written += used
        self._pending.give_back(buffer)

    def _flush_as_leader(self, taken: tuple[bytearray, int, int], batch: Batch) -> None:
        """Write and fsync a batch in the appending thread itself.

        When the writer thread is idle, handing it one record and waiting to be woken costs two
        thread switches, about a third of an fsync here; the appender doing the work costs none.
        """
        # The idle writer sleeps without a deadline while the segment is empty; the first record
        # starts the age clock it must wake up for.
        starts_age_clock = self.options.segment_max_age_s is not None and not self._active_records
        try:
            self._write_taken(taken, batch.last_seq, self._synced_writes)
            failpoints.hit("log.after_write")
            if not self._synced_writes:
                self._sync()
            self._publish(batch.last_seq, [batch])
        except OSError as exc:
            self._fail(io_error(self._io_step, self._io_path, exc), [batch])
        finally:
            with self._lock:
                self._writing = False
                if self._writer_idle and (
                    self._pending.count or self._closing or self._broken or starts_age_clock
                ):
                    self._writer_idle = False
                    self._wake.notify()
        if batch.error is not None:
            raise batch.error

    def _run_writer(self) -> None:
        policy = self.options.fsync
        interval_s = self.options.fsync_interval_ms / 1000
        unsynced: list[Batch] = []  # "interval": batches written but not yet fsynced
        unsynced_since = 0.0
        while True:
            with self._lock:
                while True:
                    if self._broken:
                        return  # a leader's write failed; it already failed every waiter
                    if not self._writing:
                        if self._pending.count or self._closing:
                            break
                        timeout = self._idle_timeout(unsynced_since if unsynced else None, interval_s)
                        if timeout is not None and timeout <= 0:
                            break
                    else:
                        timeout = None  # a leader holds the writing role and wakes us when done
                    self._writer_idle = True
                    self._wake.wait(timeout)
                    self._writer_idle = False
                self._writing = True
                batch = self._batch
                taken = None
                if self._pending.count:
                    taken = self._pending.take()
                    self._batch = Batch()
                    self._unarchived_bytes += taken[1]
                closing = self._closing
            try:
                if taken is not None:
                    self._write_taken(taken, batch.last_seq, self._synced_writes)
                    failpoints.hit("log.after_write")
                    if policy == "always":
                        if not self._synced_writes:
                            self._sync()
                        self._publish(batch.last_seq, [batch])
                    elif policy == "never":
                        self._publish(batch.last_seq, [batch])
                    else:
                        batch.release()  # written to the OS: "interval" callers return now
                        if not unsynced:
                            unsynced_since = time.monotonic()
                        unsynced.append(batch)
                if unsynced and (closing or time.monotonic() - unsynced_since >= interval_s):
                    self._sync()
                    self._publish(unsynced[-1].last_seq, [])
                    unsynced = []
                if taken is None:
                    self._rotate_if_old()
            except OSError as exc:
                self._fail(io_error(self._io_step, self._io_path, exc), [batch, *unsynced])
                return
            with self._lock:
                self._writing = False
            if closing and taken is None:
                try:
                    if policy != "never":
                        self._active.sync()
                finally:
                    self._active.close()
                return

    def _idle_timeout(self, unsynced_since: float | None, interval_s: float) -> float | None:
        """How long the idle writer may sleep: until an interval fsync or an age rotation is due."""
        deadlines = []
        now = time.monotonic()
        if unsynced_since is not None:
            deadlines.append(unsynced_since + interval_s - now)
        max_age = self.options.segment_max_age_s
        if max_age is not None and self._active_records:
            deadlines.append(self._active_born + max_age - now)
        return min(deadlines) if deadlines else None

    def _write(self, data: memoryview, first_seq: int, count: int, synced: bool) -> None:
        """Write queued records to the active segment, rotating where it would grow too large."""
        limit = self.options.segment_bytes
        self._io_step, self._io_path = "write", self._active.path
        if self._active.size + len(data) <= limit or (count == 1 and not self._active_records):
            if synced:
                self._active.write_synced(data)
            else:
                self._active.write(data)
            self._active_records += count
            return
        # Split on record boundaries, read from each record's own length field.
        view = memoryview(data)
        start = end = 0
        seq = first_seq
        while end < len(data):
            length = LENGTH.unpack_from(data, end)[0]
            if self._active.size + (end - start) + length > limit and (end > start or self._active_records):
                if end > start:
                    self._active.write(view[start:end])  # _rotate syncs it
                start = end
                self._rotate(seq)
                continue
            end += length
            seq += 1
            self._active_records += 1
        self._io_step, self._io_path = "write", self._active.path
        if end > start:
            if synced:
                self._active.write_synced(view[start:end])
            else:
                self._active.write(view[start:end])
        view.release()

    def _sync(self) -> None:
        self._io_step, self._io_path = "fsync", self._active.path
        started = time.perf_counter()
        self._active.sync()
        self._count_sync(time.perf_counter() - started)

    def _count_sync(self, seconds: float) -> None:
        self._sync_seconds += seconds
        self._syncs += 1
        if self._on_sync is not None:
            self._on_sync(seconds)

    def _publish(self, durable_seq: int, batches: list[Batch]) -> None:
        """Make records up to `durable_seq` visible to readers and release their appenders."""
        failpoints.hit("log.after_sync")
        self._visible = Visible(max(durable_seq, self._durable_seq), self._active_first, self._active.size)
        self._durable_seq = max(durable_seq, self._durable_seq)
        for batch in batches:
            batch.release()
        with self._durable_cond:
            self._durable_cond.notify_all()
        if self._on_durable is not None:
            self._on_durable(durable_seq)

    def _rotate(self, next_first_seq: int) -> None:
        """Seal the active segment and start the next one, named by its first sequence."""
        old = self._active
        if self.options.fsync != "never":
            self._sync()
        # The old segment is complete and on disk: say so before anything else can fail, so a
        # failure creating the next segment never cuts records that are already durable.
        self._durable_seq = next_first_seq - 1
        self._visible = Visible(next_first_seq - 1, self._active_first, old.size)
        path = os.path.join(self.root, WAL_DIR, segment_name(next_first_seq))
        self._io_step, self._io_path = "create", path
        handle = create_segment(self._fs, path)
        sealed_bytes = old.size
        old.close()
        with self._lock:
            self._unarchived_bytes += HEADER_SIZE
        self._active, self._active_first = handle, next_first_seq
        self._active_records = 0
        self._active_born = time.monotonic()
        # Readers learn of the new segment now; what is durable did not change.
        self._visible = replace(self._visible, active_first_seq=next_first_seq, active_end=HEADER_SIZE)
        log.info("wal.segment.sealed", extra={"segment": old.path, "bytes": sealed_bytes, "next": path})
        self._archive_wake.set()

    def _rotate_if_old(self) -> None:
        max_age = self.options.segment_max_age_s
        if max_age is not None and self._active_records and time.monotonic() - self._active_born >= max_age:
            self._rotate(self._active_first + self._active_records)

    def _fail(self, error: WalIOError, batches: list[Batch]) -> None:
        """Stop accepting appends after a write or fsync error; never retry and trust the page cache."""
        log.error("wal.io.failed", extra={"error": str(error), "durable_seq": self._durable_seq})
        with self._lock:
            self._state = error
            self._broken = True
            pending = self._batch
            self._pending.drop()
            self._space.notify_all()
        for batch in [*batches, pending]:
            batch.release(error)
        with self._durable_cond:
            self._durable_cond.notify_all()
        try:
            # After a failed write (disk full) cut back to the durable end so the file stays clean;
            # reopening would do the same from the disk.
            if (
                self._visible.active_first_seq == self._active_first
                and self._active.size > self._visible.active_end
            ):
                self._active.truncate(self._visible.active_end)
        except OSError:
            pass
        self._active.close()
