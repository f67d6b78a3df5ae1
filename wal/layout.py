"""Where things live inside a log directory, and how segment files are named.

<root>/LOCK                           the writer's flock; holds the writer's pid
<root>/wal/<first seq:020d>.wal       live segments; the highest-numbered one is being written
<root>/archive/<first seq:020d>.wal.zst   sealed segments, zstd-compressed
<root>/cursors/<name>.cursor          one durable cursor per reader (JSON, replaced atomically)
<root>/quarantine/                    copies of damaged segments and the torn tails cut off them
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from .fs import FileSystem

WAL_DIR = "wal"
ARCHIVE_DIR = "archive"
CURSOR_DIR = "cursors"
QUARANTINE_DIR = "quarantine"
LOCK_FILE = "LOCK"

SEGMENT_SUFFIX = ".wal"
ARCHIVE_SUFFIX = ".wal.zst"
SEQ_DIGITS = 20


def segment_name(first_seq: int) -> str:
    """`00000000000000000001.wal` for a segment whose first record is sequence 1."""
    return f"{first_seq:0{SEQ_DIGITS}d}{SEGMENT_SUFFIX}"


def archive_name(first_seq: int) -> str:
    """The archive of that segment: the same name with `.zst` added."""
    return segment_name(first_seq) + ".zst"


def parse_first_seq(name: str) -> int | None:
    """The first sequence number encoded in a segment or archive file name, or None."""
    for suffix in (ARCHIVE_SUFFIX, SEGMENT_SUFFIX):
        if name.endswith(suffix):
            stem = name[: -len(suffix)]
            if len(stem) == SEQ_DIGITS and stem.isdigit():
                return int(stem)
    return None


@dataclass(frozen=True, order=True)
class SegmentFile:
    """One segment on disk, live or archived."""

    first_seq: int
    path: str
    archived: bool

    @property
    def name(self) -> str:
        return os.path.basename(self.path)


def is_log_dir(fs: FileSystem, path: str) -> bool:
    """True when `path` looks like a log directory (it has a wal/ or archive/ folder)."""
    return fs.exists(os.path.join(path, WAL_DIR)) or fs.exists(os.path.join(path, ARCHIVE_DIR))


def list_segments(fs: FileSystem, root: str) -> list[SegmentFile]:
    """Every segment of the log at `root`, archives and live ones, ordered by first sequence.

    When a crash left both a segment and its archive, the live segment is listed; the next open
    removes the live copy when the archive is complete, and the archive otherwise.

    `wal/` is listed before `archive/`: archiving writes the archive before it removes the live
    segment, so a segment being archived meanwhile is seen in one of the two listings, never in
    neither.
    """
    found: dict[int, SegmentFile] = {}
    for directory, archived in ((WAL_DIR, False), (ARCHIVE_DIR, True)):
        folder = os.path.join(root, directory)
        for name in fs.listdir(folder):
            first = parse_first_seq(name)
            if first is None or name.endswith(ARCHIVE_SUFFIX) != archived:
                continue
            found.setdefault(first, SegmentFile(first, os.path.join(folder, name), archived))
    return [found[key] for key in sorted(found)]
