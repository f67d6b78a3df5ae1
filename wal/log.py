"""The log: a directory of segments with one writer thread that group-commits appends.

Appending threads only assign a sequence number, frame the record and queue it, then wait on the
batch they joined. The writer thread takes everything queued, writes it with one writev, fsyncs
once, and wakes each batch's waiters once. While it syncs, appenders fill the next batch, so the
fsync cost is shared and, for a pipelining producer (`wait=False`), hidden.
"""

from __future__ import annotations

import _thread
import itertools
import logging
import os
import threading
import time
from _thread import LockType
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace

from . import failpoints
from .archive import ArchivedSegment, RemovedArchive, apply_retention, archive_segment
from .cursor import Cursor, CursorStore
from .durable import copy_file, create_segment
from .errors import InsufficientSpace, LogClosed, RecordTooLarge, WalError, WalFullError, WalIOError, io_error
from .format import HEADER_SIZE, LENGTH, RECORD_OVERHEAD, crc_extension_in_use, encode_record_parts
from .fs import OS_FS, FileSystem
from .layout import CURSOR_DIR, LOCK_FILE, QUARANTINE_DIR, WAL_DIR, list_segments, segment_name
from .options import LogOptions
from .reader import Record, SegmentWalker, Visible
from .recovery import recover
from .scan import Damage

log = logging.getLogger("wal")

# How often the background archiver also applies retention, when nothing else wakes it.
_RETENTION_PERIOD_S = 3600.0
_RETRY_READ_S = 0.01


@dataclass(frozen=True)
class DamageReport:
    """Damage found in one file: where, why, what was lost, and where a copy was kept."""

    path: str
    offset: int
    end_offset: int
    reason: str
    records_skipped: int | None
    quarantined: str | None


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


class _Batch:
    """The records queued between two writes, and the locks of the threads waiting for them.

    Each waiting thread arms its own reusable lock and blocks on it. Releasing the batch wakes
    only the first waiter; each woken waiter wakes the next. The writer thus pays one wake-up per
    batch and goes straight on to the next write and fsync, while the wake-ups (which the GIL
    serialises anyway) run alongside it. No woken thread takes a shared lock on its way out.
    """

    __slots__ = ("error", "last_seq", "released", "waiters")

    def __init__(self) -> None:
        self.waiters: list[LockType] = []  # frozen once the writer has taken the batch
        self.error: WalError | None = None
        self.last_seq = 0
        self.released = False

    def release(self, error: WalError | None = None) -> None:
        if self.released:
            return
        self.error = error
        self.released = True
        if self.waiters:
            self.waiters[0].release()

    def pass_on(self, index: int) -> None:
        """Wake the waiter after `index`."""
        following = index + 1
        if following < len(self.waiters):
            self.waiters[following].release()


_thread_state = threading.local()


def _waiter_lock() -> LockType:
    """This thread's reusable wake-up lock."""
    try:
        return _thread_state.lock
    except AttributeError:
        lock = _thread_state.lock = _thread.allocate_lock()
        return lock


def _wait(batch: _Batch, waiter: LockType, index: int) -> None:
    """Block until the batch is released, then wake the next waiter in line."""
    try:
        waiter.acquire()
    except BaseException:
        # A signal interrupted the wait (main thread only). The chain of wake-ups runs through this
        # thread, so still take our turn before leaving, or every later waiter would hang.
        while not waiter.acquire(timeout=0.05):
            pass
        waiter.release()
        batch.pass_on(index)
        raise
    waiter.release()
    batch.pass_on(index)
    if batch.error is not None:
        raise batch.error


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class Log:
    """An open log. Create it with `wal.open(path, **options)`."""

    def __init__(
        self,
        path: str,
        options: LogOptions | None = None,
        *,
        fs: FileSystem | None = None,
        on_durable: Callable[[int], None] | None = None,
        clock_ms: Callable[[], int] = _now_ms,
    ) -> None:
        self.root = os.path.abspath(path)
        self.options = options or LogOptions()
        self._fs = fs or OS_FS
        self._on_durable = on_durable
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
        if not crc_extension_in_use():
            log.warning(
                "wal.crc.slow",
                extra={
                    "reason": "crcmod's C extension is not in use: CRCs run about 30x slower; "
                    "reinstall crcmod where a C compiler and Python headers are available"
                },
            )
        free = fs.free_bytes(self.root)
        if free < options.required_free_bytes:
            raise InsufficientSpace(self.root, free, options.required_free_bytes)
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)  # the writer waits here for work
        self._space = threading.Condition(self._lock)  # appenders wait here when the budget is spent
        self._durable_cond = threading.Condition(threading.Lock())  # tails and wait_durable wait here
        self._archive_lock = threading.Lock()
        self._archive_wake = threading.Event()
        self._damage: dict[tuple[str, int], DamageReport] = {}
        self._quarantined: set[str] = set()

        self._cursors = CursorStore(fs, os.path.join(self.root, CURSOR_DIR), on_commit=self._archive_wake.set)
        positions = self._cursors.positions()
        recovered = recover(
            fs,
            self.root,
            max_record_bytes=options.max_record_bytes,
            min_next_seq=max(positions.values(), default=0) + 1,
        )
        for path, damage in recovered.damage:
            self._record_damage(path, damage, quarantine=False)

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
        self._pending = bytearray()
        self._pending_count = 0
        self._batch = _Batch()
        self._writer_idle = False
        # One thread at a time writes: the writer thread, or an appender acting as leader.
        self._writing = False
        self._leader_allowed = self.options.fsync == "always"
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
        waiter = _waiter_lock() if wait else None
        with self._lock:
            if self._state is not None:
                raise self._state
            if self.options.max_unarchived_bytes is not None:
                self._reserve_locked(size)
            seq = self._next_seq
            self._next_seq = seq + 1
            prefix, crc = encode_record_parts(seq, timestamp_ms, payload)
            pending = self._pending
            pending += prefix
            pending += payload
            pending += crc
            self._pending_count += 1
            batch = self._batch
            batch.last_seq = seq
            if waiter is not None and self._leader_allowed and self._writer_idle and not self._writing:
                data, count = self._take_pending_locked()
            else:
                data = None
                if waiter is not None:
                    waiter.acquire()  # armed: the release that wakes us comes from the writer or a peer
                    index = len(batch.waiters)
                    batch.waiters.append(waiter)
                if self._writer_idle and not self._writing:
                    self._writer_idle = False
                    self._wake.notify()
        if data is not None:
            self._flush_as_leader(data, count, batch)
        elif waiter is not None:
            _wait(batch, waiter, index)
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
        waiter = _waiter_lock() if wait else None
        with self._lock:
            if self._state is not None:
                raise self._state
            if self.options.max_unarchived_bytes is not None:
                self._reserve_locked(total)
            first = self._next_seq
            pending = self._pending
            for offset, payload in enumerate(items):
                prefix, crc = encode_record_parts(first + offset, timestamp_ms, payload)
                pending += prefix
                pending += payload
                pending += crc
            self._next_seq = first + len(items)
            self._pending_count += len(items)
            batch = self._batch
            batch.last_seq = self._next_seq - 1
            if waiter is not None and self._leader_allowed and self._writer_idle and not self._writing:
                data, count = self._take_pending_locked()
            else:
                data = None
                if waiter is not None:
                    waiter.acquire()
                    index = len(batch.waiters)
                    batch.waiters.append(waiter)
                if self._writer_idle and not self._writing:
                    self._writer_idle = False
                    self._wake.notify()
        if data is not None:
            self._flush_as_leader(data, count, batch)
        elif waiter is not None:
            _wait(batch, waiter, index)
        return list(range(first, first + len(items)))

    def _take_pending_locked(self) -> tuple[bytearray, int]:
        """Take the writing role and everything queued, for an appender that writes it itself."""
        self._writing = True
        data, count = self._pending, self._pending_count
        self._pending, self._pending_count = bytearray(), 0
        self._batch = _Batch()
        self._unarchived_bytes += len(data)
        return data, count

    def _flush_as_leader(self, data: bytearray, count: int, batch: _Batch) -> None:
        """Write and fsync a batch in the appending thread itself.

        When the writer thread is idle, handing it one record and waiting to be woken costs two
        thread switches, about a third of an fsync here; the appender doing the work costs none.
        """
        # The idle writer sleeps without a deadline while the segment is empty; the first record
        # starts the age clock it must wake up for.
        starts_age_clock = self.options.segment_max_age_s is not None and not self._active_records
        try:
            self._write(data, batch.last_seq - count + 1, count)
            self._appends += count
            self._bytes_written += len(data)
            failpoints.hit("log.after_write")
            self._sync()
            self._publish(batch.last_seq, [batch])
        except OSError as exc:
            self._fail(io_error(self._io_step, self._io_path, exc), [batch])
        finally:
            with self._lock:
                self._writing = False
                if self._writer_idle and (self._pending or self._closing or self._broken or starts_age_clock):
                    self._writer_idle = False
                    self._wake.notify()
        if batch.error is not None:
            raise batch.error

    def _reserve_locked(self, size: int) -> None:
        """Wait (or fail) while live segments plus the queue would exceed max_unarchived_bytes."""
        budget = self.options.max_unarchived_bytes
        assert budget is not None
        deadline = (
            None if self.options.full_timeout_s is None else time.monotonic() + self.options.full_timeout_s
        )
        while (
            self._unarchived_bytes + len(self._pending) + size > budget
            and self._unarchived_bytes > HEADER_SIZE
        ):
            message = (
                f"{self.root}: {self._unarchived_bytes} bytes not yet archived reach max_unarchived_bytes={budget}; "
                "records are archived once every cursor has passed their segment"
            )
            if self.options.on_full == "error":
                raise WalFullError(message)
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise WalFullError(message + f" (waited {self.options.full_timeout_s} s)")
            self._archive_wake.set()
            self._space.wait(remaining)
            if self._state is not None:
                raise self._state

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

    # -- the writer thread ---------------------------------------------------------------------

    def _run_writer(self) -> None:
        policy = self.options.fsync
        interval_s = self.options.fsync_interval_ms / 1000
        unsynced: list[_Batch] = []  # "interval": batches written but not yet fsynced
        unsynced_since = 0.0
        while True:
            with self._lock:
                while True:
                    if self._broken:
                        return  # a leader's write failed; it already failed every waiter
                    if not self._writing:
                        if self._pending or self._closing:
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
                parts, count = self._pending, self._pending_count
                batch = self._batch
                if parts:
                    self._pending, self._pending_count = bytearray(), 0
                    self._batch = _Batch()
                    self._unarchived_bytes += len(parts)
                closing = self._closing
            try:
                if parts:
                    self._write(parts, batch.last_seq - count + 1, count)
                    self._appends += count
                    self._bytes_written += len(parts)
                    failpoints.hit("log.after_write")
                    if policy == "always":
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
                if not parts:
                    self._rotate_if_old()
            except OSError as exc:
                self._fail(io_error(self._io_step, self._io_path, exc), [batch, *unsynced])
                return
            with self._lock:
                self._writing = False
            if closing and not parts:
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

    def _write(self, data: bytearray, first_seq: int, count: int) -> None:
        """Write queued records to the active segment, rotating where it would grow too large."""
        limit = self.options.segment_bytes
        self._io_step, self._io_path = "write", self._active.path
        if self._active.size + len(data) <= limit or (count == 1 and not self._active_records):
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
                    self._active.write(view[start:end])
                start = end
                self._rotate(seq)
                continue
            end += length
            seq += 1
            self._active_records += 1
        self._io_step, self._io_path = "write", self._active.path
        if end > start:
            self._active.write(view[start:end])
        view.release()

    def _sync(self) -> None:
        self._io_step, self._io_path = "fsync", self._active.path
        started = time.perf_counter()
        self._active.sync()
        self._sync_seconds += time.perf_counter() - started
        self._syncs += 1

    def _publish(self, durable_seq: int, batches: list[_Batch]) -> None:
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

    def _fail(self, error: WalIOError, batches: list[_Batch]) -> None:
        """Stop accepting appends after a write or fsync error; never retry and trust the page cache."""
        log.error("wal.io.failed", extra={"error": str(error), "durable_seq": self._durable_seq})
        with self._lock:
            self._state = error
            self._broken = True
            pending = self._batch
            self._pending, self._pending_count = bytearray(), 0
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
        self._record_damage(path, damage, quarantine=True)

    def _record_damage(self, path: str, damage: Damage, *, quarantine: bool) -> None:
        key = (path, damage.offset)
        if key in self._damage:
            return
        kept = None
        if quarantine and path not in self._quarantined and self._fs.exists(path):
            kept = os.path.join(self.root, QUARANTINE_DIR, os.path.basename(path) + ".damaged")
            try:
                if not self._fs.exists(kept):
                    copy_file(self._fs, path, kept)
                self._quarantined.add(path)
            except OSError as exc:
                log.error("wal.quarantine.failed", extra={"segment": path, "error": str(exc)})
                kept = None
        report = DamageReport(
            path, damage.offset, damage.end_offset, damage.reason, damage.records_skipped, kept
        )
        self._damage[key] = report
        log.error(
            "wal.damage",
            extra={
                "segment": path,
                "offset": damage.offset,
                "end_offset": damage.end_offset,
                "reason": damage.reason,
                "records_skipped": damage.records_skipped,
                "quarantined": kept,
            },
        )

    @property
    def damage(self) -> list[DamageReport]:
        """Every damaged region found since the log was opened (at recovery or while reading)."""
        return list(self._damage.values())

    # -- cursors, archive, retention --------------------------------------------------------------

    def cursor(self, name: str) -> Cursor:
        """The named durable cursor (created at position 0 when new)."""
        return self._cursors.get(name)

    def cursors(self) -> dict[str, int]:
        """Every registered cursor's committed position."""
        return self._cursors.positions()

    def drop_cursor(self, name: str) -> None:
        """Unregister a cursor so it no longer holds back archiving."""
        self._cursors.drop(name)

    def archive(self) -> list[ArchivedSegment]:
        """Archive every sealed segment that every cursor has passed (any sealed one without cursors)."""
        with self._archive_lock:
            positions = self._cursors.positions()
            floor = min(positions.values()) if positions else None
            active_first = self._visible.active_first_seq
            live = [s for s in list_segments(self._fs, self.root) if not s.archived]
            done: list[ArchivedSegment] = []
            for segment, following in itertools.pairwise(live):
                if following.first_seq > active_first:
                    break
                if floor is not None and floor < following.first_seq - 1:
                    break
                result = archive_segment(
                    self._fs, segment.path, self.root, segment.first_seq, self.options.archive_level
                )
                with self._lock:
                    self._unarchived_bytes -= result.original_bytes
                    self._space.notify_all()
                done.append(result)
            return done

    def apply_retention(self, *, now: float | None = None, dry_run: bool = False) -> list[RemovedArchive]:
        """Delete archives past the retention age, then the oldest beyond the size cap."""
        with self._archive_lock:
            return apply_retention(
                self._fs,
                self.root,
                max_age_s=self.options.retention_max_age_s,
                max_total_bytes=self.options.retention_max_bytes,
                now=now,
                dry_run=dry_run,
            )

    def _run_archiver(self) -> None:
        last_retention = 0.0
        while not self._closing:
            self._archive_wake.wait(_RETENTION_PERIOD_S)
            self._archive_wake.clear()
            if self._closing or self._state is not None:
                return
            try:
                self.archive()
                if time.monotonic() - last_retention >= _RETENTION_PERIOD_S:
                    self.apply_retention()
                    last_retention = time.monotonic()
            except (OSError, WalError) as exc:
                log.error("wal.archive.failed", extra={"error": str(exc)})

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
        """Up to `max_records` records; waits up to `timeout_s` (None: forever) when none are ready."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        log_ = self._log
        while not self._closed:
            batch = self._walker.read_available(max_records, max_bytes)
            if batch:
                return batch
            if log_._state is not None and log_._durable_seq < self._walker.next_seq:
                if isinstance(log_._state, LogClosed):
                    return []
                raise log_._state
            wanted = self._walker.next_seq
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return []
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
        return []

    def __iter__(self) -> Iterator[Record]:
        """Every record from here on, until the log or this tail is closed."""
        while batch := self.next_batch():
            yield from batch

    def close(self) -> None:
        self._closed = True
        self._walker.close()
        with self._log._durable_cond:
            self._log._durable_cond.notify_all()


def open_log(
    path: str,
    *,
    fs: FileSystem | None = None,
    on_durable: Callable[[int], None] | None = None,
    **options: object,
) -> Log:
    """Open (creating when missing) the log at `path` for writing; see LogOptions for options."""
    return Log(path, LogOptions(**options), fs=fs, on_durable=on_durable)  # type: ignore[arg-type]
