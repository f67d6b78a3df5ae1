"""Archiving for an open log: the unarchived-bytes budget, the background archiver and retention.

Appenders wait (or fail) when live segments would exceed `max_unarchived_bytes`; archiving a
segment that every cursor has passed gives the space back. The archiver thread does that whenever
a segment is sealed or a cursor commits, and applies retention at most once an hour. Compressing and
deleting files is `archive.py`'s job; this module decides when, for a log that is being written.

`LogArchiver` is mixed into `Log`, as `LogWriter` is.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from _thread import LockType

from .archive import ArchivedSegment, RemovedArchive, apply_retention, archive_segment
from .cursor import CursorStore
from .errors import LogClosed, WalError, WalFullError
from .format import HEADER_SIZE
from .fs import FileSystem
from .layout import list_segments
from .options import LogOptions
from .pending import PendingRecords
from .reader import Visible

log = logging.getLogger("wal")

# How often the background archiver also applies retention, when nothing else wakes it.
_RETENTION_PERIOD_S = 3600.0


class LogArchiver:
    """Archives sealed segments behind the slowest cursor and deletes archives past retention."""

    # The log state this part uses; Log._open sets it up.
    root: str
    options: LogOptions
    _fs: FileSystem
    _lock: LockType
    _space: threading.Condition
    _archive_lock: LockType
    _archive_wake: threading.Event
    _cursors: CursorStore
    _visible: Visible
    _unarchived_bytes: int
    _pending: PendingRecords
    _state: WalError | None
    _closing: bool

    def _reserve_locked(self, size: int) -> None:
        """Wait (or fail) while live segments plus the queue would exceed max_unarchived_bytes."""
        budget = self.options.max_unarchived_bytes
        assert budget is not None
        deadline = (
            None if self.options.full_timeout_s is None else time.monotonic() + self.options.full_timeout_s
        )
        while (
            self._unarchived_bytes + self._pending.used + size > budget
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
            if self._closing:
                raise LogClosed(f"{self.root}: the log closed while this append waited for space")

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
        last_retention: float | None = None  # None: retention runs on the first pass, at open
        while not (self._closing or self._state is not None):
            try:
                self.archive()
                if last_retention is None or time.monotonic() - last_retention >= _RETENTION_PERIOD_S:
                    self.apply_retention()
                    last_retention = time.monotonic()
            except (OSError, WalError) as exc:
                log.error("wal.archive.failed", extra={"error": str(exc)})
            self._archive_wake.wait(_RETENTION_PERIOD_S)
            self._archive_wake.clear()
