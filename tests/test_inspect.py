"""wal.inspect: reports on segments and logs, verify, salvage and the annotated hexdump."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import zstandard

from tests.corruption import flip_byte, truncate_at, zero_range
from wal.errors import NotALog, WalError
from wal.format import HEADER_SIZE, SEGMENT_HEADER, encode_record
from wal.inspect import (
    format_timestamp_ms,
    hexdump,
    inspect_file,
    inspect_log,
    salvage,
    verify,
)
from wal.layout import archive_name, segment_name
from wal.scan import Damage, RawRecord, scan_records

BASE_MS = 1_700_000_000_000


def payload(seq: int) -> bytes:
    return b"payload-%03d" % seq  # 11 bytes: records of 43 bytes


def segment_bytes(first: int, last: int) -> bytes:
    return SEGMENT_HEADER + b"".join(
        encode_record(s, BASE_MS + s, payload(s)) for s in range(first, last + 1)
    )


def offset_of(seq: int, first: int = 1) -> int:
    return HEADER_SIZE + (seq - first) * (32 + len(payload(seq)))


def write(path, data: bytes) -> str:
    path.write_bytes(data)
    return str(path)


def archive(path, data: bytes) -> str:
    compressed = zstandard.ZstdCompressor(level=3, write_checksum=True).compress(data)
    return write(path, compressed)


@pytest.fixture
def clean(tmp_path) -> str:
    return write(tmp_path / segment_name(1), segment_bytes(1, 5))


def test_clean_segment_report(clean):
    report = inspect_file(clean)
    assert report.ok and report.header_ok and report.version == 1
    assert (report.record_count, report.first_seq, report.last_seq) == (5, 1, 5)
    assert (report.first_timestamp_ms, report.last_timestamp_ms) == (BASE_MS + 1, BASE_MS + 5)
    assert report.payload_bytes == 5 * 11
    assert report.file_bytes == report.uncompressed_bytes == os.path.getsize(clean)
    assert report.records is None
    json.dumps(report.to_dict())


def test_records_are_listed_on_request(clean):
    report = inspect_file(clean, with_records=True)
    assert [r.seq for r in report.records] == [1, 2, 3, 4, 5]
    assert report.records[1].payload == payload(2)
    assert (report.records[1].offset, report.records[1].length) == (offset_of(2), 43)
    assert report.to_dict()["record_list"][0]["payload_base64"]


def test_archive_report_gives_uncompressed_size(tmp_path):
    data = segment_bytes(1, 5)
    path = archive(tmp_path / archive_name(1), data)
    report = inspect_file(path)
    assert report.ok and report.archived and report.record_count == 5
    assert report.uncompressed_bytes == len(data)
    assert report.file_bytes == os.path.getsize(path)


def test_flipped_byte_in_the_middle(clean):
    flip_byte(clean, offset_of(3) + 26)  # a payload byte of record 3
    report = inspect_file(clean)
    assert not report.ok and report.record_count == 4
    (damage,) = report.damages
    assert (damage.offset, damage.end_offset) == (offset_of(3), offset_of(4))
    assert "CRC mismatch" in damage.reason
    assert damage.records_skipped == 1 and not damage.at_end


def test_torn_tail(clean):
    truncate_at(clean, offset_of(5) + 10)
    (damage,) = inspect_file(clean).damages
    assert damage.at_end and damage.offset == offset_of(5) and damage.records_skipped is None


def test_lost_first_record_is_counted_from_the_file_name(clean):
    zero_range(clean, offset_of(1), offset_of(2))
    report = inspect_file(clean)
    assert report.first_seq == 2
    (damage,) = report.damages
    assert damage.records_skipped == 1


def test_bad_header_is_reported_and_records_still_read(clean):
    flip_byte(clean, 0)
    report = inspect_file(clean)
    assert not report.header_ok and report.version is None and report.record_count == 5
    (damage,) = report.damages
    assert (damage.offset, damage.end_offset) == (0, HEADER_SIZE)
    assert "magic" in damage.reason


def test_not_a_segment_at_all(tmp_path):
    report = inspect_file(write(tmp_path / "notes.txt", b"hello"))
    assert not report.header_ok and report.record_count == 0 and report.damages[0].at_end


def test_truncated_archive_is_damage_not_an_exception(tmp_path):
    compressed = zstandard.ZstdCompressor(level=3, write_checksum=True).compress(segment_bytes(1, 50))
    path = write(tmp_path / archive_name(1), compressed[: len(compressed) // 2])
    report = inspect_file(path)
    assert not report.ok
    assert report.damages[-1].at_end


def test_unreadable_path_raises(tmp_path):
    with pytest.raises(FileNotFoundError):
        inspect_file(str(tmp_path / "missing.wal"))


def make_log(root, ranges: list[tuple[int, int]], archived: int = 0) -> None:
    """A log directory whose first `archived` segments are archives."""
    os.makedirs(root / "wal")
    os.makedirs(root / "archive")
    for index, (first, last) in enumerate(ranges):
        if index < archived:
            archive(root / "archive" / archive_name(first), segment_bytes(first, last))
        else:
            write(root / "wal" / segment_name(first), segment_bytes(first, last))


def test_log_report_spans_archives_and_live_segments(tmp_path):
    make_log(tmp_path, [(1, 3), (4, 6), (7, 9)], archived=2)
    report = inspect_log(str(tmp_path))
    assert report.ok and not report.gaps
    assert [s.archived for s in report.segments] == [True, True, False]
    assert (report.record_count, report.first_seq, report.last_seq) == (9, 1, 9)
    assert (report.first_timestamp_ms, report.last_timestamp_ms) == (BASE_MS + 1, BASE_MS + 9)
    json.dumps(report.to_dict())


def test_gap_between_segments_is_a_problem(tmp_path):
    make_log(tmp_path, [(1, 3), (7, 9)])
    report = inspect_log(str(tmp_path))
    assert not report.ok
    (gap,) = report.gaps
    assert (gap.last_seq, gap.next_seq, gap.records_missing) == (3, 7, 3)
    (damage,) = report.damages
    assert damage.file.endswith(segment_name(7)) and damage.records_skipped == 3
    assert not report.segments[0].damages


def test_plain_directory_of_segments(tmp_path):
    write(tmp_path / segment_name(1), segment_bytes(1, 2))
    archive(tmp_path / archive_name(3), segment_bytes(3, 4))
    report = inspect_log(str(tmp_path))
    assert report.ok and report.record_count == 4


def test_directory_without_segments_is_not_a_log(tmp_path):
    with pytest.raises(NotALog):
        inspect_log(str(tmp_path))
    with pytest.raises(FileNotFoundError):
        inspect_log(str(tmp_path / "missing"))


def test_verify_expands_directories(tmp_path, clean):
    log = tmp_path / "log"
    make_log(log, [(1, 3), (4, 6)])
    reports = verify([clean, str(log)])
    assert len(reports) == 3 and all(r.ok for r in reports)
    flip_byte(str(log / "wal" / segment_name(4)), offset_of(5, first=4) + 30)
    assert [r.ok for r in verify([clean, str(log)])] == [True, True, False]


def test_verify_checks_every_path_exists_first(tmp_path, clean):
    with pytest.raises(FileNotFoundError):
        verify([clean, str(tmp_path / "missing.wal")])


def scan_file(path: str) -> list[RawRecord | Damage]:
    with open(path, "rb") as handle:
        assert handle.read(HEADER_SIZE) == SEGMENT_HEADER
        return list(scan_records(handle))


@pytest.mark.parametrize("archived", [False, True])
def test_salvage_copies_every_intact_record(tmp_path, archived):
    data = bytearray(segment_bytes(1, 6))
    data[offset_of(3) + 26] ^= 0xFF  # record 3 fails its CRC
    data[0] ^= 0xFF  # and the header is bad
    src = archive(tmp_path / "src.wal.zst", bytes(data)) if archived else write(tmp_path / "src.wal", data)
    out = str(tmp_path / "out.wal")
    report = salvage(src, out)
    assert (report.records_recovered, report.first_seq, report.last_seq) == (5, 1, 6)
    assert report.records_lost == 1
    assert [d.offset for d in report.damages] == [0, offset_of(3)]
    items = scan_file(out)
    assert all(isinstance(item, RawRecord) for item in items)
    assert [item.seq for item in items] == [1, 2, 4, 5, 6]
    original = segment_bytes(1, 6)
    assert Path(out).read_bytes() == original[: offset_of(3)] + original[offset_of(4) :]
    assert report.bytes_written == os.path.getsize(out)
    assert not os.path.exists(out + ".tmp")


def test_salvage_refuses_to_overwrite(tmp_path, clean):
    out = write(tmp_path / "out.wal", b"keep me")
    with pytest.raises(FileExistsError):
        salvage(clean, out)
    assert Path(out).read_bytes() == b"keep me"


def test_salvage_of_missing_source_creates_nothing(tmp_path):
    with pytest.raises(FileNotFoundError):
        salvage(str(tmp_path / "missing.wal"), str(tmp_path / "out.wal"))
    assert os.listdir(tmp_path) == []


def test_salvage_relative_output(tmp_path, clean, monkeypatch):
    monkeypatch.chdir(tmp_path)
    report = salvage(clean, "relative.wal")
    assert report.output == str(tmp_path / "relative.wal") and report.records_recovered == 5


def test_hexdump_labels_header_and_record_fields(clean):
    lines = list(hexdump(clean))
    assert (
        lines[0].startswith("00000000  41 52 57 41 4c 30 30 31") and 'header.magic     "ARWAL001"' in lines[0]
    )
    assert lines[1].startswith("00000008  01 00 00 00") and "header.version   1" in lines[1]
    text = "\n".join(lines)
    assert "00000010  2b 00 00 00" in text and "record seq=1 length 43" in text
    for label in ("sequence       1", "status         1 (pending)", "reserved", "payload (11 bytes)"):
        assert label in text
    assert "timestamp_ms   1700000000001 (2023-11-14T22:13:20.001Z)" in text
    assert "|payload-001     |" in text
    assert text.count(" ok") == 5 and "MISMATCH" not in text


def test_hexdump_marks_damage(clean):
    flip_byte(clean, offset_of(2) + 26)
    truncate_at(clean, offset_of(5) + 7)
    text = "\n".join(hexdump(clean))
    assert "record seq=2 length 43  damaged: CRC mismatch" in text
    assert "MISMATCH computed 0x" in text
    assert f"{offset_of(5):08x}  2b 00 00 00 05 00 00" in text
    assert "damaged: record of 43 bytes runs past the end" in text


def test_hexdump_window_and_single_record(tmp_path):
    data = segment_bytes(1, 5)
    path = archive(tmp_path / archive_name(1), data)
    window = list(hexdump(path, offset=offset_of(3), length=4))
    assert len(window) == 1 and "record seq=3 length 43" in window[0]
    one = list(hexdump(path, record_seq=4))
    assert "record seq=4" in one[0] and all("seq=" not in line for line in one[1:])
    assert int(one[0].split()[0], 16) == offset_of(4)
    with pytest.raises(WalError):
        list(hexdump(path, record_seq=99))


def test_format_timestamp_ms():
    assert format_timestamp_ms(0) == "1970-01-01T00:00:00.000Z"
    assert format_timestamp_ms(None) is None
    assert format_timestamp_ms(2**62) == "out of range"
