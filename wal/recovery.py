"""What opening a log does to the disk before the first append: recovery of the active segment.

Only the active (highest-numbered live) segment is scanned, so opening costs time in proportion
to it, not to the log. See docs/format.md, "Recovery", for the rules implemented here.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

from . import failpoints
from .durable import TMP_SUFFIX, copy_file, create_segment, rename_durably, unlink_durably
from .errors import BadHeader
from .format import HEADER_SIZE, SEGMENT_HEADER, check_header
from .fs import FileSystem
from .layout import ARCHIVE_DIR, QUARANTINE_DIR, WAL_DIR, SegmentFile, list_segments, segment_name
from .scan import Damage, RawRecord, scan_records
from .segment import archive_content_size, iter_segment

log = logging.getLogger("wal")


@dataclass
class Recovered:
    """The state of the log after recovery: where appends continue."""

    active_path: str
    active_first_seq: int
    active_size: int
    next_seq: int
    damage: list[tuple[str, Damage]] = field(default_factory=list)


def recover(fs: FileSystem, root: str, *, max_record_bytes: int, min_next_seq: int = 1) -> Recovered:
    """Repair what a crash left and return where appends continue.

    `min_next_seq` guards against reusing sequence numbers when every segment was removed by
    hand: it is one past the highest cursor position.
    """
    for folder in (WAL_DIR, ARCHIVE_DIR, QUARANTINE_DIR):
        fs.makedirs(os.path.join(root, folder))
    _remove_leftovers(fs, root)
    live = [s for s in list_segments(fs, root) if not s.archived]
    if not live:
        next_seq = max(min_next_seq, _next_seq_from_archives(fs, root, max_record_bytes))
        return _start_segment(fs, root, next_seq, [])
    active = live[-1]
    size = fs.size(active.path)
    if size < HEADER_SIZE or not _header_ok(fs, active.path):
        return _recover_bad_header(fs, root, active, size, max_record_bytes, min_next_seq)
    return _recover_active(fs, root, active, max_record_bytes)


def _recover_active(fs: FileSystem, root: str, active: SegmentFile, max_record_bytes: int) -> Recovered:
    last_seq = active.first_seq - 1
    good_end = HEADER_SIZE
    damages: list[Damage] = []
    for item in iter_segment(
        active.path, fs=fs, max_record_bytes=max_record_bytes, first_seq=active.first_seq
    ):
        if isinstance(item, RawRecord):
            last_seq, good_end = item.seq, item.offset + item.length
        else:
            damages.append(item)
    size = fs.size(active.path)
    reports = [(active.path, d) for d in damages]
    middle = [d for d in damages if not d.at_end]
    if middle:
        # Keep every byte for forensics, cut any torn tail, and never append after damage.
        quarantined = os.path.join(root, QUARANTINE_DIR, os.path.basename(active.path) + ".damaged")
        if not fs.exists(quarantined):
            copy_file(fs, active.path, quarantined)
        for damage in middle:
            log.error(
                "wal.recover.damaged_segment",
                extra={
                    "segment": active.path,
                    "offset": damage.offset,
                    "end_offset": damage.end_offset,
                    "reason": damage.reason,
                    "records_skipped": damage.records_skipped,
                    "quarantined": quarantined,
                },
            )
    if good_end < size:
        _cut_tail(fs, root, active.path, good_end, size, damages[-1].reason if damages else "trailing bytes")
    if middle:
        return _start_segment(fs, root, last_seq + 1, reports)
    return Recovered(active.path, active.first_seq, good_end, last_seq + 1, reports)


def _cut_tail(fs: FileSystem, root: str, path: str, offset: int, size: int, reason: str) -> None:
    """Copy the bytes after the last intact record to quarantine, then truncate them away."""
    kept = os.path.join(root, QUARANTINE_DIR, f"{os.path.basename(path)}.{offset}.tail")
    copy_file(fs, path, kept, start=offset)
    failpoints.hit("recover.before_truncate")
    handle = fs.open_append(path)
    try:
        handle.truncate(offset)
        handle.sync()
    finally:
        handle.close()
    log.warning(
        "wal.recover.torn_tail",
        extra={
            "segment": path,
            "offset": offset,
            "bytes_dropped": size - offset,
            "reason": reason,
            "kept_in": kept,
        },
    )


def _recover_bad_header(
    fs: FileSystem, root: str, active: SegmentFile, size: int, max_record_bytes: int, min_next_seq: int
) -> Recovered:
    """An active segment without a valid header: a crash while creating it, or damage."""
    data = b""
    if size:
        with fs.open_read(active.path) as handle:
            data = handle.read(HEADER_SIZE)
    if size <= HEADER_SIZE and SEGMENT_HEADER.startswith(data):
        # Creation was interrupted before the header was durable: nothing was ever appended.
        unlink_durably(fs, active.path)
        return _start_segment(fs, root, max(active.first_seq, min_next_seq), [])
    # A damaged header: move the file aside whole and find its last record to avoid reusing sequences.
    last_seq = active.first_seq - 1
    with fs.open_read(active.path) as handle:
        handle.seek(HEADER_SIZE)
        for item in scan_records(handle, max_record_bytes=max_record_bytes):
            if isinstance(item, RawRecord):
                last_seq = max(last_seq, item.seq)
    moved = os.path.join(root, QUARANTINE_DIR, os.path.basename(active.path) + ".damaged")
    rename_durably(fs, active.path, moved)
    damage = Damage(0, size, "segment header is not ARWAL001 version 1", True, None, None)
    log.error(
        "wal.recover.bad_header", extra={"segment": active.path, "moved_to": moved, "last_seq": last_seq}
    )
    return _start_segment(fs, root, max(last_seq + 1, min_next_seq), [(active.path, damage)])


def _start_segment(fs: FileSystem, root: str, first_seq: int, damage: list[tuple[str, Damage]]) -> Recovered:
    path = os.path.join(root, WAL_DIR, segment_name(first_seq))
    if fs.exists(path):  # an empty, header-only segment left by a crash right after rotation
        return Recovered(path, first_seq, fs.size(path), first_seq, damage)
    create_segment(fs, path).close()
    return Recovered(path, first_seq, HEADER_SIZE, first_seq, damage)


def _header_ok(fs: FileSystem, path: str) -> bool:
    with fs.open_read(path) as handle:
        try:
            check_header(handle.read(HEADER_SIZE), path)
        except BadHeader:
            return False
    return True


def _next_seq_from_archives(fs: FileSystem, root: str, max_record_bytes: int) -> int:
    """One past the last record of the newest archive (only needed when wal/ is empty)."""
    archives = [s for s in list_segments(fs, root) if s.archived]
    if not archives:
        return 1
    newest = archives[-1]
    last = newest.first_seq - 1
    for item in iter_segment(newest.path, fs=fs, max_record_bytes=max_record_bytes):
        if isinstance(item, RawRecord):
            last = item.seq
    return last + 1


def _remove_leftovers(fs: FileSystem, root: str) -> None:
    """Temporary files of interrupted archiving, and live copies of segments already archived."""
    archive_dir = os.path.join(root, ARCHIVE_DIR)
    for name in fs.listdir(archive_dir):
        if name.endswith(TMP_SUFFIX):
            unlink_durably(fs, os.path.join(archive_dir, name))
    for name in fs.listdir(os.path.join(root, QUARANTINE_DIR)):
        if name.endswith(TMP_SUFFIX):
            unlink_durably(fs, os.path.join(root, QUARANTINE_DIR, name))
    wal_dir = os.path.join(root, WAL_DIR)
    for name in sorted(fs.listdir(wal_dir)):
        archived = os.path.join(archive_dir, name + ".zst")
        if name.endswith(".wal") and fs.exists(archived):
            if archive_content_size(fs, archived) == fs.size(os.path.join(wal_dir, name)):
                unlink_durably(fs, os.path.join(wal_dir, name))
            else:  # an archive that does not match its source is not trusted over the original
                unlink_durably(fs, archived)
