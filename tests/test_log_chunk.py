"""The chunked read path (wal/chunk.py) against scan_records, the reference it must agree with.

`ChunkReader` turns runs of intact records into `Record`s in one loop and hands anything else to
scan_records; read that way, a segment must give exactly the records and damage scan_records gives
reading it whole, whatever the chunk size, batch limits, seekability or damage.
"""

from __future__ import annotations

import io
import os
import struct
from typing import NamedTuple

from hypothesis import given, settings
from hypothesis import strategies as st

import wal
from tests.corruption import flip_byte, overwrite, truncate_at
from tests.test_scan import CHUNK_SIZES, MAX_RECORD_BYTES, build_segment, scan
from wal import chunk
from wal.chunk import ChunkReader, Record, parse_intact
from wal.format import (
    CRC,
    CRC_RESIDUE,
    HEADER_SIZE,
    RECORD_OVERHEAD,
    crc64,
    crc64_direct,
    crcmod_crc64,
    encode_header,
    encode_record,
)
from wal.layout import parse_first_seq, segment_name
from wal.scan import CHUNK_BYTES, Damage, RawRecord
from wal.segment import iter_segment

# An item either way, comparable: (seq, timestamp_ms, payload, offset, length) or a Damage.
Item = tuple[int, int, bytes, int, int] | Damage

DAMAGE_KINDS = ["none", "flip", "truncate", "end_offset", "length", "jump", "repeat", "garbage"]


class CheckedStream:
    """Segment bytes that remember the largest read asked for; one-way ones read forwards only,
    in short reads, as from a zstd archive."""

    def __init__(self, data: bytes, seekable: bool) -> None:
        self._source = io.BytesIO(data)
        self._seekable = seekable
        self.largest_read = 0

    def seekable(self) -> bool:
        return self._seekable

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        assert self._seekable
        return self._source.seek(offset, whence)

    def read(self, size: int) -> bytes:
        self.largest_read = max(self.largest_read, size)
        return self._source.read(size if self._seekable else min(size, 100))


def as_item(item: RawRecord | Damage | Record) -> Item:
    if isinstance(item, Damage):
        return item
    return (item.seq, item.timestamp_ms, item.payload, item.offset, RECORD_OVERHEAD + len(item.payload))


class Segment(NamedTuple):
    data: bytes
    first_seq: int  # the sequence its name gives
    end_offset: int | None  # its durable end, when it is still being written


@st.composite
def segments(draw: st.DrawFn) -> Segment:
    """A segment of records numbered from its first sequence, maybe damaged one way, and maybe
    with a durable end before its last byte."""
    first_seq = draw(st.sampled_from([1, 4, 2**40]), label="first_seq")
    sizes = st.integers(0, 300)  # evenly spread, so records above a small max_record_bytes are common
    payloads = draw(
        st.lists(sizes.flatmap(lambda n: st.binary(min_size=n, max_size=n)), min_size=1, max_size=12)
    )
    kind = draw(st.sampled_from(DAMAGE_KINDS), label="kind")
    at = draw(st.integers(0, len(payloads) - 1), label="at")
    seqs = list(range(first_seq, first_seq + len(payloads)))
    if kind == "jump":
        seqs = [s + (5 if i >= at else 0) for i, s in enumerate(seqs)]
    elif kind == "repeat" and at > 0:
        seqs = [*seqs[:at], seqs[at - 1], *seqs[at:-1]]  # repeats one, then goes on
    segment, written = build_segment(payloads, seqs)
    end_offset = None
    anywhere = st.integers(HEADER_SIZE, len(segment) - 1)
    if kind == "flip":
        segment = flip_byte(segment, draw(anywhere, label="offset"), draw(st.integers(1, 255), label="mask"))
    elif kind == "truncate":
        segment = truncate_at(segment, draw(anywhere, label="cut"))
    elif kind == "end_offset":
        end_offset = draw(anywhere, label="end_offset")
    elif kind == "length":
        length = draw(st.sampled_from([0, 5, RECORD_OVERHEAD - 1, MAX_RECORD_BYTES + 1, 0xFFFFFFFF]))
        segment = overwrite(segment, written[at].offset, struct.pack("<I", length))
    elif kind == "garbage":
        garbage = draw(st.binary(min_size=1, max_size=64), label="garbage")
        offset = written[at].offset
        segment = segment[:offset] + garbage + segment[offset:]
    return Segment(segment, first_seq, end_offset)


def read_in_chunks(
    segment: Segment,
    *,
    from_seq: int,
    max_record_bytes: int,
    chunk_bytes: int,
    seekable: bool,
    max_records: int,
    max_bytes: int,
) -> list[Item]:
    """Read as SegmentWalker does: read_intact while it returns records, then scan_rest."""
    stream = CheckedStream(segment.data, seekable)
    stream.read(HEADER_SIZE)
    reader = ChunkReader(
        stream,  # type: ignore[arg-type]
        HEADER_SIZE,
        segment.end_offset,
        segment.first_seq,
        max_record_bytes=max_record_bytes,
        path="segment",
        archived=False,
        chunk_bytes=chunk_bytes,
    )
    items: list[Item] = []
    next_seq, stopped_early = from_seq, False
    while True:
        records, size = reader.read_intact(next_seq, max_records, max_bytes, 1 << 62)
        if not records:
            break
        assert not stopped_early, "a call returned less than it could"
        lengths = [item[4] for item in map(as_item, records)]  # type: ignore[index]
        assert size == sum(lengths) == reader.offset - records[0].offset
        assert records[0].seq >= next_seq and len(records) <= max_records and size - lengths[-1] < max_bytes
        stopped_early = len(records) < max_records and size < max_bytes
        items += map(as_item, records)
        next_seq = records[-1].seq + 1
    if not reader.at_end:
        items += [
            as_item(item)
            for item in reader.scan_rest()
            if not (isinstance(item, RawRecord) and item.seq < from_seq)
        ]
    assert stream.largest_read <= max(chunk_bytes, max_record_bytes, RECORD_OVERHEAD), (
        "an absurd length was read"
    )
    return items


@settings(max_examples=400, deadline=None)
@given(
    segment=segments(),
    from_seq=st.integers(1, 8),  # before, at or inside the segment
    max_record_bytes=st.sampled_from([MAX_RECORD_BYTES, 100]),
    chunk_bytes=st.sampled_from(CHUNK_SIZES),
    seekable=st.booleans(),
    max_records=st.integers(1, 20),
    max_bytes=st.sampled_from([1, 40, 333, 1 << 62]),
)
def test_reading_in_chunks_gives_what_scan_records_gives(
    segment: Segment,
    from_seq: int,
    max_record_bytes: int,
    chunk_bytes: int,
    seekable: bool,
    max_records: int,
    max_bytes: int,
) -> None:
    items = scan(
        segment.data,
        first_seq=segment.first_seq,
        end_offset=segment.end_offset,
        max_record_bytes=max_record_bytes,
    )
    expected = [as_item(item) for item in items if not (isinstance(item, RawRecord) and item.seq < from_seq)]
    got = read_in_chunks(
        segment,
        from_seq=from_seq,
        max_record_bytes=max_record_bytes,
        chunk_bytes=chunk_bytes,
        seekable=seekable,
        max_records=max_records,
        max_bytes=max_bytes,
    )
    assert got == expected


@settings(max_examples=200, deadline=None)
@given(
    segment=segments(),
    first_seq_shift=st.integers(-1, 1),
    max_record_bytes=st.sampled_from([MAX_RECORD_BYTES, 100]),
)
def test_parse_intact_returns_the_records_scan_records_yields_before_anything_else(
    segment: Segment, first_seq_shift: int, max_record_bytes: int
) -> None:
    data = segment.data[: segment.end_offset]
    first_seq = segment.first_seq + first_seq_shift
    items = scan(data, first_seq=first_seq, max_record_bytes=max_record_bytes)
    leading = 0
    while leading < len(items) and isinstance(items[leading], RawRecord):
        leading += 1
    records, pos = parse_intact(
        data[HEADER_SIZE:], 0, first_seq, 1 << 62, 1 << 62, max_record_bytes, "p", True, HEADER_SIZE
    )
    assert [as_item(r) for r in records] == [as_item(item) for item in items[:leading]]
    assert all(r.path == "p" and r.archived is True for r in records)
    stopped_at = items[leading].offset if leading < len(items) else len(data)
    assert pos + HEADER_SIZE == stopped_at


def test_parse_intact_stops_at_the_sequence_and_byte_limits() -> None:
    data = b"".join(encode_record(seq, 1000 + seq, b"%d" % seq) for seq in range(1, 11))
    size = RECORD_OVERHEAD + 1
    args = (MAX_RECORD_BYTES, "p", False, HEADER_SIZE)
    records, pos = parse_intact(data, 0, 1, 4, len(data), *args)
    assert [r.seq for r in records] == [1, 2, 3, 4] and pos == 4 * size
    # a record is returned when it starts before `stop`, so the bytes limit is never a hard cut
    records, pos = parse_intact(data, 0, 1, 10, 2 * size + 1, *args)
    assert [r.seq for r in records] == [1, 2, 3] and pos == 3 * size
    records, pos = parse_intact(data, size, 2, 10, len(data), *args)
    assert records[0] == Record(2, 1002, b"2", "p", HEADER_SIZE + size, False)
    assert parse_intact(data, size, 3, 10, len(data), *args) == ([], size), "record 2 is not 3"


def test_a_length_below_the_minimum_is_damage_even_where_the_crc_would_pass() -> None:
    # Length 20 puts the "CRC" over the status, reserved and timestamp bytes: make them the CRC
    # of the sequence number, so only the length check can tell that this is no record.
    seq_bytes = struct.pack("<q", 1)
    fake = struct.pack("<I", 20) + seq_bytes + CRC.pack(crc64(seq_bytes))
    data = encode_header() + fake + encode_record(2, 0, b"after")
    assert crc64(fake[4:]) == CRC_RESIDUE
    (damage, record) = scan(data, first_seq=1)
    assert isinstance(damage, Damage) and "below the 32-byte minimum" in damage.reason
    assert parse_intact(data, HEADER_SIZE, 1, 10, len(data), MAX_RECORD_BYTES, "p", False, 0) == ([], 16)
    got = read_in_chunks(
        Segment(data, 1, None),
        from_seq=1,
        max_record_bytes=MAX_RECORD_BYTES,
        chunk_bytes=CHUNK_BYTES,
        seekable=True,
        max_records=10,
        max_bytes=1 << 62,
    )
    assert got == [damage, as_item(record)]


@given(st.binary(max_size=5000), st.integers(1, 2**64 - 1))
def test_a_record_is_intact_exactly_when_its_checked_bytes_give_the_residue(data: bytes, error: int) -> None:
    crc = crcmod_crc64(data)
    assert crc64(data) == crc64_direct(data, 0) == crc
    assert crc64_direct(data[7:], crc64_direct(data[:7], 0)) == crc
    assert crc64(data + CRC.pack(crc)) == crcmod_crc64(data + CRC.pack(crc)) == CRC_RESIDUE
    assert crc64(data + CRC.pack(crc ^ error)) != CRC_RESIDUE


def test_tails_from_anywhere_read_archives_sealed_and_live_segments_around_damage(open_log, log_dir) -> None:
    log = open_log(segment_bytes=2048, auto_archive=False, fsync="never")
    appended = [os.urandom(1 + seq % 97) for seq in range(1, 321)]
    log.append_batch(appended[:150])
    assert log.archive()
    log.append_batch(appended[150:])
    wal_dir = os.path.join(log_dir, "wal")
    live = sorted(os.listdir(wal_dir))
    first_live = parse_first_seq(live[0])
    assert first_live is not None and 1 < first_live <= 150, "some segments are archived"
    victim = os.path.join(wal_dir, live[-3])  # a sealed, unarchived segment
    hit = [item for item in iter_segment(victim) if isinstance(item, RawRecord)][1]
    flip_byte(victim, hit.offset + 24)  # the record's first payload byte: only the CRC can tell

    for from_seq, max_records in [(1, 7), (2, 1000), (hit.seq, 3), (hit.seq + 1, 1), (200, 50), (319, 5)]:
        tail = log.tail(from_seq)
        got: list[wal.Record] = []
        while True:
            batch, payload_bytes = tail.next_batch_sized(max_records, timeout_s=0)
            if not batch:
                break
            assert len(batch) <= max_records
            assert payload_bytes == sum(len(record.payload) for record in batch)
            got += batch
        tail.close()
        assert [r.seq for r in got] == [seq for seq in range(from_seq, 321) if seq != hit.seq]
        assert all(r.payload == appended[r.seq - 1] for r in got)
        assert [(r.archived, r.path.endswith(".wal.zst")) for r in got] == [
            (r.seq < first_live, r.seq < first_live) for r in got
        ]
    (report,) = log.damage
    assert (report.path, report.offset, report.end_offset) == (victim, hit.offset, hit.offset + hit.length)
    assert report.records_skipped == 1 and "CRC" in report.reason


def test_a_read_from_before_the_first_segment_starts_at_its_first_record(log_dir) -> None:
    # Found by the logdir fuzz target: a log whose only segment starts at sequence 1000000 read
    # from 1 returned nothing, because the batch limit was counted from 1.
    os.makedirs(os.path.join(log_dir, "wal"))
    with open(os.path.join(log_dir, "wal", segment_name(1_000_000)), "wb") as handle:
        handle.write(encode_header())
    with wal.open(log_dir, fsync="never", auto_archive=False, min_free_bytes=0) as log:
        assert log.append_batch([b"a", b"b"]) == [1_000_000, 1_000_001]
        assert [(r.seq, r.payload) for r in log.read(1)] == [(1_000_000, b"a"), (1_000_001, b"b")]
        tail = log.tail(1)
        assert [r.seq for r in tail.next_batch(1, timeout_s=0)] == [1_000_000]
        tail.close()


def test_the_c_loop_is_built_here() -> None:
    assert chunk.native, "wal._scan was not compiled: `make install` builds it (needs gcc and Python headers)"


@settings(max_examples=300, deadline=None)
@given(
    segment=segments(),
    first_seq_shift=st.integers(-1, 1),
    max_record_bytes=st.sampled_from([MAX_RECORD_BYTES, 100]),
    start=st.integers(0, 200),
    stop=st.integers(0, 1 << 16),
    count=st.integers(0, 50),
)
def test_the_c_loop_gives_what_the_python_reference_gives(
    segment: Segment, first_seq_shift: int, max_record_bytes: int, start: int, stop: int, count: int
) -> None:
    data = segment.data[HEADER_SIZE : segment.end_offset]
    first_seq = segment.first_seq + first_seq_shift
    for pos in (0, min(start, len(data))):  # from a record's start, and from anywhere
        args = (data, pos, first_seq, first_seq + count, stop, max_record_bytes, "seg", False, 16)
        native = parse_intact(*args)
        assert native == chunk.python_parse_intact(*args)
        assert all(type(record) is Record for record in native[0])


@settings(max_examples=200, deadline=None)
@given(
    payloads=st.lists(st.binary(max_size=300), max_size=20),
    first_seq=st.integers(1, 2**62),
    timestamp_ms=st.integers(0, 2**62),
    used=st.integers(0, 40),
)
def test_records_framed_in_c_are_the_records_encode_record_makes(
    payloads: list[bytes], first_seq: int, timestamp_ms: int, used: int
) -> None:
    from wal import pending

    assert pending._frame_into is not None, "wal._scan was not compiled"
    queue = pending.PendingRecords()
    queue.buffer[:used] = b"x" * used
    queue.used = used
    size = sum(RECORD_OVERHEAD + len(p) for p in payloads)
    queue.add_batch(payloads, first_seq, timestamp_ms, size)
    expected = b"".join(encode_record(first_seq + i, timestamp_ms, p) for i, p in enumerate(payloads))
    assert bytes(queue.buffer[: queue.used]) == b"x" * used + expected
    assert queue.count == len(payloads)
