"""Turn a stream of segment bytes into records and damage reports, resynchronising after damage.

The scanner reads through a sliding window, so memory stays at about one chunk plus one record
whatever the file size, and works on anything with `read()`: a segment file or a zstd stream.

On damage it never gives up on the rest of the file: it looks for the next offset where a
plausible record starts (a sane length, a non-zero status, zero reserved bytes, a sequence after
the last good one) and whose CRC checks, reports the region in between, and carries on there.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO, NamedTuple

from .format import CRC, HEADER_SIZE, LENGTH, RECORD_OVERHEAD, RECORD_PREFIX, MiB, crc64

DEFAULT_MAX_RECORD_BYTES = 16 * MiB
CHUNK_BYTES = 1 * MiB

# A record prefix: 4 length bytes, 8 sequence bytes, a non-zero status and 3 zero reserved bytes.
_CANDIDATE = re.compile(rb"(?=[\s\S]{12}[^\x00]\x00\x00\x00)")


class RawRecord(NamedTuple):
    """One intact record and where it sits in its file."""

    seq: int
    timestamp_ms: int
    status: int
    payload: bytes
    offset: int
    length: int


@dataclass(frozen=True)
class Damage:
    """A byte range that holds no intact record, or a jump in sequence numbers."""

    offset: int  # first byte that is not part of an intact record
    end_offset: int  # where the next intact record starts, or the end of the data
    reason: str
    at_end: bool  # the damage runs to the end of the data (a torn tail, in a log's last segment)
    last_seq_before: int | None  # sequence of the intact record before, if any
    next_seq_after: int | None  # sequence of the intact record after, if any

    @property
    def records_skipped(self) -> int | None:
        """How many sequence numbers the damage swallowed, when both neighbours are known."""
        if self.last_seq_before is None or self.next_seq_after is None:
            return None
        return self.next_seq_after - self.last_seq_before - 1

    @property
    def bytes_lost(self) -> int:
        return self.end_offset - self.offset


class _Window:
    """A bytearray over part of a stream; `base` is the stream offset of buf[0]."""

    __slots__ = ("base", "buf", "chunk", "end", "eof", "stream")

    def __init__(self, stream: BinaryIO, base: int, end: int | None, chunk: int, buffered: bytes) -> None:
        self.stream = stream
        self.base = base
        self.end = end
        self.chunk = chunk
        self.buf = bytearray(buffered)
        self.eof = False

    def fill(self, upto: int) -> int:
        """Read until the window reaches offset `upto` or the data ends; return the window's end."""
        have = self.base + len(self.buf)
        while have < upto and not self.eof:
            want = max(self.chunk, upto - have)
            if self.end is not None:
                want = min(want, self.end - have)
            data = self.stream.read(want) if want > 0 else b""
            if not data:
                self.eof = True
                break
            self.buf += data
            have += len(data)
        return have

    def drop_before(self, offset: int) -> None:
        """Forget bytes before `offset` (deleting from a bytearray's front is cheap in CPython)."""
        if offset > self.base:
            del self.buf[: offset - self.base]
            self.base = offset


def scan_records(
    stream: BinaryIO,
    *,
    start_offset: int = HEADER_SIZE,
    end_offset: int | None = None,
    max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES,
    first_seq: int | None = None,
    chunk_bytes: int = CHUNK_BYTES,
    buffered: bytes = b"",
) -> Iterator[RawRecord | Damage]:
    """Yield every intact record and every damaged region from `stream`, in file order.

    The data starts at file offset `start_offset` with the bytes `buffered` (already read from
    `stream`), then `stream`'s; reading stops at `end_offset` when given (the durable end of a
    segment still being written). With `first_seq`, records must carry contiguous sequence
    numbers from it, and a jump is reported as Damage.
    """
    window = _Window(stream, start_offset, end_offset, chunk_bytes, buffered)
    pos = start_offset
    expected = first_seq
    last_seq: int | None = None if first_seq is None else first_seq - 1
    unpack_length = LENGTH.unpack_from
    unpack_prefix = RECORD_PREFIX.unpack_from
    unpack_crc = CRC.unpack_from
    while True:
        if pos - window.base >= chunk_bytes:
            window.drop_before(pos)
        have = window.fill(pos + RECORD_OVERHEAD)
        if have == pos:
            return
        buf = window.buf
        rel = pos - window.base
        reason: str | None = None
        if have - pos < 4:
            reason = f"truncated record: {have - pos} bytes at the end, too short for a length field"
        else:
            length = unpack_length(buf, rel)[0]
            if length < RECORD_OVERHEAD:
                reason = f"length {length} is below the {RECORD_OVERHEAD}-byte minimum"
            elif length > max_record_bytes:
                reason = f"length {length} exceeds max_record_bytes {max_record_bytes}"
            else:
                if have < pos + length:
                    have = window.fill(pos + length)
                    buf = window.buf
                    rel = pos - window.base
                if have < pos + length:
                    reason = (
                        f"record of {length} bytes runs past the end of the data ({have - pos} bytes left)"
                    )
                else:
                    view = memoryview(buf)
                    stored = unpack_crc(view, rel + length - 8)[0]
                    computed = crc64(view[rel + 4 : rel + length - 8])
                    if stored != computed:
                        reason = f"CRC mismatch: stored {stored:#018x}, computed {computed:#018x}"
                    else:
                        _, seq, status, _reserved, timestamp_ms = unpack_prefix(view, rel)
                        if last_seq is not None and seq <= last_seq:
                            reason = f"sequence {seq} does not follow {last_seq}"
                        else:
                            payload = bytes(view[rel + 24 : rel + length - 8])
                            view.release()
                            if expected is not None and seq != expected:
                                yield Damage(
                                    pos, pos, f"sequence jumps from {last_seq} to {seq}", False, last_seq, seq
                                )
                            yield RawRecord(seq, timestamp_ms, status, payload, pos, length)
                            last_seq = seq
                            if expected is not None:
                                expected = seq + 1
                            pos += length
                            continue
                    view.release()
        found = _resync(window, pos + 1, last_seq, max_record_bytes)
        if found is None:
            yield Damage(pos, window.base + len(window.buf), reason, True, last_seq, None)
            return
        next_offset, next_seq = found
        yield Damage(pos, next_offset, reason, False, last_seq, next_seq)
        if expected is not None:
            expected = next_seq
        pos = next_offset


def _resync(
    window: _Window, start: int, last_seq: int | None, max_record_bytes: int
) -> tuple[int, int] | None:
    """Find the first offset >= start where an intact record begins; return (offset, seq)."""
    search_from = start
    while True:
        # Always ask for bytes beyond what a candidate prefix needs, so every pass makes progress.
        have = window.fill(search_from + max(window.chunk, RECORD_OVERHEAD))
        # search() rather than finditer(): checking a candidate may grow the buffer, which
        # an iterator holding the buffer would forbid.
        while (match := _CANDIDATE.search(window.buf, search_from - window.base)) is not None:
            candidate = window.base + match.start()
            del match
            found = _check_candidate(window, candidate, last_seq, max_record_bytes)
            if found is not None:
                return candidate, found
            search_from = candidate + 1
        have = window.base + len(window.buf)
        if window.eof:
            return None
        # Keep the last 15 bytes: a candidate prefix may straddle the refill.
        search_from = max(search_from, have - 15)
        window.drop_before(search_from)


def _check_candidate(window: _Window, offset: int, last_seq: int | None, max_record_bytes: int) -> int | None:
    """Return the record's sequence if an intact record starts at `offset`."""
    if window.fill(offset + RECORD_OVERHEAD) < offset + RECORD_OVERHEAD:
        return None
    rel = offset - window.base
    length = LENGTH.unpack_from(window.buf, rel)[0]
    if length < RECORD_OVERHEAD or length > max_record_bytes:
        return None
    seq = RECORD_PREFIX.unpack_from(window.buf, rel)[1]
    if seq < 1 or (last_seq is not None and seq <= last_seq):
        return None
    if window.fill(offset + length) < offset + length:
        return None
    rel = offset - window.base
    view = memoryview(window.buf)
    try:
        if CRC.unpack_from(view, rel + length - 8)[0] != crc64(view[rel + 4 : rel + length - 8]):
            return None
    finally:
        view.release()
    return seq
