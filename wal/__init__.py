"""wal: a standalone durable write-ahead log (ARWAL001 segments, group commit, zstd archive).

    import wal
    with wal.open("/var/lib/app/log") as log:
        seq = log.append(b"payload")           # returns once fsynced
        for record in log.read(from_seq=1):    # archives first, then live segments
            ...

The public API is listed in `__all__`; everything else is internal.
"""

from .archive import ArchivedSegment, RemovedArchive
from .cursor import Cursor
from .damage import DamageReport
from .errors import (
    BadHeader,
    CorruptionError,
    DiskFullError,
    InsufficientSpace,
    LogClosed,
    LogLocked,
    NotALog,
    RecordTooLarge,
    WalError,
    WalFullError,
    WalIOError,
)
from .format import crc_extension_in_use, crc_implementation, require_crc_extension
from .log import Log, LogStats
from .log import open_log as open
from .options import LogOptions
from .reader import Record, read_log
from .tail import Tail

__all__ = [
    "ArchivedSegment",
    "BadHeader",
    "CorruptionError",
    "Cursor",
    "DamageReport",
    "DiskFullError",
    "InsufficientSpace",
    "Log",
    "LogClosed",
    "LogLocked",
    "LogOptions",
    "LogStats",
    "NotALog",
    "Record",
    "RecordTooLarge",
    "RemovedArchive",
    "Tail",
    "WalError",
    "WalFullError",
    "WalIOError",
    "crc_extension_in_use",
    "crc_implementation",
    "open",
    "read_log",
    "require_crc_extension",
]
