"""Opening one segment file, live (`.wal`) or archived (`.wal.zst`), for reading.

Archives are read as a stream, never decompressed to disk or into memory whole.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import BinaryIO

import zstandard

from .errors import BadHeader
from .format import HEADER_SIZE, check_header
from .fs import OS_FS, FileSystem
from .layout import ARCHIVE_SUFFIX
from .scan import DEFAULT_MAX_RECORD_BYTES, Damage, RawRecord, scan_records

# zstd reads in blocks of this size; larger reads cost memory and buy nothing.
_ZSTD_READ_BYTES = 1 << 20


def is_archive(path: str) -> bool:
    """True for a `.zst` file (read through zstd), False for a plain segment."""
    return path.endswith(ARCHIVE_SUFFIX) or path.endswith(".zst")


@contextlib.contextmanager
def open_segment(path: str, fs: FileSystem = OS_FS) -> Iterator[BinaryIO]:
    """Open a segment or archive, check its header, and yield a stream positioned after it."""
    raw = fs.open_read(path)
    try:
        if is_archive(path):
            stream: BinaryIO = zstandard.ZstdDecompressor().stream_reader(
                raw, read_size=_ZSTD_READ_BYTES, read_across_frames=True, closefd=False
            )
        else:
            stream = raw
        try:
            header = _read_exactly(stream, HEADER_SIZE)
        except zstandard.ZstdError as exc:
            raise BadHeader(path, 0, f"not a readable zstd archive: {exc}") from None
        check_header(header, path)
        yield stream
    finally:
        raw.close()


def iter_segment(
    path: str,
    *,
    fs: FileSystem = OS_FS,
    max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
    first_seq: int | None = None,
    end_offset: int | None = None,
) -> Iterator[RawRecord | Damage]:
    """Every record and damaged region of one segment or archive, in file order."""
    with open_segment(path, fs) as stream:
        items = scan_records(
            stream, end_offset=end_offset, max_record_bytes=max_record_bytes, first_seq=first_seq
        )
        if is_archive(path):
            items = _check_archive_end(items, stream, archive_content_size(fs, path))
        yield from items


def archive_content_size(fs: FileSystem, path: str) -> int | None:
    """The uncompressed size an archive's zstd frame header records, if it records one."""
    with fs.open_read(path) as handle:
        head = handle.read(18)
    try:
        size = zstandard.frame_content_size(head)
    except zstandard.ZstdError:
        return None
    return None if size < 0 else size


def _check_archive_end(
    items: Iterator[RawRecord | Damage], stream: BinaryIO, expected_size: int | None
) -> Iterator[RawRecord | Damage]:
    """Turn zstd failures into Damage, and report an archive that ends before its frame says.

    A cut-off zstd frame reads as a clean, early end of data, so the decompressed length is
    compared with the size the frame header promises.
    """
    end, last_seq, reported_end = HEADER_SIZE, None, False
    try:
        for item in items:
            if isinstance(item, RawRecord):
                end, last_seq = item.offset + item.length, item.seq
            else:
                end, reported_end = item.end_offset, item.at_end
            yield item
    except zstandard.ZstdError as exc:
        yield Damage(end, end, f"archive stops decompressing: {exc}", True, last_seq, None)
        return
    if expected_size is not None and not reported_end and end < expected_size:
        # The missing bytes are not in the file, so the damage is empty and sits where the data stops.
        reason = f"archive is truncated: {end} of {expected_size} bytes"
        yield Damage(end, end, reason, True, last_seq, None)


def _read_exactly(stream: BinaryIO, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = stream.read(size - len(data))
        if not chunk:
            break
        data += chunk
    return data
