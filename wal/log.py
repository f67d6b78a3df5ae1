"""The log: a directory of segments with one writer thread that group-commits appends.

Appending threads only assign a sequence number, frame the record and queue it, then wait on the
batch they joined. The writer thread takes everything queued, writes it with one writev, fsyncs
once, and wakes each batch's waiters once. While it syncs, appenders fill the next batch, so the
fsync cost is shared and, for a pipelining producer (`wait=False`), hidden.

This module is the facade: opening, appending, reading, cursors, stats and closing. `Log` takes
its writer (writer.py: the writer thread, rotation, failure) and its archiver (archiver.py: the
unarchived-bytes budget, background archiving, retention) as mixins, so the append path and the
writer share their state with no extra hop. Batches and their waiters are in batch.py, `Tail` in
tail.py, and the damage the log meets is kept by damage.py.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from .archiver import LogArchiver
from .batch import Batch, wait_for_release, waiter_lock
from .cursor import Cursor, CursorStore
from .damage import DamageRecorder, DamageReport
from .errors import InsufficientSpace, LogClosed, RecordTooLarge, WalError
from .format import RECORD_OVERHEAD, slow_crc_warning
from .fs import OS_FS, FileSystem
from .layout import CURSOR_DIR, LOCK_FILE, list_segments
from .options import LogOptions
from .pending import PendingRecords
from .reader import Record, SegmentWalker, Visible
from .recovery import recover
from .scan import Damage
from .tail import Tail
from .writer import LogWriter

log = logging.getLogger("wal")


@dataclass(frozen=True)
class LogStats:
    """Counters since the log was opened, and its current extent."""

    first_seq: int
    last_seq: int
    durable_seq: int
    appends: int
    bytes_written: int
    syncs: int
    sync_seconds: float
    unarchived_bytes: int
    damage_count: int


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class Log(LogWriter, LogArchiver):
    """An open log. Create it with `wal.open(path, **options)`."""

    def __init__(
        self,
        path: str,
        options: LogOptions | None = None,
        *,
        fs: FileSystem | None = None,
        on_durable: Callable[[int], None] | None = None,
        on_sync: Callable[[float], None] | None = None,
        clock_ms: Callable[[], int] = _now_ms,
    ) -> None:
        self.root = os.path.abspath(path)
        self.options = options or LogOptions()
        self._fs = fs or OS_FS
        self._on_durable = on_durable
        self._on_sync = on_sync  # each fsync's (or synced write's) duration in seconds, for metrics
        self._clock_ms = clock_ms
        self._fs.makedirs(self.root)
        self._lock_handle = self._fs.lock(os.path.join(self.root, LOCK_FILE))
        try:
            self._open()
        except BaseException:
            self._lock_handle.release()
            raise

    def _open(self) -> None:
        options, fs = self.options, self._fs
        slow = slow_crc_warning()
        if slow is not None:
            log.warning("wal.crc.slow", extra={"reason": slow})
        free = fs.free_bytes(self.root)
        if free < options.required_free_bytes:
            raise InsufficientSpace(self.root, free, options.required_free_bytes)
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)  # the writer waits here for work
        self._space = threading.Condition(self._lock)  # appenders wait here when the budget is spent
        self._durable_cond = threading.Condition(threading.Lock())  # tails and wait_durable wait here
        self._archive_lock = threading.Lock()
        self._archive_wake = threading.Event()
        self._damage = DamageRecorder(fs, self.root)

        self._cursors = CursorStore(fs, os.path.join(self.root, CURSOR_DIR), on_commit=self._archive_wake.set)
        positions = self._cursors.positions()
        recovered = recover(
            fs,
            self.root,
            max_record_bytes=options.max_record_bytes,
            min_next_seq=max(positions.values(), default=0) + 1,
        )
        for path, damage in recovered.damage:
            self._damage.record(path, damage, quarantine=False)

        self._active = fs.open_append(recovered.active_path)
        if self._active.size != recovered.active_size:
            raise WalError(f"{recovered.active_path}: size changed during recovery")
        self._active_first = recovered.active_first_seq
        self._active_records = recovered.next_seq - recovered.active_first_seq
        self._active_born = time.monotonic()
        self._next_seq = recovered.next_seq
        self._durable_seq = recovered.next_seq - 1
        self._visible = Visible(self._durable_seq, self._active_first, self._active.size)
        self._unarchived_bytes = sum(fs.size(s.path) for s in list_segments(fs, self.root) if not s.archived)

        # Queued records, framed and back to back: the writer takes them with one write call
        # (per-record buffers would cost a GIL hand-back per writev of 1024 pieces).
        self._pending = PendingRecords()
        self._batch = Batch()
        self._writer_idle = False
        # One thread at a time writes: the writer thread, or an appender acting as leader.
        self._writing = False
        self._leader_allowed = self.options.fsync == "always"
        # Under fsync="always", write and fdatasync in one system call where the OS offers it.
        self._synced_writes = self.options.fsync == "always" and fs.synced_writes
        self._broken = False  # a write or fsync failed; nothing may be written again
        self._state: WalError | None = None  # set when closed or failed: appends raise it
        self._closing = False
        self._io_step, self._io_path = "write", self._active.path  # named in an I/O error
        self._appends = 0
        self._bytes_written = 0
        self._syncs = 0
        self._sync_seconds = 0.0

        self._writer = threading.Thread(target=self._run_writer, name=f"wal-writer:{self.root}", daemon=True)
        self._writer.start()
        self._archiver: threading.Thread | None = None
        if self.options.auto_archive:
            self._archiver = threading.Thread(
                target=self._run_archiver, name=f"wal-archiver:{self.root}", daemon=True
            )
            self._archiver.start()
            self._archive_wake.set()
        log.info(
            "wal.opened",
            extra={"root": self.root, "next_seq": self._next_seq, "segment": recovered.active_path},
        )

    # -- appending ---------------------------------------------------------------------------

    def append(self, payload: bytes, *, wait: bool = True) -> int:
        """Append one record and return its sequence number.

        With `wait=True` this returns once the record is durable (under fsync="always"); with
        `wait=False` as soon as it is queued: use `wait_durable` or `durable_seq` to learn when.
        """
        if type(payload) is not bytes:
            payload = bytes(payload)  # the caller may reuse its buffer before the writer runs
        size = len(payload) + RECORD_OVERHEAD
        if size > self.options.max_record_bytes:
            raise RecordTooLarge(size, self.options.max_record_bytes)
        timestamp_ms = self._clock_ms()
        waiter = waiter_lock() if wait else None
        with self._lock:
            if self._state is not None:
                raise self._state
            if self._closing:  # the writer may already be gone: nothing queued now would be written
                raise LogClosed(f"{self.root}: the log is closing")
            if self.options.max_unarchived_bytes is not None:
                self._reserve_locked(size)
            seq = self._next_seq
            self._next_seq = seq + 1
            self._pending.add_batch([payload], seq, timestamp_ms, size)
            batch = self._batch
            batch.last_seq = seq
            taken, index = self._route_locked(batch, waiter)
        if taken is not None:
            self._flush_as_leader(taken, batch)
        elif waiter is not None:
            wait_for_release(batch, waiter, index)
        return seq

    def append_batch(self, payloads: Iterable[bytes], *, wait: bool = True) -> list[int]:
        """Append several records as one unit: contiguous sequences, one durable write."""
        items = [p if type(p) is bytes else bytes(p) for p in payloads]
        if not items:
            return []
        total = 0
        for payload in items:
            size = len(payload) + RECORD_OVERHEAD
            if size > self.options.max_record_bytes:
                raise RecordTooLarge(size, self.options.max_record_bytes)
            total += size
        timestamp_ms = self._clock_ms()
        waiter = waiter_lock() if wait else None
        with self._lock:
            if self._state is not None:
                raise self._state
            if self._closing:  # the writer may already be gone: nothing queued now would be written
                raise LogClosed(f"{self.root}: the log is closing")
            if self.options.max_unarchived_bytes is not None:
                self._reserve_locked(total)
            first = self._next_seq
            self._pending.add_batch(items, first, timestamp_ms, total)
            self._next_seq = first + len(items)
            batch = self._batch
            batch.last_seq = self._next_seq - 1
            taken, index = self._route_locked(batch, waiter)
        if taken is not None:
            self._flush_as_leader(taken, batch)
        elif waiter is not None:
            wait_for_release(batch, waiter, index)
        return list(range(first, first + len(items)))

    @property
    def durable_seq(self) -> int:
        """Every record up to this sequence is on stable storage (under fsync="always")."""
        return self._durable_seq

    @property
    def last_seq(self) -> int:
        """The last sequence number handed out (it may not be durable yet)."""
        return self._next_seq - 1

    def wait_durable(self, seq: int, timeout: float | None = None) -> bool:
        """Block until record `seq` is durable; False on timeout; raises if the log failed."""
        if seq <= self._durable_seq:
            return True
        if seq >= self._next_seq:
            raise ValueError(f"sequence {seq} was never appended (last is {self._next_seq - 1})")
        with self._durable_cond:
            self._durable_cond.wait_for(lambda: self._durable_seq >= seq or self._state is not None, timeout)
        if self._durable_seq >= seq:
            return True
        if self._state is not None:
            raise self._state
        return False

    # -- reading -------------------------------------------------------------------------------

    def read(self, from_seq: int = 1, to_seq: int | None = None) -> Iterator[Record]:
        """Durable records from `from_seq` to `to_seq` (default: the durable watermark now), in order."""
        last = self._durable_seq if to_seq is None else min(to_seq, self._durable_seq)
        walker = self._walker(from_seq)
        try:
            while walker.next_seq <= last:
                batch = walker.read_available(max_records=min(1000, last - walker.next_seq + 1))
                if not batch:
                    return
                yield from batch
        finally:
            walker.close()

    def tail(self, from_seq: int = 1) -> Tail:
        """A reader that follows the log as it grows, blocking (without polling) for new records."""
        return Tail(self, from_seq)

    def _walker(self, from_seq: int) -> SegmentWalker:
        return SegmentWalker(
            self._fs,
            self.root,
            from_seq,
            max_record_bytes=self.options.max_record_bytes,
            limit=lambda: self._visible,
            on_damage=self._on_read_damage,
        )

    def _on_read_damage(self, path: str, damage: Damage) -> None:
        self._damage.record(path, damage, quarantine=True)

    @property
    def damage(self) -> list[DamageReport]:
        """Every damaged region found since the log was opened (at recovery or while reading)."""
        return self._damage.reports()

    # -- cursors ---------------------------------------------------------------------------------

    def cursor(self, name: str) -> Cursor:
        """The named durable cursor (created at position 0 when new)."""
        return self._cursors.get(name)

    def cursors(self) -> dict[str, int]:
        """Every registered cursor's committed position."""
        return self._cursors.positions()

    def drop_cursor(self, name: str) -> None:
        """Unregister a cursor so it no longer holds back archiving."""
        self._cursors.drop(name)

    # -- the rest --------------------------------------------------------------------------------

    def stats(self) -> LogStats:
        """Counters since open and the log's current extent."""
        segments = list_segments(self._fs, self.root)
        return LogStats(
            first_seq=segments[0].first_seq if segments else self._next_seq,
            last_seq=self._next_seq - 1,
            durable_seq=self._durable_seq,
            appends=self._appends,
            bytes_written=self._bytes_written,
            syncs=self._syncs,
            sync_seconds=self._sync_seconds,
            unarchived_bytes=self._unarchived_bytes,
            damage_count=len(self._damage),
        )

    def close(self) -> None:
        """Write and fsync everything queued, stop the threads and release the directory lock."""
        with self._lock:
            if self._closing:
                return
            self._closing = True
            self._wake.notify()
            self._space.notify_all()
        self._writer.join()
        self._archive_wake.set()
        if self._archiver is not None:
            self._archiver.join()
        with self._lock:
            if self._state is None:
                self._state = LogClosed(f"{self.root}: the log is closed")
        with self._durable_cond:
            self._durable_cond.notify_all()
        self._lock_handle.release()
        log.info("wal.closed", extra={"root": self.root, "durable_seq": self._durable_seq})

    def __enter__(self) -> Log:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Log({self.root!r}, durable_seq={self._durable_seq})"


def open_log(
    path: str,
    *,
    fs: FileSystem | None = None,
    on_durable: Callable[[int], None] | None = None,
    on_sync: Callable[[float], None] | None = None,
    **options: object,
) -> Log:
    """Open (creating when missing) the log at `path` for writing; see LogOptions for options.

    `on_durable(seq)` is called after each publish of the durable watermark, `on_sync(seconds)`
    after each fsync with its duration; both run on the writing thread and must be quick.
    """
    return Log(path, LogOptions(**options), fs=fs, on_durable=on_durable, on_sync=on_sync)  # type: ignore[arg-type]
