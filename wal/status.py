"""The facts of a log directory, read from disk without opening it for writing.

Used by `wallaby-agent wal stats`; safe beside a running writer (it takes no lock and writes
nothing).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field

from .cursor import CURSOR_SUFFIX, read_cursor_file
from .errors import NotALog, WalError
from .fs import OS_FS, FileSystem, is_locked
from .layout import CURSOR_DIR, LOCK_FILE, QUARANTINE_DIR, is_log_dir, list_segments
from .scan import RawRecord
from .segment import archive_content_size, iter_segment


@dataclass(frozen=True)
class CursorStatus:
    """One cursor: its committed position and how many records it still has to read."""

    name: str
    position: int
    behind: int


@dataclass(frozen=True)
class LogStatus:
    """A log directory's extent, sizes, cursors, quarantine and writer."""

    root: str
    first_seq: int | None
    last_seq: int | None
    live_segments: int
    live_bytes: int
    archives: int
    archive_bytes: int
    archive_original_bytes: int  # what the archives decompress to, where their frames record it
    cursors: list[CursorStatus] = field(default_factory=list)
    quarantine_files: list[str] = field(default_factory=list)
    writer_pid: int | None = None

    @property
    def compression_ratio(self) -> float | None:
        """Original bytes per archived byte (5.0 means archives are a fifth of the segments)."""
        return self.archive_original_bytes / self.archive_bytes if self.archive_bytes else None

    def to_dict(self) -> dict:
        data = asdict(self)
        data["compression_ratio"] = self.compression_ratio
        return data


def read_status(root: str, fs: FileSystem = OS_FS) -> LogStatus:
    """The status of the log at `root`; raises NotALog when it is not a log directory."""
    if not os.path.isdir(root):
        raise NotALog(f"{root}: not a directory")
    if not is_log_dir(fs, root):
        raise NotALog(f"{root}: not a log directory (no wal/ or archive/ folder)")
    segments = list_segments(fs, root)
    live = [s for s in segments if not s.archived]
    archived = [s for s in segments if s.archived]
    last_seq = _last_seq(fs, live[-1].path, live[-1].first_seq) if live else None
    cursors = []
    for name in sorted(fs.listdir(os.path.join(root, CURSOR_DIR))):
        if name.endswith(CURSOR_SUFFIX):
            try:
                position = read_cursor_file(fs, os.path.join(root, CURSOR_DIR, name))
            except WalError:
                position = -1
            cursors.append(
                CursorStatus(name[: -len(CURSOR_SUFFIX)], position, max(0, (last_seq or 0) - position))
            )
    return LogStatus(
        root=root,
        first_seq=segments[0].first_seq if segments else None,
        last_seq=last_seq,
        live_segments=len(live),
        live_bytes=sum(fs.size(s.path) for s in live),
        archives=len(archived),
        archive_bytes=sum(fs.size(s.path) for s in archived),
        archive_original_bytes=sum(archive_content_size(fs, s.path) or 0 for s in archived),
        cursors=cursors,
        quarantine_files=sorted(fs.listdir(os.path.join(root, QUARANTINE_DIR))),
        writer_pid=is_locked(os.path.join(root, LOCK_FILE)),
    )


def _last_seq(fs: FileSystem, path: str, first_seq: int) -> int:
    """The last intact record's sequence in the active segment (one segment is scanned, not the log)."""
    last = first_seq - 1
    for item in iter_segment(path, fs=fs):
        if isinstance(item, RawRecord):
            last = item.seq
    return last
