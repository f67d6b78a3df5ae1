"""Reading one segment forward a chunk at a time: whole runs of intact records in one tight loop.

`scan_records` spends a generator step and two objects on every record, about 3.6 us for 300
bytes: more than a sender tailing the log can afford. Yet a tail almost always reads whole, intact
records in sequence, so a `ChunkReader` reads large chunks and turns each run of such records into
`Record`s in one loop (`parse_intact`, in C when wal/_scan.c was compiled), checking every CRC. At anything else (a short or damaged
record, a length out of range, a sequence out of order) it stops, and `scan_rest` hands that
record and everything after it to `scan_records`, which reports the damage exactly as if it had
read the whole segment.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from typing import BinaryIO, NamedTuple

from .format import CRC_RESIDUE, LENGTH, RECORD_OVERHEAD, RECORD_PREFIX_SIZE, crc64_direct
from .scan import CHUNK_BYTES, Damage, RawRecord, scan_records

# length, sequence, timestamp_ms: status and the reserved bytes are checked by the CRC alone, as in
# scan_records, and skipping them spares an object per record.
_PREFIX = struct.Struct("<Iq4xq")
_PAYLOAD = slice(RECORD_PREFIX_SIZE - 4, -8)  # the payload within a record's checked bytes
_new_tuple = tuple.__new__  # a NamedTuple built without its keyword-parsing __new__: half the cost


class Record(NamedTuple):
    """One record read from the log, and where it lives."""

    seq: int
    timestamp_ms: int
    payload: bytes
    path: str  # the segment or archive file holding it
    offset: int  # byte offset in the (uncompressed) segment
    archived: bool


def python_parse_intact(
    buf: bytes,
    pos: int,
    first_seq: int,
    last_seq: int,
    stop: int,
    max_record_bytes: int,
    path: str,
    archived: bool,
    base: int,
) -> tuple[list[Record], int]:
    """The records at buf[pos:] that are whole and intact and carry `first_seq`, `first_seq + 1`, ...

    Stops after `last_seq`, before a record starting at or after index `stop`, and at the first
    record that is not whole in `buf` or that scan_records would not pass as the next intact one.
    `base` is the segment offset of buf[0]. Returns the records and the index after the last.
    """
    out: list[Record] = []
    append = out.append
    unpack = _PREFIX.unpack_from
    size = len(buf)
    stop = min(stop, size - RECORD_OVERHEAD + 1)
    for seq in range(first_seq, last_seq + 1):
        if pos >= stop:
            break
        length, record_seq, timestamp_ms = unpack(buf, pos)
        end = pos + length
        if record_seq != seq or not RECORD_OVERHEAD <= length <= max_record_bytes or end > size:
            break
        checked = buf[pos + 4 : end]  # everything the CRC covers, and the CRC
        if crc64_direct(checked, 0) != CRC_RESIDUE:
            break
        append(_new_tuple(Record, (seq, timestamp_ms, checked[_PAYLOAD], path, base + pos, archived)))
        pos = end
    return out, pos


try:  # the same loop in C (wal/_scan.c), four times as fast; this module's version is the reference
    from ._scan import parse_intact as _native_parse_intact
except ImportError:  # not compiled at install time (no C compiler)
    _native_parse_intact = None

native = _native_parse_intact is not None

if _native_parse_intact is not None:
    _native = _native_parse_intact

    def parse_intact(
        buf: bytes,
        pos: int,
        first_seq: int,
        last_seq: int,
        stop: int,
        max_record_bytes: int,
        path: str,
        archived: bool,
        base: int,
    ) -> tuple[list[Record], int]:
        """`python_parse_intact`, in C: the same records, checked with the same CRC (wal._scan's)."""
        return _native(  # type: ignore[no-any-return]
            buf, pos, first_seq, last_seq, stop, max_record_bytes, path, archived, base, Record
        )

else:
    parse_intact = python_parse_intact


class ChunkReader:
    """A segment's data from `offset`, where `stream` is, up to `end` (None: while there is data)."""

    def __init__(
        self,
        stream: BinaryIO,
        offset: int,
        end: int | None,
        expected_seq: int,
        *,
        max_record_bytes: int,
        path: str,
        archived: bool,
        chunk_bytes: int = CHUNK_BYTES,
    ) -> None:
        self.end = end  # may move forward while reading: the bytes already read stay valid
        self.expected_seq = expected_seq  # the sequence the record at `offset` must carry
        self._stream = stream
        self._max_record_bytes = max_record_bytes
        self._path = path
        self._archived = archived
        self._chunk_bytes = chunk_bytes
        self._seekable = stream.seekable()
        self._buf = b""
        self._base = offset  # segment offset of _buf[0]
        self._pos = 0  # index in _buf of the next record

    @property
    def offset(self) -> int:
        """Segment offset of the next record."""
        return self._base + self._pos

    @property
    def at_end(self) -> bool:
        """Every byte read is consumed: after `read_intact` returned nothing, the data ends here."""
        return self._pos == len(self._buf)

    def read_intact(
        self, from_seq: int, max_records: int, max_bytes: int, last_seq: int
    ) -> tuple[list[Record], int]:
        """The next intact records in sequence: at most `max_records`, none after `last_seq`, and
        no more once `max_bytes` are returned. Records before `from_seq` are checked and passed over.

        Returns the records and their size in bytes. No records means the end of the data (see
        `at_end`) or a record that only scan_rest can judge.
        """
        if self.expected_seq < from_seq:
            self._read(from_seq - 1, 1 << 62)
            if self.expected_seq < from_seq:
                return [], 0
        start = self.offset
        records = self._read(min(last_seq, self.expected_seq + max_records - 1), max_bytes)
        return records, self.offset - start

    def scan_rest(self) -> Iterator[RawRecord | Damage]:
        """scan_records from the next record on: the bytes already read, then the stream's."""
        return scan_records(
            self._stream,
            start_offset=self.offset,
            end_offset=self.end,
            max_record_bytes=self._max_record_bytes,
            first_seq=self.expected_seq,
            chunk_bytes=self._chunk_bytes,
            buffered=self._buf[self._pos :],
        )

    def _read(self, last_seq: int, max_bytes: int) -> list[Record]:
        out: list[Record] = []
        stop = self.offset + max_bytes
        while True:
            records, self._pos = parse_intact(
                self._buf,
                self._pos,
                self.expected_seq,
                last_seq,
                stop - self._base,
                self._max_record_bytes,
                self._path,
                self._archived,
                self._base,
            )
            if records:
                out += records
                self.expected_seq += len(records)
            if self.expected_seq > last_seq or self.offset >= stop or not self._fill():
                return out

    def _fill(self) -> bool:
        """Read more when the next record is not whole yet; False when more data would not help
        (the record is whole, or its length is out of range) or there is none."""
        buf, pos = self._buf, self._pos
        have = len(buf) - pos
        need = RECORD_OVERHEAD
        if have >= RECORD_OVERHEAD:
            need = LENGTH.unpack_from(buf, pos)[0]
            if not have < need <= self._max_record_bytes:
                return False
        offset = self._base + pos
        if have and self._seekable:
            # Read the unread part again with the next chunk rather than copy the chunk behind it
            # (the stream is where the buffer ends).
            self._stream.seek(-have, os.SEEK_CUR)
            data = self._read_upto(offset, max(self._chunk_bytes, need))
            self._buf, self._base, self._pos = data, offset, 0
            return len(data) > have
        data = self._read_upto(offset + have, max(self._chunk_bytes, need - have))
        if not data:
            return False
        # Payloads are sliced out as bytes of their own, so the old chunk is freed, not pinned.
        self._buf, self._base, self._pos = buf[pos:] + data if have else data, offset, 0
        return True

    def _read_upto(self, offset: int, size: int) -> bytes:
        """At most `size` bytes from the stream, which is at `offset`, and none past `end`."""
        if self.end is not None:
            size = min(size, self.end - offset)
        return self._stream.read(size) if size > 0 else b""
