"""Reading segments back: golden files, and properties of the scanner under cuts and corruption."""

from __future__ import annotations

import contextlib
import io
import json
import signal
import struct
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.testdata import make_testdata
from wal.format import HEADER_SIZE, RECORD_OVERHEAD, STATUS_PENDING, encode_header, encode_record
from wal.scan import CHUNK_BYTES, Damage, RawRecord, scan_records
from wal.segment import iter_segment

from .corruption import flip_byte, overwrite, truncate_at

TESTDATA = Path(__file__).resolve().parent / "testdata"
EXPECTED = json.loads((TESTDATA / "expected.json").read_text())
GOLDEN_FILES = sorted(EXPECTED["files"])

BASE_TIMESTAMP_MS = 1_700_000_000_000
# The default limit: a loose bound lets more byte patterns pass as record candidates during resync.
MAX_RECORD_BYTES = 16 * 1024 * 1024
# Chunk sizes that force window refills in the middle of records and headers.
CHUNK_SIZES = [7, 16, 33, 64, 1000, CHUNK_BYTES]

payload_lists = st.lists(st.binary(max_size=300), min_size=1, max_size=12)
property_settings = settings(max_examples=150, deadline=None)


def build_segment(
    payloads: Sequence[bytes], seqs: Sequence[int] | None = None
) -> tuple[bytes, list[RawRecord]]:
    """A segment holding `payloads` (sequences 1, 2, ... unless given) and the records as written."""
    seqs = list(seqs) if seqs is not None else list(range(1, len(payloads) + 1))
    data = bytearray(encode_header())
    written = []
    for seq, payload in zip(seqs, payloads, strict=True):
        record = encode_record(seq, BASE_TIMESTAMP_MS + seq, payload)
        written.append(
            RawRecord(seq, BASE_TIMESTAMP_MS + seq, STATUS_PENDING, payload, len(data), len(record))
        )
        data += record
    return bytes(data), written


def scan(data: bytes, **options: object) -> list[RawRecord | Damage]:
    """Every item scan_records yields for a whole segment held in memory."""
    stream = io.BytesIO(data)
    stream.seek(HEADER_SIZE)
    options.setdefault("max_record_bytes", MAX_RECORD_BYTES)
    return list(scan_records(stream, **options))  # type: ignore[arg-type]


def records_in(items: Sequence[RawRecord | Damage]) -> list[RawRecord]:
    return [item for item in items if isinstance(item, RawRecord)]


def damages_in(items: Sequence[RawRecord | Damage]) -> list[Damage]:
    return [item for item in items if isinstance(item, Damage)]


def as_expected(items: Sequence[RawRecord | Damage]) -> tuple[list[int], list[dict[str, object]], list[dict]]:
    """The items in expected.json's terms: sequences, records by sequence, and damages."""
    records = [
        {
            "seq": r.seq,
            "timestamp_ms": r.timestamp_ms,
            "payload": r.payload.hex(),
            "offset": r.offset,
            "length": r.length,
        }
        for r in records_in(items)
    ]
    damages = [
        {
            "offset": d.offset,
            "end_offset": d.end_offset,
            "at_end": d.at_end,
            "records_skipped": d.records_skipped,
        }
        for d in damages_in(items)
    ]
    return [r["seq"] for r in records], records, damages  # type: ignore[misc]


def check_golden(name: str, items: list[RawRecord | Damage]) -> None:
    expected = EXPECTED["files"][name]
    seqs, records, damages = as_expected(items)
    assert seqs == expected["seqs"]
    assert records == [EXPECTED["records"][seq - 1] for seq in expected["seqs"]]
    assert all(r.status == STATUS_PENDING for r in records_in(items))
    assert damages == expected["damages"]
    offsets = [item.offset for item in items]
    assert offsets == sorted(offsets), "items must come in file order"


# --- golden files ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", GOLDEN_FILES)
@pytest.mark.parametrize("first_seq", [None, 1])
def test_golden_file_through_iter_segment(name: str, first_seq: int | None) -> None:
    check_golden(name, list(iter_segment(str(TESTDATA / name), first_seq=first_seq)))


@pytest.mark.parametrize("name", GOLDEN_FILES)
def test_golden_file_through_scan_records(name: str) -> None:
    with contextlib.ExitStack() as stack:
        stream = stack.enter_context(open(TESTDATA / name, "rb"))
        if name.endswith(".zst"):
            stream = stack.enter_context(zstandard.ZstdDecompressor().stream_reader(stream))
        assert stream.read(HEADER_SIZE) == encode_header()
        check_golden(name, list(scan_records(stream, first_seq=1)))


def test_archive_decompresses_to_the_segment_byte_for_byte() -> None:
    archive = (TESTDATA / "clean.wal.zst").read_bytes()
    assert zstandard.ZstdDecompressor().decompress(archive) == (TESTDATA / "clean.wal").read_bytes()
    assert zstandard.get_frame_parameters(archive).has_checksum


def test_golden_files_are_what_make_testdata_builds() -> None:
    built = make_testdata.build()
    assert sorted(built) == sorted([*GOLDEN_FILES, "expected.json"])
    for name, data in built.items():
        on_disk = (TESTDATA / name).read_bytes()
        if name.endswith(".zst"):  # zstd output may change with the library; the content may not
            data, on_disk = (zstandard.ZstdDecompressor().decompress(blob) for blob in (data, on_disk))
        assert data == on_disk, f"{name} differs from what make_testdata.py builds; rerun it"


# --- properties --------------------------------------------------------------------------------


@property_settings
@given(
    payloads=st.lists(st.binary(max_size=300), max_size=15),
    chunk_bytes=st.sampled_from(CHUNK_SIZES),
    first_seq=st.integers(min_value=1, max_value=2**62),
)
def test_round_trip(payloads: list[bytes], chunk_bytes: int, first_seq: int) -> None:
    seqs = range(first_seq, first_seq + len(payloads))
    data, written = build_segment(payloads, seqs)
    assert scan(data, chunk_bytes=chunk_bytes, first_seq=first_seq) == written
    assert scan(data, chunk_bytes=chunk_bytes) == written


@property_settings
@given(payloads=payload_lists, data=st.data(), how=st.sampled_from(["truncate", "end_offset"]))
def test_a_cut_anywhere_keeps_every_complete_record(
    payloads: list[bytes], data: st.DataObject, how: str
) -> None:
    segment, written = build_segment(payloads)
    cut = data.draw(st.integers(min_value=HEADER_SIZE, max_value=len(segment)), label="cut")
    chunk = data.draw(st.sampled_from(CHUNK_SIZES), label="chunk_bytes")
    if how == "truncate":
        items = scan(truncate_at(segment, cut), first_seq=1, chunk_bytes=chunk)
    else:  # a segment still being written, read up to its durable end
        items = scan(segment, end_offset=cut, first_seq=1, chunk_bytes=chunk)

    complete = [r for r in written if r.offset + r.length <= cut]
    assert records_in(items) == complete
    boundary = complete[-1].offset + complete[-1].length if complete else HEADER_SIZE
    if cut == boundary:
        assert damages_in(items) == []
    else:
        last_seq = complete[-1].seq if complete else 0
        assert damages_in(items) == [Damage(boundary, cut, items[-1].reason, True, last_seq, None)]  # type: ignore[union-attr]


@property_settings
@given(payloads=payload_lists, data=st.data())
def test_a_flipped_byte_loses_only_its_record(payloads: list[bytes], data: st.DataObject) -> None:
    segment, written = build_segment(payloads)
    offset = data.draw(st.integers(min_value=HEADER_SIZE, max_value=len(segment) - 1), label="offset")
    mask = data.draw(st.integers(min_value=1, max_value=255), label="mask")
    chunk = data.draw(st.sampled_from(CHUNK_SIZES), label="chunk_bytes")
    items = scan(flip_byte(segment, offset, mask), first_seq=1, chunk_bytes=chunk)

    hit = next(r for r in written if r.offset <= offset < r.offset + r.length)
    assert records_in(items) == [r for r in written if r is not hit]
    is_last = hit is written[-1]
    (damage,) = damages_in(items)
    assert (damage.offset, damage.end_offset, damage.at_end) == (hit.offset, hit.offset + hit.length, is_last)
    assert damage.last_seq_before == hit.seq - 1
    assert damage.next_seq_after == (None if is_last else hit.seq + 1)


ABSURD_LENGTHS = {
    "all-ones": 0xFFFFFFFF,
    "zero": 0,
    "five": 5,
    "one-below-minimum": RECORD_OVERHEAD - 1,
    "one-above-max": MAX_RECORD_BYTES + 1,
    "past-end-of-file": MAX_RECORD_BYTES,
}


@pytest.mark.parametrize("length", ABSURD_LENGTHS.values(), ids=ABSURD_LENGTHS.keys())
@pytest.mark.parametrize("victim", [0, 2, 4])
@pytest.mark.parametrize("chunk_bytes", [33, CHUNK_BYTES])
def test_an_absurd_length_is_damage_not_an_allocation(
    tmp_path: Path, length: int, victim: int, chunk_bytes: int
) -> None:
    payloads = [b"record-%03d" % i for i in range(5)]
    segment, written = build_segment(payloads)
    path = tmp_path / "00000000000000000001.wal"
    path.write_bytes(segment)
    overwrite(path, written[victim].offset, struct.pack("<I", length))

    with open(path, "rb") as stream:
        stream.seek(HEADER_SIZE)
        items = list(scan_records(stream, max_record_bytes=MAX_RECORD_BYTES, chunk_bytes=chunk_bytes))
    hit = written[victim]
    assert records_in(items) == [r for r in written if r is not hit]
    (damage,) = damages_in(items)
    assert (damage.offset, damage.end_offset) == (hit.offset, hit.offset + hit.length)
    assert damage.at_end == (hit is written[-1])

    # The default bound (16 MiB) holds for a real reader too: no multi-gigabyte read is attempted.
    assert damages_in(iter_segment(str(path))) != []


@property_settings
@given(
    payloads=st.lists(st.binary(max_size=40), min_size=2, max_size=8),
    data=st.data(),
    first_seq=st.integers(min_value=1, max_value=2**40),
)
def test_a_sequence_jump_is_reported(payloads: list[bytes], data: st.DataObject, first_seq: int) -> None:
    at = data.draw(st.integers(min_value=0, max_value=len(payloads) - 1), label="at")
    gap = data.draw(st.integers(min_value=1, max_value=1000), label="gap")
    seqs = [first_seq + i + (gap if i >= at else 0) for i in range(len(payloads))]
    segment, written = build_segment(payloads, seqs)

    items = scan(segment, first_seq=first_seq)
    assert records_in(items) == written, "a jump loses nothing: every record is intact"
    (damage,) = damages_in(items)
    jumped = written[at]
    assert (damage.offset, damage.end_offset, damage.at_end) == (jumped.offset, jumped.offset, False)
    assert (damage.last_seq_before, damage.next_seq_after) == (jumped.seq - gap - 1, jumped.seq)
    assert damage.records_skipped == gap
    assert items.index(damage) == items.index(jumped) - 1, "the jump is reported just before the record"


@pytest.mark.parametrize("repeat", [2, 1], ids=["repeated", "going-back"])
def test_a_sequence_that_does_not_increase_is_damage(repeat: int) -> None:
    segment, written = build_segment([b"a", b"b", b"c", b"d"], seqs=[1, 2, repeat, 3])
    items = scan(segment, first_seq=1)
    assert [r.seq for r in records_in(items)] == [1, 2, 3]
    (damage,) = damages_in(items)
    assert (damage.offset, damage.end_offset, damage.records_skipped) == (
        written[2].offset,
        written[3].offset,
        0,
    )
    assert "does not follow" in damage.reason


# --- regressions: torn candidates and small windows once crashed or hung the resync ---------------


@contextlib.contextmanager
def deadline(seconds: int) -> Iterator[None]:
    """Turn a hang into a TimeoutError (SIGALRM interrupts a pure-Python loop)."""

    def expire(signum: int, frame: object) -> None:
        raise TimeoutError(f"no result after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@pytest.mark.parametrize("cut_into", range(25, 33))
def test_torn_record_whose_payload_starts_with_zero(cut_into: int) -> None:
    # Bytes 9..24 of such a record look like a record start (length 0x01000000 = 16 MiB, status 1,
    # zero reserved bytes) with fewer than 24 bytes left after it.
    segment, written = build_segment([b"record-001", b"\x00abc"])
    items = scan(truncate_at(segment, written[1].offset + cut_into), max_record_bytes=16 * 1024 * 1024)
    assert records_in(items) == written[:1]


@pytest.mark.parametrize("chunk_bytes", [7, 15, 16, 24])
def test_resync_with_a_small_window(chunk_bytes: int) -> None:
    # Windows smaller than a record prefix must still make progress and never read past the data.
    segment, written = build_segment([b"record-%03d" % i for i in range(1, 6)])
    with deadline(2):
        items = scan(flip_byte(segment, written[1].offset + 30), chunk_bytes=chunk_bytes)
    assert records_in(items) == [r for r in written if r is not written[1]]
