"""Reading one segment or archive file whatever state it is in, for inspect, salvage and hexdump.

Unlike the log's own readers, this reads a file even when its header is bad: records after a
damaged header are still worth reporting and recovering. Offsets are always offsets in the
uncompressed segment, also for a `.wal.zst` archive.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

import zstandard

from .errors import BadHeader
from .format import HEADER_SIZE, check_header
from .fs import OS_FS
from .layout import parse_first_seq
from .scan import Damage, RawRecord, scan_records
from .segment import is_archive

# zstd hands out data in blocks of this size; larger reads cost memory and buy nothing.
_ZSTD_READ_BYTES = 1 << 20


@dataclass(frozen=True)
class HeaderCheck:
    """A file's first bytes (a whole header unless the file is shorter) and what checking them found."""

    data: bytes
    version: int | None
    error: BadHeader | None


@dataclass(frozen=True)
class DataEnd:
    """The last item of a scan: how many uncompressed bytes the file holds."""

    data_bytes: int | None  # None when an archive stopped decompressing


@contextlib.contextmanager
def open_data(path: str) -> Iterator[BinaryIO]:
    """The segment's uncompressed bytes from offset 0, as a stream."""
    with OS_FS.open_read(path) as raw:
        if not is_archive(path):
            yield raw
            return
        decompressor = zstandard.ZstdDecompressor()
        with decompressor.stream_reader(
            raw, read_size=_ZSTD_READ_BYTES, read_across_frames=True, closefd=False
        ) as stream:
            yield stream


def _read_upto(stream: BinaryIO, size: int) -> bytes:
    parts: list[bytes] = []
    while size > 0 and (chunk := stream.read(size)):
        parts.append(chunk)
        size -= len(chunk)
    return b"".join(parts)


def scan_file(path: str, max_record_bytes: int) -> Iterator[HeaderCheck | RawRecord | Damage | DataEnd]:
    """The header check, then every record and damaged region, then the data size.

    Unlike `segment.iter_segment`, a bad header is reported rather than raised, and the records
    after it are still scanned. The file's name, when it is a segment name, gives the sequence
    the first record must carry, so records lost at the start are counted too.
    """
    first_seq = parse_first_seq(os.path.basename(path))
    with open_data(path) as stream:
        end, last_seq, header_read = 0, None, False
        try:
            data = _read_upto(stream, HEADER_SIZE)
            header_read = True
            try:
                yield HeaderCheck(data, check_header(data, path), None)
            except BadHeader as exc:
                yield HeaderCheck(data, None, exc)
            end = len(data)
            if end == HEADER_SIZE:
                for item in scan_records(stream, max_record_bytes=max_record_bytes, first_seq=first_seq):
                    if isinstance(item, RawRecord):
                        end, last_seq = item.offset + item.length, item.seq
                    else:
                        end = item.end_offset
                    yield item
        except zstandard.ZstdError as exc:
            if not header_read:
                yield HeaderCheck(b"", None, BadHeader(path, 0, f"not a readable zstd archive: {exc}"))
            else:
                yield Damage(end, end, f"archive stops decompressing: {exc}", True, last_seq, None)
            yield DataEnd(None)
            return
        yield DataEnd(end)


class ByteReader:
    """Reads a segment's uncompressed bytes at non-decreasing offsets (archives cannot seek back)."""

    def __init__(self, stream: BinaryIO) -> None:
        self.stream = stream
        self.pos = 0

    def read(self, offset: int, size: int) -> bytes:
        if offset < self.pos:
            raise ValueError(f"cannot read back to offset {offset} from {self.pos}")
        try:
            if self.stream.seekable():
                self.stream.seek(offset)
            else:
                while self.pos < offset and (
                    skipped := self.stream.read(min(offset - self.pos, _ZSTD_READ_BYTES))
                ):
                    self.pos += len(skipped)
            data = _read_upto(self.stream, size)
        except zstandard.ZstdError:
            data = b""  # the scan has already reported where the archive stops decompressing
        self.pos = offset + len(data)
        return data
