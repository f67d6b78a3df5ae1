"""The errors of the `wal` package, as one tree a caller can catch at any level.

    WalError                      anything the log raises on purpose
    ├── CorruptionError           bytes on disk that are not a valid segment or record
    │   └── BadHeader             a file that is not an ARWAL001 version-1 segment
    ├── RecordTooLarge            a payload above max_record_bytes (also a ValueError)
    ├── WalFullError              no room: the unarchived-size budget is spent (on_full="error")
    │   ├── InsufficientSpace     too little free disk at open for the log to make progress
    │   └── DiskFullError         ENOSPC from the file system during a write (also a WalIOError)
    ├── WalIOError                a write or fsync failed; the log stopped accepting appends
    ├── LogLocked                 another process holds the directory's writer lock
    ├── LogClosed                 the log was closed
    └── NotALog                   a path that is neither a segment, an archive nor a log directory

Corruption carries the file, the byte offset and a reason, so a message can say exactly where.
"""

from __future__ import annotations

import errno


class WalError(Exception):
    """Base class of every error the log raises on purpose."""


class CorruptionError(WalError):
    """Bytes that do not form a valid segment header or record."""

    def __init__(self, path: str, offset: int, reason: str) -> None:
        self.path = path
        self.offset = offset
        self.reason = reason
        super().__init__(f"{path}: corrupt at byte {offset}: {reason}")


class BadHeader(CorruptionError):
    """A file whose first 16 bytes are not an ARWAL001 version-1 header."""


class RecordTooLarge(WalError, ValueError):
    """A payload that would make a record larger than `max_record_bytes`."""

    def __init__(self, size: int, limit: int) -> None:
        self.size = size
        self.limit = limit
        super().__init__(f"record of {size} bytes exceeds max_record_bytes={limit}")


class WalFullError(WalError):
    """The log cannot take more data until something is archived or space is freed."""


class InsufficientSpace(WalFullError):
    """Free space on the log's file system is below what the log needs to make progress."""

    def __init__(self, path: str, free_bytes: int, needed_bytes: int) -> None:
        self.path = path
        self.free_bytes = free_bytes
        self.needed_bytes = needed_bytes
        super().__init__(
            f"{path}: only {free_bytes} bytes free, the log needs at least {needed_bytes}; "
            "free disk space or lower min_free_bytes"
        )


class WalIOError(WalError):
    """A write or fsync failed. The log accepts no more appends; reopen it to recover."""

    def __init__(self, message: str, cause: OSError | None = None) -> None:
        self.cause = cause
        super().__init__(message)


class DiskFullError(WalIOError, WalFullError):
    """The file system ran out of space during a write."""


class LogLocked(WalError):
    """Another process holds the log's writer lock."""

    def __init__(self, path: str, pid: int | None) -> None:
        self.path = path
        self.pid = pid
        holder = f"process {pid}" if pid else "another process"
        super().__init__(f"{path} is locked by {holder}; only one writer may open a log")


class LogClosed(WalError):
    """The log was closed."""


class NotALog(WalError):
    """A path that is neither a segment, an archive nor a log directory."""


def io_error(action: str, path: str, exc: OSError) -> WalIOError:
    """Wrap an OSError from a write or sync into the right WalIOError kind."""
    if exc.errno == errno.ENOSPC:
        return DiskFullError(f"{action} {path}: no space left on device", exc)
    return WalIOError(f"{action} {path}: {exc.strerror or exc}", exc)
