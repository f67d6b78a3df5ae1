"""Archiving sealed segments with zstd, and retention of the archives by age and total size."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass

import zstandard

from . import failpoints
from .durable import TMP_SUFFIX, rename_durably, unlink_durably
from .fs import FileSystem
from .layout import ARCHIVE_DIR, ARCHIVE_SUFFIX, archive_name, list_segments

log = logging.getLogger("wal")

DEFAULT_ARCHIVE_LEVEL = 3
DEFAULT_RETENTION_AGE_S = 30 * 24 * 3600
_CHUNK_BYTES = 1 << 20


@dataclass(frozen=True)
class ArchivedSegment:
    """One segment moved into the archive."""

    first_seq: int
    source: str
    archive: str
    original_bytes: int
    archived_bytes: int


@dataclass(frozen=True)
class RemovedArchive:
    """One archive removed (or, in a dry run, that would be) by retention."""

    path: str
    size_bytes: int
    age_s: float
    reason: str  # "age" or "size"


def archive_segment(
    fs: FileSystem, segment_path: str, root: str, first_seq: int, level: int
) -> ArchivedSegment:
    """Compress a sealed segment into archive/, fsync it, then remove the original.

    Order matters for crashes: the archive is complete and fsynced under a temporary name, renamed
    and its directory fsynced before the original goes; a crash in between leaves both, and the
    next open removes the live copy.
    """
    target = os.path.join(root, ARCHIVE_DIR, archive_name(first_seq))
    tmp = target + TMP_SUFFIX
    original = fs.size(segment_path)
    mtime = fs.mtime(segment_path)
    compressor = zstandard.ZstdCompressor(level=level, write_checksum=True)
    out = fs.create(tmp, exclusive=False)
    try:
        chunker = compressor.chunker(size=original, chunk_size=_CHUNK_BYTES)
        with fs.open_read(segment_path) as reader:
            while data := reader.read(_CHUNK_BYTES):
                for piece in chunker.compress(data):
                    out.write(piece)
        for piece in chunker.finish():
            out.write(piece)
        out.sync()
        archived = out.size
    finally:
        out.close()
    failpoints.hit("archive.after_compress")
    rename_durably(fs, tmp, target)
    # The archive keeps the segment's last-write time: retention ages data, not archiving runs.
    fs.set_mtime(target, mtime)
    failpoints.hit("archive.before_unlink")
    unlink_durably(fs, segment_path)
    log.info(
        "wal.segment.archived", extra={"segment": segment_path, "bytes": original, "archived_bytes": archived}
    )
    return ArchivedSegment(first_seq, segment_path, target, original, archived)


def apply_retention(
    fs: FileSystem,
    root: str,
    *,
    max_age_s: float | None = DEFAULT_RETENTION_AGE_S,
    max_total_bytes: int | None = None,
    now: float | None = None,
    dry_run: bool = False,
) -> list[RemovedArchive]:
    """Delete archives older than `max_age_s`, then the oldest until the total fits `max_total_bytes`."""
    now = time.time() if now is None else now
    archives = [s for s in list_segments(fs, root) if s.archived and s.path.endswith(ARCHIVE_SUFFIX)]
    entries = [(s.path, fs.size(s.path), now - fs.mtime(s.path)) for s in archives]
    total = sum(size for _, size, _ in entries)
    removed: list[RemovedArchive] = []
    for path, size, age in entries:  # oldest first: ordered by first sequence
        if max_age_s is not None and age > max_age_s:
            reason = "age"
        elif max_total_bytes is not None and total > max_total_bytes:
            reason = "size"
        else:
            continue
        if not dry_run:
            unlink_durably(fs, path)
            log.info("wal.archive.expired", extra={"archive": path, "reason": reason, "bytes": size})
        removed.append(RemovedArchive(path, size, age, reason))
        total -= size
    return removed
